"""Signed HTTP requests (PROTOCOL.md §3), the part that needs no I/O: the header, the signed target, time.

Pure and total: every function takes untrusted input and answers ``None`` or ``False`` for anything it
refuses; the HTTP layer (:mod:`relay.http.auth`) turns every refusal into the same ``401 unauthorized``.

The header, strictly::

    Authorization: Relay-Ed25519 device=<uuid>, ts=<ms>, nonce=<b64 16 bytes>, sig=<b64 64 bytes>

- the scheme name is matched without regard to ASCII case, and is followed by exactly one space;
- then the four parameters, once each, in this order, names in lower case, separated by exactly
  ``", "``, values unquoted, nothing before, between or after (no other white space, no trailing comma);
- ``device`` is a lowercase UUID (§1); ``ts`` is the canonical decimal of an integer in 0..2^53-1 (no
  sign, no leading zero, so that ``str(ts)`` is the text as sent and signed); ``nonce`` and ``sig`` are
  canonical b64 of 16 and 64 bytes.

The signed target is the path and query exactly as sent on the request line (:func:`signed_target`),
and a request is fresh while ``|ts - now| <= clock_skew_ms`` (:func:`is_fresh`); its nonce is remembered
until :func:`nonce_expires_at`.
"""

from __future__ import annotations

import re

import attrs

from relay import crypto
from relay.protocol.syntax import MAX_SAFE_INTEGER, is_uuid

__all__ = [
    "AUTH_SCHEME",
    "SignedHeader",
    "is_fresh",
    "nonce_expires_at",
    "parse_authorization",
    "signed_target",
]

#: The authentication scheme of signed requests; ``WWW-Authenticate`` names it on every 401.
AUTH_SCHEME = "Relay-Ed25519"

#: The parameters after ``<scheme> ``. Character classes are ASCII on purpose (``\d`` and ``\s`` are not);
#: the lengths are those of the values' only valid spellings, checked again exactly below.
_PARAMETERS = re.compile(
    r"device=(?P<device>[0-9a-f-]{36}), ts=(?P<ts>0|[1-9][0-9]{0,15}), "
    r"nonce=(?P<nonce>[A-Za-z0-9_-]{22}), sig=(?P<sig>[A-Za-z0-9_-]{86})"
)

#: Bytes a request target can never hold: controls, space and DEL (RFC 9112 allows none of them).
_NOT_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")


@attrs.frozen(kw_only=True)
class SignedHeader:
    """A well-formed ``Authorization`` value: the claims still to be checked against the device's key."""

    device_id: str
    ts: int
    nonce: str
    sig: str = attrs.field(repr=False)

    def signed_string(self, server_key: str, method: str, target: str, body: bytes) -> bytes:
        """The bytes the device must have signed (:func:`relay.crypto.http_request_string`)."""
        return crypto.http_request_string(
            server_key, self.device_id, method, target, self.ts, self.nonce, body
        )


def parse_authorization(value: object) -> SignedHeader | None:
    """The claims of one ``Authorization`` value, or ``None`` unless it follows the grammar exactly."""
    if not isinstance(value, str) or not value.isascii():
        return None
    scheme, space, parameters = value.partition(" ")
    if not space or scheme.lower() != AUTH_SCHEME.lower():
        return None
    match = _PARAMETERS.fullmatch(parameters)
    if match is None:
        return None
    device_id, ts_text, nonce, sig = match.group("device", "ts", "nonce", "sig")
    ts = int(ts_text)
    if not is_uuid(device_id) or ts > MAX_SAFE_INTEGER:
        return None
    if crypto.b64decode(nonce, crypto.HTTP_NONCE_BYTES) is None:
        return None
    if crypto.b64decode(sig, crypto.SIGNATURE_BYTES) is None:
        return None
    return SignedHeader(device_id=device_id, ts=ts, nonce=nonce, sig=sig)


def signed_target(raw_path: bytes, query_string: bytes) -> str | None:
    """The path and query as sent on the request line, as the signed string holds them; else ``None``.

    ``raw_path`` and ``query_string`` are the ASGI scope's bytes (the server split the request target at
    its first ``?``); a query is joined back with ``?`` when it is not empty. A target that is not
    UTF-8, or holds a control character, a space or DEL, cannot have been signed as sent: ``None``.
    """
    target = raw_path + (b"?" + query_string if query_string else b"")
    try:
        text = target.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.startswith("/") or _NOT_IN_TARGET.search(text) is not None:
        return None
    return text


def is_fresh(ts: int, *, now_ms: int, clock_skew_ms: int) -> bool:
    """Whether ``|ts - now| <= clock_skew_ms`` (both bounds included)."""
    return abs(ts - now_ms) <= clock_skew_ms


def nonce_expires_at(ts: int, *, clock_skew_ms: int) -> int:
    """Until when the (device, nonce) pair of a request signed at ``ts`` is remembered (§3).

    A request with that ``ts`` stops being fresh after ``ts + clock_skew_ms``, so a replay after that
    moment is refused by :func:`is_fresh` and the pair need not be kept longer.
    """
    return ts + clock_skew_ms
