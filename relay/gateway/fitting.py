"""Keeping server frames within ``max_frame_bytes`` (§1: the limit holds in both directions).

A ``replay.page`` ends early when its next event would not fit (§4.4); a map of stream heads
(``welcome.streams``, ``streams.page``, ``heads``) is cut where its next member would not fit. Sizes are
UTF-8 bytes of the encoded JSON, computed per member so that a frame is encoded once, when its content
is known to fit. A member's size counts a separating comma, so sums are upper bounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import orjson

from relay.protocol import tokens
from relay.protocol.codec import converter, encode_server
from relay.protocol.messages import Heads, StoredEvent

__all__ = [
    "event_bytes",
    "fit_events",
    "fit_heads",
    "frame_bytes",
    "head_bytes",
    "heads_frames",
    "token_chars",
]

_PROBE_SECRET = bytes(32)


def frame_bytes(frame: str) -> int:
    """The UTF-8 length of a frame."""
    return len(frame.encode("utf-8"))


def head_bytes(name: str, head: int) -> int:
    """The bytes of ``"name":head,`` inside a map of heads."""
    return len(orjson.dumps(name)) + len(str(head)) + 2


def event_bytes(event: StoredEvent) -> int:
    """The bytes of one event inside ``replay.page.events``, with its separating comma."""
    return len(orjson.dumps(converter.unstructure(event))) + 1


def token_chars(stream: str) -> int:
    """The length of every continuation token for ``stream`` (the token's header is fixed-width)."""
    probe = tokens.mint(
        _PROBE_SECRET, user_id="", device_id="", stream=stream, after=0, head=1, limit=1, now_ms=0
    )
    return len(probe)


def fit_heads(heads: Iterable[tuple[str, int]], budget: int) -> tuple[dict[str, int], bool]:
    """The leading members of ``heads`` that fit in ``budget`` bytes, and whether any was left out."""
    fitted: dict[str, int] = {}
    used = 0
    for name, head in heads:
        size = head_bytes(name, head)
        if used + size > budget:
            return fitted, True
        fitted[name] = head
        used += size
    return fitted, False


def fit_events(events: Sequence[StoredEvent], budget: int) -> int:
    """How many leading ``events`` fit in ``budget`` bytes; at least one, so a replay always advances.

    The protocol guarantees room for one event (``max_frame_bytes >= max_event_bytes + 4096``); the
    minimum of one only matters if ``max_event_bytes`` was lowered after larger events were stored.
    """
    used = 0
    for count, event in enumerate(events):
        used += event_bytes(event)
        if used > budget:
            return max(count, 1)
    return len(events)


def heads_frames(heads: Mapping[str, int], max_frame_bytes: int) -> list[str]:
    """``heads`` frames announcing ``heads``: one, or several when one would exceed the frame limit."""
    budget = max_frame_bytes - frame_bytes(encode_server(Heads(streams={})))
    frames: list[str] = []
    pending = list(heads.items())
    while pending:
        fitted, _ = fit_heads(pending, budget)
        if not fitted:  # a single member larger than a frame cannot happen with valid stream names
            fitted = dict(pending[:1])
        frames.append(encode_server(Heads(streams=fitted)))
        pending = pending[len(fitted) :]
    return frames
