"""Syntax predicates of PROTOCOL.md §1 that need no context: pure, total, never raising.

They answer ``True``/``False`` for any Python value, so callers may pass untrusted, undecoded input.
The refusals built on them (which error, which path) live in :mod:`relay.protocol.validation`.
"""

from __future__ import annotations

import re

MAX_SAFE_INTEGER = 2**53 - 1
MAX_REF_CHARS = 64

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_STREAM = re.compile(r"[A-Za-z0-9._~:/-]{1,128}")
_EVENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def is_uuid(value: object) -> bool:
    """Lowercase hyphenated 8-4-4-4-12 text, and nothing else (§1)."""
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def is_stream_name(value: object) -> bool:
    """1..128 characters of ``[A-Za-z0-9._~:/-]`` (§1)."""
    return isinstance(value, str) and _STREAM.fullmatch(value) is not None


def is_event_id(value: object) -> bool:
    """1..64 characters of ``[A-Za-z0-9._:-]`` (§1)."""
    return isinstance(value, str) and _EVENT_ID.fullmatch(value) is not None


def is_ref(value: object) -> bool:
    """A string of at most 64 characters (§4); the empty string is allowed."""
    return isinstance(value, str) and len(value) <= MAX_REF_CHARS


def is_request_id(value: object) -> bool:
    """A caller's ``X-Request-ID`` worth echoing: 1..128 of ``[A-Za-z0-9._-]`` (§6)."""
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def is_protocol_int(value: object) -> bool:
    """An integer protocol field: a JSON integer (not a boolean) in 0..2^53-1 (§1)."""
    return type(value) is int and 0 <= value <= MAX_SAFE_INTEGER
