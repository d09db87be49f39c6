"""``MemoryStore``: the whole store contract in process memory, for tests and throwaway servers.

No threads and no I/O, so it runs under ``trio.testing.MockClock(autojump_threshold=0)`` without
jumping virtual time. Each async method yields to the scheduler once, first, and then does all of its
work without yielding: a cancelled call has done nothing, a call that returns has done everything,
and calls never interleave (the memory equivalent of the SQLite store's single writer).

Semantics are those of :class:`relay.store.sqlite.SqliteStore` exactly (the contract suite in
``tests/store`` runs against both); nothing survives the object.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import trio

from relay import crypto
from relay.errors import (
    AccountDeleted,
    DeviceRevoked,
    IdConflict,
    InvalidToken,
    KeyInUse,
    NameTaken,
    NotFound,
    QuotaExceeded,
    SeqConflict,
    TooManyDevices,
)
from relay.protocol.messages import StoredEvent
from relay.protocol.validation import is_expired
from relay.store import _common
from relay.store.base import (
    Appended,
    AppendRequest,
    DeviceLookup,
    DeviceRecord,
    Enrollment,
    IssuedToken,
    MigrationStatus,
    NewUser,
    ServerSecrets,
    StoreStatistics,
    UnknownDevice,
)

if TYPE_CHECKING:
    from relay.store.base import Store

__all__ = ["MemoryStore"]


@attrs.define(eq=False)
class _Token:
    user_id: str
    issued_by: str | None
    bound_key: bytes | None
    expires_at: int
    used_at: int | None = None
    voided_at: int | None = None


@attrs.define(eq=False)
class _Stream:
    head: int
    last_written_at: int
    #: The latest ``expires_at`` of any event appended: the stream holds unexpired events exactly
    #: when this one is unexpired (only expired events are ever purged).
    max_expires_at: int
    #: seq → event, in ascending seq (appends only add larger seqs; purging only removes).
    events: dict[int, StoredEvent] = attrs.Factory(dict)


@attrs.define(eq=False)
class _User:
    created_at: int
    #: Body bytes of the user's events still held (expired ones included until purged): an upper
    #: bound of the unexpired bytes, so the exact count is only needed near the quota.
    held_bytes: int = 0
    device_ids: list[str] = attrs.Factory(list)


@attrs.define(eq=False)
class MemoryStore:
    """An in-memory :class:`relay.store.base.Store`.

    ``secrets`` fixes the server secrets (default: fresh random ones); ``id_factory`` makes user and
    device ids (default: random UUIDs), so tests can make them predictable.
    """

    secrets: ServerSecrets = attrs.field(
        factory=lambda: ServerSecrets(signing_seed=crypto.new_secret(), token_secret=crypto.new_secret())
    )
    id_factory: Callable[[], str] = _common.new_id
    _users: dict[str, _User] = attrs.field(init=False, factory=dict)
    _devices: dict[str, DeviceRecord] = attrs.field(init=False, factory=dict)
    _keys: dict[bytes, str] = attrs.field(init=False, factory=dict)
    _name_keys: dict[str, str] = attrs.field(init=False, factory=dict)
    _tokens: dict[bytes, _Token] = attrs.field(init=False, factory=dict)
    _streams: dict[tuple[str, str], _Stream] = attrs.field(init=False, factory=dict)
    #: (device_id, event id) → (user_id, stream, seq) of a held event.
    _ids: dict[tuple[str, str], tuple[str, str, int]] = attrs.field(init=False, factory=dict)
    _transactions: int = attrs.field(init=False, default=0)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        return []

    async def migration_status(self) -> MigrationStatus:
        await trio.lowlevel.checkpoint()
        return MigrationStatus(applied=[], pending=[])

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            write_transactions=self._transactions, write_requests=self._transactions, write_queue_depth=0
        )

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()

    async def load_or_create_secrets(self) -> ServerSecrets:
        await trio.lowlevel.checkpoint()
        return self.secrets

    def _write(self) -> None:
        """Count one write transaction (called by each write method once it has yielded)."""
        self._transactions += 1

    # --- users and enrolment -----------------------------------------------------------------------

    async def create_user(self, *, now_ms: int, token_ttl_ms: int) -> NewUser:
        await trio.lowlevel.checkpoint()
        self._write()
        user_id = self.id_factory()
        self._users[user_id] = _User(created_at=now_ms)
        issued, token_hash = _common.new_token(now_ms=now_ms, token_ttl_ms=token_ttl_ms)
        self._tokens[token_hash] = _Token(
            user_id=user_id, issued_by=None, bound_key=None, expires_at=issued.expires_at
        )
        return NewUser(user_id=user_id, token=issued)

    async def create_token(
        self,
        *,
        user_id: str,
        now_ms: int,
        token_ttl_ms: int,
        issued_by: str | None = None,
        bound_key: bytes | None = None,
    ) -> IssuedToken:
        await trio.lowlevel.checkpoint()
        self._write()
        if user_id not in self._users:
            raise NotFound("No such user")
        if issued_by is not None:
            issuer = self._devices.get(issued_by)
            if issuer is None or issuer.user_id != user_id:
                raise NotFound("No such device")
            if issuer.revoked:
                raise DeviceRevoked()
        issued, token_hash = _common.new_token(now_ms=now_ms, token_ttl_ms=token_ttl_ms)
        self._tokens[token_hash] = _Token(
            user_id=user_id, issued_by=issued_by, bound_key=bound_key, expires_at=issued.expires_at
        )
        return issued

    async def enroll(self, enrollment: Enrollment) -> DeviceRecord:
        await trio.lowlevel.checkpoint()
        self._write()
        token = self._usable_token(enrollment)
        user = self._users[token.user_id]
        live = [d for d in (self._devices[i] for i in user.device_ids) if not d.revoked]
        if any(self._name_keys[d.device_id] == enrollment.name_key for d in live):
            raise NameTaken()
        if enrollment.public_key in self._keys:
            raise KeyInUse()
        if len(live) >= enrollment.max_devices:
            raise TooManyDevices()
        device = DeviceRecord(
            device_id=self.id_factory(),
            user_id=token.user_id,
            public_key=enrollment.public_key,
            name=enrollment.name,
            created_at=enrollment.now_ms,
        )
        token.used_at = enrollment.now_ms
        self._devices[device.device_id] = device
        self._keys[device.public_key] = device.device_id
        self._name_keys[device.device_id] = enrollment.name_key
        user.device_ids.append(device.device_id)
        return device

    def _usable_token(self, enrollment: Enrollment) -> _Token:
        token = self._tokens.get(enrollment.token_hash)
        if (
            token is None
            or token.used_at is not None
            or token.voided_at is not None
            or _common.token_expired(token.expires_at, now_ms=enrollment.now_ms)
            or (token.bound_key is not None and token.bound_key != enrollment.public_key)
            or (token.issued_by is not None and self._devices[token.issued_by].revoked)
        ):
            raise InvalidToken()
        return token

    async def lookup_device(self, device_id: str) -> DeviceLookup:
        await trio.lowlevel.checkpoint()
        return self._devices.get(device_id, UnknownDevice())

    async def list_users(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        return list(self._users)

    async def list_devices(self, user_id: str) -> list[DeviceRecord]:
        await trio.lowlevel.checkpoint()
        user = self._users.get(user_id)
        return [] if user is None else [self._devices[i] for i in user.device_ids]

    async def touch_device(self, device_id: str, *, now_ms: int) -> None:
        await trio.lowlevel.checkpoint()
        self._write()
        device = self._devices.get(device_id)
        if device is not None and (device.last_seen_at is None or device.last_seen_at < now_ms):
            self._devices[device_id] = attrs.evolve(device, last_seen_at=now_ms)

    async def revoke_device(self, device_id: str, *, now_ms: int, user_id: str | None = None) -> DeviceRecord:
        await trio.lowlevel.checkpoint()
        self._write()
        device = self._devices.get(device_id)
        if device is None or (user_id is not None and device.user_id != user_id):
            raise NotFound("No such device")
        if device.revoked:
            return device
        device = attrs.evolve(device, revoked_at=now_ms)
        self._devices[device_id] = device
        for token in self._tokens.values():
            if token.issued_by == device_id and token.used_at is None and token.voided_at is None:
                token.voided_at = now_ms
        return device

    # --- events ------------------------------------------------------------------------------------

    async def append(self, request: AppendRequest) -> Appended:
        await trio.lowlevel.checkpoint()
        self._write()
        r = request
        user = self._users.get(r.user_id)
        device = self._devices.get(r.device_id)
        if user is None or device is None or device.user_id != r.user_id:
            raise AccountDeleted()
        body = r.body.decode("utf-8")
        stream = self._streams.get((r.user_id, r.stream))
        held = self._ids.get((r.device_id, r.id))
        if held is not None:
            original = self._streams[held[0], held[1]].events[held[2]]
            if original.stream == r.stream and original.body == body:
                return Appended(event=original, duplicate=True)
        self._check_quota(user, r, stream)
        if held is not None:
            raise IdConflict()
        head = 0 if stream is None else stream.head
        if r.expect_seq is not None and r.expect_seq != head:
            raise SeqConflict(head=head)
        if device.revoked:
            raise DeviceRevoked()
        event = StoredEvent(
            stream=r.stream,
            seq=head + 1,
            id=r.id,
            device_id=r.device_id,
            ts=r.ts,
            received_at=r.received_at,
            expires_at=r.expires_at,
            body=body,
        )
        if stream is None:
            stream = self._streams[r.user_id, r.stream] = _Stream(
                head=0, last_written_at=r.received_at, max_expires_at=r.expires_at
            )
        stream.head = event.seq
        stream.last_written_at = r.received_at
        stream.max_expires_at = max(stream.max_expires_at, r.expires_at)
        stream.events[event.seq] = event
        self._ids[r.device_id, r.id] = (r.user_id, r.stream, event.seq)
        user.held_bytes += len(r.body)
        return Appended(event=event, duplicate=False)

    def _check_quota(self, user: _User, r: AppendRequest, stream: _Stream | None) -> None:
        def expired(expires_at: int) -> bool:
            return is_expired(expires_at, now_ms=r.received_at, clock_skew_ms=r.clock_skew_ms)

        if stream is None or expired(stream.max_expires_at):
            live = sum(
                1
                for (uid, _), s in self._streams.items()
                if uid == r.user_id and not expired(s.max_expires_at)
            )
            if live >= r.max_streams:
                raise QuotaExceeded("Too many streams hold unexpired events")
        size = len(r.body)
        if user.held_bytes + size > r.max_stored_bytes:
            unexpired = sum(
                len(e.body.encode("utf-8"))
                for (uid, _), s in self._streams.items()
                if uid == r.user_id
                for e in s.events.values()
                if not expired(e.expires_at)
            )
            if unexpired + size > r.max_stored_bytes:
                raise QuotaExceeded("Too many bytes of unexpired events are stored")

    async def stream_head(self, user_id: str, stream: str) -> int:
        await trio.lowlevel.checkpoint()
        found = self._streams.get((user_id, stream))
        return 0 if found is None else found.head

    async def read_events(
        self, user_id: str, stream: str, *, after: int, head: int, limit: int, now_ms: int, clock_skew_ms: int
    ) -> list[StoredEvent]:
        await trio.lowlevel.checkpoint()
        found = self._streams.get((user_id, stream))
        if found is None or limit <= 0:
            return []
        page: list[StoredEvent] = []
        for seq, event in found.events.items():
            if seq > head:
                break
            if seq > after and not is_expired(event.expires_at, now_ms=now_ms, clock_skew_ms=clock_skew_ms):
                page.append(event)
                if len(page) == limit:
                    break
        return page

    def _live_streams(self, user_id: str, *, now_ms: int, clock_skew_ms: int) -> list[tuple[str, _Stream]]:
        return [
            (name, s)
            for (uid, name), s in self._streams.items()
            if uid == user_id and not is_expired(s.max_expires_at, now_ms=now_ms, clock_skew_ms=clock_skew_ms)
        ]

    async def list_streams(
        self, user_id: str, *, after: str | None, limit: int, now_ms: int, clock_skew_ms: int
    ) -> list[tuple[str, int]]:
        await trio.lowlevel.checkpoint()
        # Stream names are ASCII, so code point order is byte order.
        live = sorted(
            (name, s.head)
            for name, s in self._live_streams(user_id, now_ms=now_ms, clock_skew_ms=clock_skew_ms)
            if after is None or name > after
        )
        return live[: max(limit, 0)]

    async def recent_streams(
        self, user_id: str, *, limit: int, now_ms: int, clock_skew_ms: int
    ) -> tuple[dict[str, int], bool]:
        await trio.lowlevel.checkpoint()
        live = self._live_streams(user_id, now_ms=now_ms, clock_skew_ms=clock_skew_ms)
        live.sort(key=lambda item: (-item[1].last_written_at, item[0]))
        limit = max(limit, 0)
        return {name: s.head for name, s in live[:limit]}, len(live) > limit

    async def purge_expired(self, *, now_ms: int, clock_skew_ms: int, batch: int) -> int:
        await trio.lowlevel.checkpoint()
        self._write()
        expired = sorted(
            (event.expires_at, uid, name, seq)
            for (uid, name), s in self._streams.items()
            for seq, event in s.events.items()
            if is_expired(event.expires_at, now_ms=now_ms, clock_skew_ms=clock_skew_ms)
        )[: max(batch, 0)]
        deleted: collections.Counter[str] = collections.Counter()
        for _, uid, name, seq in expired:
            event = self._streams[uid, name].events.pop(seq)
            del self._ids[event.device_id, event.id]
            deleted[uid] += len(event.body.encode("utf-8"))
        for uid, size in deleted.items():
            self._users[uid].held_bytes -= size
        return len(expired)


if TYPE_CHECKING:

    def _conforms(store: MemoryStore) -> Store:
        return store
