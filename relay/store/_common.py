"""Small pieces every store implementation shares: ids, tokens, keyed hashes, the expiry bound of queries."""

from __future__ import annotations

import uuid

from relay import crypto
from relay.protocol.validation import is_expired
from relay.store.base import DELETED_DEVICE_LABEL, IssuedToken


def new_id() -> str:
    """A fresh user or device id: a random (version 4) UUID in the lowercase text of PROTOCOL.md §1."""
    return str(uuid.uuid4())


def new_token(*, now_ms: int, token_ttl_ms: int) -> tuple[IssuedToken, bytes]:
    """A fresh enrolment token and the hash under which it is stored (the token itself never is)."""
    token = crypto.random_token()
    raw = crypto.b64decode(token, crypto.TOKEN_BYTES)
    assert raw is not None  # random_token() is canonical b64 of TOKEN_BYTES bytes
    return IssuedToken(token=token, expires_at=now_ms + token_ttl_ms), crypto.hash_token(raw)


def deleted_device_hash(token_secret: bytes, device_id: str) -> bytes:
    """How a deleted account's device id is remembered: its keyed hash, never the id."""
    return crypto.keyed_hash(token_secret, DELETED_DEVICE_LABEL, device_id)


def token_expired(expires_at: int, *, now_ms: int) -> bool:
    """An enrolment token is valid up to and including ``expires_at`` (like replay tokens)."""
    return now_ms > expires_at


def unexpired_floor(*, now_ms: int, clock_skew_ms: int) -> int:
    """The least ``expires_at`` that is not expired at ``now_ms``, for ``expires_at >= ?`` in queries.

    ``is_expired(e)`` is ``now > e + skew``, so "not expired" is ``e >= now - skew``: an index range,
    and exactly the one definition of expiry (checked at the bound below).
    """
    floor = now_ms - clock_skew_ms
    assert not is_expired(floor, now_ms=now_ms, clock_skew_ms=clock_skew_ms)
    assert is_expired(floor - 1, now_ms=now_ms, clock_skew_ms=clock_skew_ms)
    return floor
