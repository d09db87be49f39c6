"""The state of a :class:`~relay.store.memory.MemoryStore`: in-memory twins of the SQLite tables.

Plain data, shared by ``memory.py`` (enrolment and events) and ``memory_accounts.py`` (devices after
their enrolment, accounts, the revocation log and nonces). Only those two modules touch it, and only
between the store's checkpoints, so no two operations ever interleave on it.
"""

from __future__ import annotations

import attrs

from relay.protocol.messages import StoredEvent
from relay.store.base import DeviceRecord, RevocationEntry

__all__ = ["StreamRow", "Tables", "TokenRow", "UserRow"]


@attrs.define(eq=False)
class TokenRow:
    user_id: str
    issued_by: str | None
    bound_key: bytes | None
    expires_at: int
    used_at: int | None = None
    voided_at: int | None = None


@attrs.define(eq=False)
class StreamRow:
    head: int
    last_written_at: int
    #: The latest ``expires_at`` of any event appended: the stream holds unexpired events exactly
    #: when this one is unexpired (only expired events are ever purged).
    max_expires_at: int
    #: seq → event, in ascending seq (appends only add larger seqs; purging only removes).
    events: dict[int, StoredEvent] = attrs.Factory(dict)


@attrs.define(eq=False)
class UserRow:
    created_at: int
    #: Body bytes of the user's events still held (expired ones included until purged): an upper
    #: bound of the unexpired bytes, so the exact count is only needed near the quota.
    held_bytes: int = 0
    device_ids: list[str] = attrs.Factory(list)


@attrs.define(eq=False)
class Tables:
    users: dict[str, UserRow] = attrs.Factory(dict)
    devices: dict[str, DeviceRecord] = attrs.Factory(dict)
    keys: dict[bytes, str] = attrs.Factory(dict)
    #: device_id → the name key of its name.
    name_keys: dict[str, str] = attrs.Factory(dict)
    tokens: dict[bytes, TokenRow] = attrs.Factory(dict)
    streams: dict[tuple[str, str], StreamRow] = attrs.Factory(dict)
    #: (device_id, event id) → (user_id, stream, seq) of a held event.
    ids: dict[tuple[str, str], tuple[str, str, int]] = attrs.Factory(dict)
    #: The revocation log by id, in ascending id (ids only grow; pruning only removes).
    revocations: dict[int, RevocationEntry] = attrs.Factory(dict)
    #: The last revocation log id given (never reused, like SQLite's AUTOINCREMENT).
    last_revocation_id: int = 0
    #: keyed hash of a deleted account's device id → until when it is remembered.
    deleted_devices: dict[bytes, int] = attrs.Factory(dict)
    #: (device_id, nonce) → until when the pair is remembered.
    nonces: dict[tuple[str, str], int] = attrs.Factory(dict)
