"""Builders shared by the store tests: users, devices and append requests with sensible defaults."""

from __future__ import annotations

from relay import crypto
from relay.protocol.names import device_name_key
from relay.store.base import AppendRequest, DeviceRecord, Enrollment, IssuedToken, Store

#: Every store test finishes in well under a second; a hang fails fast instead.
CAP_S = 20

NOW = 1_700_000_000_000
SKEW_MS = 300_000
TTL_MS = 7 * 86_400_000
TOKEN_TTL_MS = 900_000
MAX_DEVICES = 20


def token_hash(token: IssuedToken | str) -> bytes:
    text = token.token if isinstance(token, IssuedToken) else token
    raw = crypto.b64decode(text, crypto.TOKEN_BYTES)
    assert raw is not None
    return crypto.hash_token(raw)


def new_key() -> bytes:
    return crypto.SigningKey.generate().public_key


def enrollment(
    token: IssuedToken | str,
    *,
    name: str = "Phone",
    public_key: bytes | None = None,
    max_devices: int = MAX_DEVICES,
    now_ms: int = NOW,
) -> Enrollment:
    return Enrollment(
        token_hash=token_hash(token),
        public_key=new_key() if public_key is None else public_key,
        name=name,
        name_key=device_name_key(name),
        max_devices=max_devices,
        now_ms=now_ms,
    )


async def new_user(store: Store, *, now_ms: int = NOW) -> str:
    return (await store.create_user(now_ms=now_ms, token_ttl_ms=TOKEN_TTL_MS)).user_id


async def new_device(store: Store, user_id: str | None = None, *, name: str = "Phone") -> DeviceRecord:
    """A device of ``user_id`` (of a new user when ``None``), enrolled with a fresh operator token."""
    if user_id is None:
        user_id = await new_user(store)
    token = await store.create_token(user_id=user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
    return await store.enroll(enrollment(token, name=name))


def append_request(
    device: DeviceRecord,
    event_id: str,
    *,
    stream: str = "notes",
    body: bytes = b'{"n":1}',
    ts: int = NOW,
    expires_at: int = NOW + TTL_MS,
    expect_seq: int | None = None,
    received_at: int = NOW,
    max_streams: int = 10_000,
    max_stored_bytes: int = 1 << 30,
) -> AppendRequest:
    return AppendRequest(
        user_id=device.user_id,
        device_id=device.device_id,
        id=event_id,
        stream=stream,
        ts=ts,
        expires_at=expires_at,
        expect_seq=expect_seq,
        body=body,
        received_at=received_at,
        max_streams=max_streams,
        max_stored_bytes=max_stored_bytes,
        clock_skew_ms=SKEW_MS,
    )
