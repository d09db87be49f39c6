"""``MemoryStore``: the whole store contract in process memory, for tests and throwaway servers.

No threads and no I/O, so it runs under ``trio.testing.MockClock(autojump_threshold=0)`` without
jumping virtual time. Each async method yields to the scheduler once, first, and then does all of its
work without yielding: a cancelled call has done nothing, a call that returns has done everything,
and calls never interleave (the memory equivalent of the SQLite store's single writer).

Semantics are those of :class:`relay.store.sqlite.SqliteStore` exactly (the contract suite in
``tests/store`` runs against both); nothing survives the object. The state is one
:class:`~relay.store.memory_tables.Tables`; devices after enrolment, accounts, the revocation log and
nonces are plain functions on it in :mod:`relay.store.memory_accounts`, keyed hashes use
``secrets.token_secret``.
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
from relay.store import memory_accounts as accounts
from relay.store.base import (
    Appended,
    AppendRequest,
    DeletedCounts,
    DeviceLookup,
    DeviceRecord,
    Enrollment,
    IssuedToken,
    MigrationStatus,
    NewUser,
    RevocationEntry,
    ServerSecrets,
    StoreStatistics,
    UserSummary,
)
from relay.store.memory_nodes import MemoryNodes
from relay.store.memory_tables import StreamRow, Tables, TokenRow, UserRow

if TYPE_CHECKING:
    from relay.store.base import Store

__all__ = ["MemoryStore"]


@attrs.define(eq=False)
class MemoryStore(MemoryNodes):
    """An in-memory :class:`relay.store.base.Store`.

    ``secrets`` fixes the server secrets (default: fresh random ones); ``id_factory`` makes user and
    device ids (default: random UUIDs), so tests can make them predictable.
    """

    secrets: ServerSecrets = attrs.field(
        factory=lambda: ServerSecrets(signing_seed=crypto.new_secret(), token_secret=crypto.new_secret())
    )
    id_factory: Callable[[], str] = _common.new_id
    _t: Tables = attrs.field(init=False, factory=Tables)
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
        self._t.users[user_id] = UserRow(created_at=now_ms)
        issued, token_hash = _common.new_token(now_ms=now_ms, token_ttl_ms=token_ttl_ms)
        self._t.tokens[token_hash] = TokenRow(
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
        if user_id not in self._t.users:
            raise NotFound("No such user")
        if issued_by is not None:
            issuer = self._t.devices.get(issued_by)
            if issuer is None or issuer.user_id != user_id:
                raise NotFound("No such device")
            if issuer.revoked:
                raise DeviceRevoked()
        issued, token_hash = _common.new_token(now_ms=now_ms, token_ttl_ms=token_ttl_ms)
        self._t.tokens[token_hash] = TokenRow(
            user_id=user_id, issued_by=issued_by, bound_key=bound_key, expires_at=issued.expires_at
        )
        return issued

    async def enroll(self, enrollment: Enrollment) -> DeviceRecord:
        await trio.lowlevel.checkpoint()
        self._write()
        token = self._usable_token(enrollment)
        user = self._t.users[token.user_id]
        live = [d for d in (self._t.devices[i] for i in user.device_ids) if not d.revoked]
        if any(self._t.name_keys[d.device_id] == enrollment.name_key for d in live):
            raise NameTaken()
        if enrollment.public_key in self._t.keys:
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
        self._t.devices[device.device_id] = device
        self._t.keys[device.public_key] = device.device_id
        self._t.name_keys[device.device_id] = enrollment.name_key
        user.device_ids.append(device.device_id)
        return device

    def _usable_token(self, enrollment: Enrollment) -> TokenRow:
        token = self._t.tokens.get(enrollment.token_hash)
        if (
            token is None
            or token.used_at is not None
            or token.voided_at is not None
            or _common.token_expired(token.expires_at, now_ms=enrollment.now_ms)
            or (token.bound_key is not None and token.bound_key != enrollment.public_key)
            or (token.issued_by is not None and self._t.devices[token.issued_by].revoked)
        ):
            raise InvalidToken()
        return token

    async def lookup_device(self, device_id: str, *, now_ms: int | None = None) -> DeviceLookup:
        await trio.lowlevel.checkpoint()
        return accounts.lookup_device(
            self._t, device_id, token_secret=self.secrets.token_secret, now_ms=now_ms
        )

    async def get_user(self, user_id: str, *, now_ms: int, clock_skew_ms: int) -> UserSummary:
        await trio.lowlevel.checkpoint()
        return accounts.get_user(self._t, user_id, now_ms=now_ms, clock_skew_ms=clock_skew_ms)

    async def list_users(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        return list(self._t.users)

    async def list_devices(self, user_id: str) -> list[DeviceRecord]:
        await trio.lowlevel.checkpoint()
        user = self._t.users.get(user_id)
        return [] if user is None else [self._t.devices[i] for i in user.device_ids]

    async def touch_device(self, device_id: str, *, now_ms: int) -> None:
        await trio.lowlevel.checkpoint()
        self._write()
        device = self._t.devices.get(device_id)
        if device is not None and (device.last_seen_at is None or device.last_seen_at < now_ms):
            self._t.devices[device_id] = attrs.evolve(device, last_seen_at=now_ms)

    async def revoke_device(self, device_id: str, *, now_ms: int, user_id: str | None = None) -> DeviceRecord:
        await trio.lowlevel.checkpoint()
        self._write()
        return accounts.revoke_device(
            self._t, device_id, now_ms=now_ms, user_id=user_id, token_secret=self.secrets.token_secret
        )

    async def rename_device(
        self, device_id: str, *, name: str, name_key: str, now_ms: int, user_id: str | None = None
    ) -> DeviceRecord:
        await trio.lowlevel.checkpoint()
        self._write()
        return accounts.rename_device(self._t, device_id, name=name, name_key=name_key, user_id=user_id)

    async def delete_user(self, user_id: str, *, now_ms: int, remember_ms: int) -> DeletedCounts:
        await trio.lowlevel.checkpoint()
        self._write()
        return accounts.delete_user(
            self._t, user_id, now_ms=now_ms, remember_ms=remember_ms, token_secret=self.secrets.token_secret
        )

    # --- revocation log and nonces -----------------------------------------------------------------

    async def latest_revocation(self) -> int:
        await trio.lowlevel.checkpoint()
        return accounts.latest_revocation(self._t)

    async def revocations_since(self, after: int, *, limit: int = 1000) -> list[RevocationEntry]:
        await trio.lowlevel.checkpoint()
        return accounts.revocations_since(self._t, after, limit=limit)

    async def remember_nonce(self, device_id: str, nonce: str, *, expires_at: int, now_ms: int) -> bool:
        await trio.lowlevel.checkpoint()
        self._write()
        return accounts.remember_nonce(self._t, device_id, nonce, expires_at=expires_at, now_ms=now_ms)

    # --- events ------------------------------------------------------------------------------------

    async def append(self, request: AppendRequest) -> Appended:
        await trio.lowlevel.checkpoint()
        self._write()
        r = request
        user = self._t.users.get(r.user_id)
        device = self._t.devices.get(r.device_id)
        if user is None or device is None or device.user_id != r.user_id:
            raise AccountDeleted()
        body = r.body.decode("utf-8")
        stream = self._t.streams.get((r.user_id, r.stream))
        held = self._t.ids.get((r.device_id, r.id))
        if held is not None:
            original = self._t.streams[held[0], held[1]].events[held[2]]
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
            stream = self._t.streams[r.user_id, r.stream] = StreamRow(
                head=0, last_written_at=r.received_at, max_expires_at=r.expires_at
            )
        stream.head = event.seq
        stream.last_written_at = r.received_at
        stream.max_expires_at = max(stream.max_expires_at, r.expires_at)
        stream.events[event.seq] = event
        self._t.ids[r.device_id, r.id] = (r.user_id, r.stream, event.seq)
        user.held_bytes += len(r.body)
        return Appended(event=event, duplicate=False)

    def _check_quota(self, user: UserRow, r: AppendRequest, stream: StreamRow | None) -> None:
        def expired(expires_at: int) -> bool:
            return is_expired(expires_at, now_ms=r.received_at, clock_skew_ms=r.clock_skew_ms)

        if stream is None or expired(stream.max_expires_at):
            live = sum(
                1
                for (uid, _), s in self._t.streams.items()
                if uid == r.user_id and not expired(s.max_expires_at)
            )
            if live >= r.max_streams:
                raise QuotaExceeded("Too many streams hold unexpired events")
        size = len(r.body)
        if user.held_bytes + size > r.max_stored_bytes:
            unexpired = sum(
                len(e.body.encode("utf-8"))
                for (uid, _), s in self._t.streams.items()
                if uid == r.user_id
                for e in s.events.values()
                if not expired(e.expires_at)
            )
            if unexpired + size > r.max_stored_bytes:
                raise QuotaExceeded("Too many bytes of unexpired events are stored")

    async def stream_head(self, user_id: str, stream: str) -> int:
        await trio.lowlevel.checkpoint()
        found = self._t.streams.get((user_id, stream))
        return 0 if found is None else found.head

    async def read_events(
        self, user_id: str, stream: str, *, after: int, head: int, limit: int, now_ms: int, clock_skew_ms: int
    ) -> list[StoredEvent]:
        await trio.lowlevel.checkpoint()
        found = self._t.streams.get((user_id, stream))
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

    def _live_streams(self, user_id: str, *, now_ms: int, clock_skew_ms: int) -> list[tuple[str, StreamRow]]:
        return [
            (name, s)
            for (uid, name), s in self._t.streams.items()
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
            for (uid, name), s in self._t.streams.items()
            for seq, event in s.events.items()
            if is_expired(event.expires_at, now_ms=now_ms, clock_skew_ms=clock_skew_ms)
        )[: max(batch, 0)]
        deleted: collections.Counter[str] = collections.Counter()
        for _, uid, name, seq in expired:
            event = self._t.streams[uid, name].events.pop(seq)
            del self._t.ids[event.device_id, event.id]
            deleted[uid] += len(event.body.encode("utf-8"))
        for uid, size in deleted.items():
            self._t.users[uid].held_bytes -= size
        return len(expired)

    async def purge_housekeeping(self, *, now_ms: int, batch: int) -> int:
        await trio.lowlevel.checkpoint()
        self._write()
        return accounts.purge_housekeeping(self._t, now_ms=now_ms, batch=batch)


if TYPE_CHECKING:

    def _conforms(store: MemoryStore) -> Store:
        return store
