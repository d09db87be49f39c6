"""``SqliteStore``: the store contract on an embedded SQLite database (the default, one node).

Files, in the data directory: ``relay.sqlite3`` (with its ``-wal`` and ``-shm``; created mode 0600),
``server.key`` and ``token.secret`` (:mod:`relay.store.secret_files`).

Connections (ARCHITECTURE.md "Store"):

- one **write connection**, owned by one thread (:class:`~relay.store.sqlite_writer.SqliteWriter`),
  which runs every write, committing concurrent ones together (group commit, one savepoint each);
- a small pool of **read connections** (:data:`READ_POOL_CONNECTIONS`), each used by one worker thread
  at a time through ``trio.to_thread.run_sync`` under a ``CapacityLimiter``. In WAL mode readers never
  wait for the writer, nor the writer for them.

Every connection (opened by :mod:`relay.store.sqlite_connections`) runs ``journal_mode=WAL`` (set
once, persistent), ``synchronous=FULL`` (an acknowledged commit survives power loss),
``secure_delete=ON`` (deleted rows are overwritten, §5), ``foreign_keys=ON`` and a ``busy_timeout`` for
the write lock that other processes (``relay admin`` commands, a second worker) may hold. Every
``sqlite3.Error`` is raised as :class:`~relay.errors.StoreUnavailable` ``from`` it.

Methods that write or look up keyed hashes (revocations, deletions, device lookups) first read the
server's ``token_secret`` through :meth:`SqliteStore.load_or_create_secrets` (from its file, once).

Cancellation: writes, see :mod:`relay.store.sqlite_writer` (a cancelled caller stops waiting; the
write commits or not as a whole). A cancelled read is interrupted (``sqlite3_interrupt``) and
abandoned; its connection goes back to the pool when the worker thread is done with it.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from relay.protocol.messages import StoredEvent
from relay.store import nodes_sql
from relay.store import sqlite_accounts_txn as accounts
from relay.store import sqlite_revocations_txn as revocations
from relay.store import sqlite_txn as txn
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
    NodeRecord,
    RevocationEntry,
    ServerSecrets,
    StoreStatistics,
    UserSummary,
)
from relay.store.node_locks import NodeLocks
from relay.store.secret_files import load_or_create_secret_files
from relay.store.sqlite_connections import (
    BUSY_TIMEOUT_MS,
    DATABASE_FILE,
    READ_POOL_CONNECTIONS,
    ReaderPool,
    open_writer,
)
from relay.store.sqlite_migrations import (
    DEFAULT_MIGRATIONS_DIR,
    applied_migrations,
    apply_migrations,
    load_migrations,
)
from relay.store.sqlite_writer import MAX_GROUP_REQUESTS, SqliteWriter

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from relay.store.base import Store

__all__ = ["BUSY_TIMEOUT_MS", "DATABASE_FILE", "READ_POOL_CONNECTIONS", "SqliteStore"]


class SqliteStore:
    """The SQLite :class:`relay.store.base.Store`. Make one with :meth:`open`, inside trio."""

    def __init__(
        self, *, data_dir: Path, writer: SqliteWriter, readers: ReaderPool, migrations_dir: Path
    ) -> None:
        self._data_dir = data_dir
        self._node_locks = NodeLocks(data_dir)
        self._unlockable: set[str] = set()
        self._writer = writer
        self._readers = readers
        self._migrations_dir = migrations_dir
        self._secrets: ServerSecrets | None = None

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        migrations_dir: Path = DEFAULT_MIGRATIONS_DIR,
        read_connections: int = READ_POOL_CONNECTIONS,
        max_group: int = MAX_GROUP_REQUESTS,
    ) -> SqliteStore:
        """Open (creating if needed) the database in ``data_dir`` and start the writer thread.

        Does not migrate: call :meth:`migrate` before anything else on a new database. ``max_group``
        bounds the requests per transaction (1 turns group commit off: for benchmarks). The store
        belongs to the trio run that opened it (the writer thread answers into that run); the caller
        owns it and must :meth:`close` it, which waits for the writes already accepted.
        """
        conn = await trio.to_thread.run_sync(open_writer, data_dir)
        writer = SqliteWriter(conn, max_group=max_group)
        writer.start()
        readers = ReaderPool(data_dir / DATABASE_FILE, read_connections)
        return cls(data_dir=data_dir, writer=writer, readers=readers, migrations_dir=migrations_dir)

    @property
    def path(self) -> Path:
        return self._data_dir / DATABASE_FILE

    # --- lifecycle ---------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        directory = self._migrations_dir

        def run(conn: sqlite3.Connection) -> list[str]:
            return apply_migrations(conn, load_migrations(directory))

        return await self._writer.submit("migrate", run, exclusive=True)

    async def migration_status(self) -> MigrationStatus:
        directory = self._migrations_dir

        def status(conn: sqlite3.Connection) -> MigrationStatus:
            names = [m.name for m in load_migrations(directory)]
            applied = applied_migrations(conn)
            return MigrationStatus(
                applied=sorted(applied), pending=[name for name in names if name not in applied]
            )

        return await self._readers.run("migration_status", status)

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            write_transactions=self._writer.transactions,
            write_requests=self._writer.requests,
            write_queue_depth=self._writer.queue_depth,
        )

    async def close(self) -> None:
        """Commit and answer every write already accepted, then close every connection."""
        await self._writer.aclose()
        self._readers.close()
        self._node_locks.release_all()

    async def load_or_create_secrets(self) -> ServerSecrets:
        if self._secrets is None:
            self._secrets = await trio.to_thread.run_sync(load_or_create_secret_files, self._data_dir)
        return self._secrets

    async def _token_secret(self) -> bytes:
        """The key of the keyed hashes this store writes and looks up (read from its file once)."""
        return (await self.load_or_create_secrets()).token_secret

    # --- users and enrolment -----------------------------------------------------------------------

    async def create_user(self, *, now_ms: int, token_ttl_ms: int) -> NewUser:
        fn = functools.partial(txn.create_user_txn, now_ms=now_ms, token_ttl_ms=token_ttl_ms)
        return await self._writer.submit("create_user", fn)

    async def create_token(
        self,
        *,
        user_id: str,
        now_ms: int,
        token_ttl_ms: int,
        issued_by: str | None = None,
        bound_key: bytes | None = None,
    ) -> IssuedToken:
        fn = functools.partial(
            txn.create_token_txn,
            user_id=user_id,
            now_ms=now_ms,
            token_ttl_ms=token_ttl_ms,
            issued_by=issued_by,
            bound_key=bound_key,
        )
        return await self._writer.submit("create_token", fn)

    async def enroll(self, enrollment: Enrollment) -> DeviceRecord:
        return await self._writer.submit("enroll", functools.partial(txn.enroll_txn, e=enrollment))

    async def lookup_device(self, device_id: str, *, now_ms: int | None = None) -> DeviceLookup:
        fn = functools.partial(
            accounts.lookup_device_txn,
            device_id=device_id,
            token_secret=await self._token_secret(),
            now_ms=now_ms,
        )
        return await self._readers.run("lookup_device", fn)

    async def get_user(self, user_id: str, *, now_ms: int, clock_skew_ms: int) -> UserSummary:
        fn = functools.partial(
            accounts.get_user_txn, user_id=user_id, now_ms=now_ms, clock_skew_ms=clock_skew_ms
        )
        return await self._readers.run("get_user", fn)

    async def list_users(self) -> list[str]:
        return await self._readers.run("list_users", accounts.list_users_txn)

    async def list_devices(self, user_id: str) -> list[DeviceRecord]:
        return await self._readers.run(
            "list_devices", functools.partial(accounts.list_devices_txn, user_id=user_id)
        )

    async def touch_device(self, device_id: str, *, now_ms: int) -> None:
        fn = functools.partial(accounts.touch_device_txn, device_id=device_id, now_ms=now_ms)
        await self._writer.submit("touch_device", fn)

    async def revoke_device(self, device_id: str, *, now_ms: int, user_id: str | None = None) -> DeviceRecord:
        fn = functools.partial(
            accounts.revoke_device_txn,
            device_id=device_id,
            now_ms=now_ms,
            user_id=user_id,
            token_secret=await self._token_secret(),
        )
        return await self._writer.submit("revoke_device", fn)

    async def rename_device(
        self, device_id: str, *, name: str, name_key: str, now_ms: int, user_id: str | None = None
    ) -> DeviceRecord:
        fn = functools.partial(
            accounts.rename_device_txn, device_id=device_id, name=name, name_key=name_key, user_id=user_id
        )
        return await self._writer.submit("rename_device", fn)

    async def delete_user(self, user_id: str, *, now_ms: int, remember_ms: int) -> DeletedCounts:
        fn = functools.partial(
            accounts.delete_user_txn,
            user_id=user_id,
            now_ms=now_ms,
            remember_ms=remember_ms,
            token_secret=await self._token_secret(),
        )
        return await self._writer.submit("delete_user", fn)

    # --- nodes sharing the database ------------------------------------------------------------------

    # A node of this process holds a lock file from its first heartbeat (relay/store/node_locks.py), so
    # that the row of a node that died without forgetting itself is recognised and dropped at once.

    async def heartbeat_node(self, node_id: str, *, shared_bus: bool, now_ms: int, ttl_ms: int) -> None:
        if not self._node_locks.holds(node_id) and node_id not in self._unlockable:
            try:
                await trio.to_thread.run_sync(self._node_locks.hold, node_id)
            except OSError as exc:  # the row still expires by itself: only the fast path is lost
                self._unlockable.add(node_id)  # said once, not at every heartbeat
                log.warning("cannot lock this node's file in the data directory: %s", exc.strerror or exc)
        fn = functools.partial(
            nodes_sql.heartbeat_node_txn,
            style="qmark",
            node_id=node_id,
            shared_bus=shared_bus,
            now_ms=now_ms,
            expires_at=now_ms + ttl_ms,
        )
        await self._writer.submit("heartbeat_node", fn)

    async def live_nodes(self, *, now_ms: int) -> list[NodeRecord]:
        fn = functools.partial(nodes_sql.live_nodes_txn, style="qmark", now_ms=now_ms)
        nodes: list[NodeRecord] = await self._readers.run("live_nodes", fn)
        others = [node.node_id for node in nodes if not self._node_locks.holds(node.node_id)]
        if not others:
            return nodes
        gone = set(await trio.to_thread.run_sync(self._node_locks.gone_of, others))
        for node_id in gone:
            await self._writer.submit(
                "forget_node", functools.partial(nodes_sql.forget_node_txn, style="qmark", node_id=node_id)
            )
        return [node for node in nodes if node.node_id not in gone]

    async def forget_node(self, node_id: str) -> None:
        fn = functools.partial(nodes_sql.forget_node_txn, style="qmark", node_id=node_id)
        await self._writer.submit("forget_node", fn)
        await trio.to_thread.run_sync(self._node_locks.release, node_id)

    # --- revocation log and nonces -----------------------------------------------------------------

    async def latest_revocation(self) -> int:
        return await self._readers.run("latest_revocation", revocations.latest_revocation_txn)

    async def revocations_since(self, after: int, *, limit: int = 1000) -> list[RevocationEntry]:
        fn = functools.partial(revocations.revocations_since_txn, after=after, limit=limit)
        return await self._readers.run("revocations_since", fn)

    async def remember_nonce(self, device_id: str, nonce: str, *, expires_at: int, now_ms: int) -> bool:
        fn = functools.partial(
            accounts.remember_nonce_txn,
            device_id=device_id,
            nonce=nonce,
            expires_at=expires_at,
            now_ms=now_ms,
        )
        return await self._writer.submit("remember_nonce", fn)

    # --- events ------------------------------------------------------------------------------------

    async def append(self, request: AppendRequest) -> Appended:
        return await self._writer.submit("append", functools.partial(txn.append_txn, r=request))

    async def stream_head(self, user_id: str, stream: str) -> int:
        fn = functools.partial(txn.stream_head_txn, user_id=user_id, stream=stream)
        return await self._readers.run("stream_head", fn)

    async def read_events(
        self, user_id: str, stream: str, *, after: int, head: int, limit: int, now_ms: int, clock_skew_ms: int
    ) -> list[StoredEvent]:
        fn = functools.partial(
            txn.read_events_txn,
            user_id=user_id,
            stream=stream,
            after=after,
            head=head,
            limit=limit,
            now_ms=now_ms,
            clock_skew_ms=clock_skew_ms,
        )
        return await self._readers.run("read_events", fn)

    async def list_streams(
        self, user_id: str, *, after: str | None, limit: int, now_ms: int, clock_skew_ms: int
    ) -> list[tuple[str, int]]:
        fn = functools.partial(
            txn.list_streams_txn,
            user_id=user_id,
            after=after,
            limit=limit,
            now_ms=now_ms,
            clock_skew_ms=clock_skew_ms,
        )
        return await self._readers.run("list_streams", fn)

    async def recent_streams(
        self, user_id: str, *, limit: int, now_ms: int, clock_skew_ms: int
    ) -> tuple[dict[str, int], bool]:
        fn = functools.partial(
            txn.recent_streams_txn, user_id=user_id, limit=limit, now_ms=now_ms, clock_skew_ms=clock_skew_ms
        )
        return await self._readers.run("recent_streams", fn)

    async def purge_expired(self, *, now_ms: int, clock_skew_ms: int, batch: int) -> int:
        fn = functools.partial(txn.purge_expired_txn, now_ms=now_ms, clock_skew_ms=clock_skew_ms, batch=batch)
        return await self._writer.submit("purge_expired", fn)

    async def purge_housekeeping(self, *, now_ms: int, batch: int) -> int:
        fn = functools.partial(accounts.purge_housekeeping_txn, now_ms=now_ms, batch=batch)
        return await self._writer.submit("purge_housekeeping", fn)


if TYPE_CHECKING:

    def _conforms(store: SqliteStore) -> Store:
        return store
