"""Replay continuation tokens (PROTOCOL.md §4.4): opaque to clients, authenticated by the server.

A token is the b64 (base64url, no padding) of::

    offset  size  field
    0       1     version, 1
    1       8     expires_at_ms   unsigned big-endian
    9       8     after           the last seq the previous page covered
    17      8     head            the stream's head when the replay began
    25      4     limit           the page size the replay asked for (after clamping)
    29      n     stream          1..128 ASCII characters
    29+n    32    HMAC-SHA256

The MAC key is derived from the server secret for this purpose alone (``relay-replay-token-v1``), and
the MAC covers the user id and device id (length-prefixed) followed by every byte before the MAC.
The ids are not inside the token: it is bound to them because only the same user and device,
passed to :func:`open_token` by the gateway from the authenticated session, reproduce the MAC. A
token therefore survives a reconnect of the same device, but no other device or user can use it.

A token is valid up to and including ``expires_at_ms`` = minting time + :data:`TOKEN_TTL_MS`: at
exactly ten minutes it is still accepted, one millisecond later it is not (the same convention as
event expiry, §4.2). Every refusal is one :class:`relay.errors.InvalidToken`, whatever the cause.
"""

from __future__ import annotations

import hmac
import struct

import attrs

from relay import crypto
from relay.errors import InvalidToken
from relay.protocol.syntax import MAX_SAFE_INTEGER, is_stream_name

__all__ = ["TOKEN_TTL_MS", "TOKEN_VERSION", "Cursor", "mint", "open_token"]

#: How long a continuation token stays valid after it is minted (§4.4: ten minutes).
TOKEN_TTL_MS = 600_000
TOKEN_VERSION = 1

_PURPOSE = "relay-replay-token-v1"
_HEADER = struct.Struct(">BQQQI")
_MAC_BYTES = 32
_MAX_STREAM = 128
_MAX_LIMIT = 2**32 - 1
_MIN_BYTES = _HEADER.size + 1 + _MAC_BYTES
_MAX_BYTES = _HEADER.size + _MAX_STREAM + _MAC_BYTES
#: Longest b64 text a token can be; longer input is refused before any decoding.
_MAX_CHARS = (4 * _MAX_BYTES + 2) // 3


@attrs.frozen(kw_only=True)
class Cursor:
    """Where a replay stands: the next page holds events with ``after < seq <= head``, at most ``limit``."""

    stream: str
    after: int
    head: int
    limit: int
    expires_at_ms: int


def _id_bytes(value: str) -> bytes:
    data = value.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


def _mac(secret: bytes, user_id: str, device_id: str, payload: bytes) -> bytes:
    key = crypto.derive_key(secret, _PURPOSE)
    return hmac.digest(key, _id_bytes(user_id) + _id_bytes(device_id) + payload, "sha256")


def _is_int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def mint(
    secret: bytes,
    *,
    user_id: str,
    device_id: str,
    stream: str,
    after: int,
    head: int,
    limit: int,
    now_ms: int,
) -> str:
    """A token to continue a replay of ``stream`` after ``after`` up to ``head``, valid for ten minutes.

    The caller mints one only when the page did not reach the head, so ``0 <= after < head``;
    anything else is a bug and raises :class:`ValueError`.
    """
    if not is_stream_name(stream):
        raise ValueError("not a stream name")
    if not (_is_int(after, 0, MAX_SAFE_INTEGER) and _is_int(head, 1, MAX_SAFE_INTEGER) and after < head):
        raise ValueError("a continuation needs 0 <= after < head <= 2**53-1")
    if not _is_int(limit, 1, _MAX_LIMIT):
        raise ValueError("limit out of range")
    if not _is_int(now_ms, 0, MAX_SAFE_INTEGER - TOKEN_TTL_MS):
        raise ValueError("now_ms out of range")
    payload = _HEADER.pack(TOKEN_VERSION, now_ms + TOKEN_TTL_MS, after, head, limit) + stream.encode("ascii")
    return crypto.b64encode(payload + _mac(secret, user_id, device_id, payload))


def open_token(secret: bytes, token: object, *, user_id: str, device_id: str, now_ms: int) -> Cursor:
    """The cursor ``token`` stands for, if this server minted it for this user and device and it is unexpired.

    ``token`` is whatever the client sent. Raises :class:`InvalidToken`, and nothing else, for a
    value that is not a string, not canonical b64, of an impossible length, of another version, altered,
    minted with another secret or for another user or device, or expired.
    """
    if not isinstance(token, str) or len(token) > _MAX_CHARS:
        raise InvalidToken(detail="not a token")
    raw = crypto.b64decode(token)
    if raw is None or not _MIN_BYTES <= len(raw) <= _MAX_BYTES:
        raise InvalidToken(detail="not a token")
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, user_id, device_id, payload)):
        raise InvalidToken(detail="bad MAC")
    # Authentic from here on: only this server wrote these bytes. The checks below still keep a
    # token from another version of relay (or a leaked secret) from reaching the store.
    version, expires_at_ms, after, head, limit = _HEADER.unpack_from(payload)
    stream = payload[_HEADER.size :].decode("ascii", errors="replace")
    if version != TOKEN_VERSION:
        raise InvalidToken(detail="unknown version")
    if not (is_stream_name(stream) and after < head <= MAX_SAFE_INTEGER and limit >= 1):
        raise InvalidToken(detail="inconsistent fields")
    if now_ms > expires_at_ms:
        raise InvalidToken(detail="expired")
    return Cursor(stream=stream, after=after, head=head, limit=limit, expires_at_ms=expires_at_ms)
