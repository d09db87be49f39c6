"""``PostgresStore``: the store contract on PostgreSQL, shared by several relay nodes.

Everything lives in the database, in the connection's current schema (the first of its
``search_path``): the tables of ``schema/postgres`` (:mod:`relay.store.postgres_migrations`) and the
server's secrets (``server_secrets``, migration 003), so that every node has the same server key and
token secret.

Connections (ARCHITECTURE.md "Store"): psycopg 3's sync driver and one
``psycopg_pool.ConnectionPool`` (:mod:`relay.store.postgres_pool`), every call in a worker thread
through ``trio.to_thread.run_sync`` under a ``CapacityLimiter`` of the pool's size. Reads run in
autocommit mode, one statement each; appends are committed in groups by
:mod:`relay.store.postgres_writer`; every other write runs alone in a transaction of its own. Each
method is one named transaction (the name is in the detail of its errors). Every ``psycopg.Error`` is
raised as :class:`~relay.errors.StoreUnavailable` ``from`` it.

Across nodes (PROTOCOL.md §4.2, §7): seqs come from a row lock on the stream's head inside the
appending transaction, so they are gapless and in commit order; idempotency is the unique key
(device_id, id); the user's row is the lock of its account, and rows are always locked in one order
(:mod:`relay.store.postgres_txn`), so no two nodes deadlock; log ids come in commit order
(:mod:`relay.store.postgres_revocations_txn`). The purge of expired events and housekeeping run on one
node at a time (``pg_try_advisory_xact_lock``), in short batches; migrations under an advisory lock.

Methods that write or look up keyed hashes (revocations, deletions, device lookups) first read the
server's ``token_secret`` through :meth:`PostgresStore.load_or_create_secrets` (once per store).

Cancellation: a cancelled read or write (other than an append) cancels its statement, and returns
once the connection is rolled back and back in the pool; an append, see
:mod:`relay.store.postgres_writer` (the caller stops waiting; the append commits or not as a whole).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from relay.protocol.messages import StoredEvent
from relay.store import nodes_sql
from relay.store import postgres_accounts_txn as accounts
from relay.store import postgres_revocations_txn as revocations
from relay.store import postgres_txn as txn
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
from relay.store.postgres_migrations import (
    DEFAULT_MIGRATIONS_DIR,
    applied_migrations,
    apply_migrations,
    load_migrations,
)
from relay.store.postgres_pool import PgConnection, PostgresPool
from relay.store.postgres_writer import MAX_GROUP_REQUESTS, WRITERS, PostgresWriter

if TYPE_CHECKING:
    from relay.store.base import Store

__all__ = ["MAX_GROUP_REQUESTS", "POOL_CONNECTIONS", "WRITERS", "PostgresStore"]

#: Connections of the pool, hence calls running at once, writers' groups included (connections).
POOL_CONNECTIONS = 8


class PostgresStore:
    """The PostgreSQL :class:`relay.store.base.Store`. Make one with :meth:`open`, inside trio."""

    def __init__(self, *, pool: PostgresPool, writer: PostgresWriter, migrations_dir: Path) -> None:
        self._pool = pool
        self._writer = writer
        self._migrations_dir = migrations_dir
        self._secrets: ServerSecrets | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        pool_size: int = POOL_CONNECTIONS,
        writers: int = WRITERS,
        max_group: int = MAX_GROUP_REQUESTS,
        migrations_dir: Path = DEFAULT_MIGRATIONS_DIR,
    ) -> PostgresStore:
        """Connect to the database at ``url`` (a libpq URL or conninfo) and start the writer tasks.

        Fails at once with :class:`StoreUnavailable` when the server cannot be reached, is older
        than PostgreSQL 12 or does not store UTF-8. Does not migrate: call :meth:`migrate` before
        anything else on a new database. ``pool_size`` connections are kept open; ``writers`` of them
        (at most ``pool_size``) commit append groups at once, each of at most ``max_group`` appends
        (1 turns group commit off: for benchmarks). The store belongs to the trio run that opened
        it; the caller owns it and must :meth:`close` it, which waits for the appends already accepted.
        """
        pool = await PostgresPool.open(url, size=pool_size)
        try:
            writer = PostgresWriter(pool, writers=writers, max_group=max_group)
        except ValueError:
            await pool.aclose()
            raise
        writer.start()
        return cls(pool=pool, writer=writer, migrations_dir=migrations_dir)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        directory = self._migrations_dir

        def run(conn: PgConnection) -> list[str]:
            return apply_migrations(conn, load_migrations(directory))

        # Not in a transaction of the pool's: each migration opens its own, under the advisory lock.
        return await self._pool.run("migrate", run, transaction=False)

    async def migration_status(self) -> MigrationStatus:
        directory = self._migrations_dir

        def status(conn: PgConnection) -> MigrationStatus:
            names = [m.name for m in load_migrations(directory)]
            applied = applied_migrations(conn)
            return MigrationStatus(
                applied=sorted(applied), pending=[name for name in names if name not in applied]
            )

        return await self._pool.run("migration_status", status, transaction=False)

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            write_transactions=self._writer.transactions,
            write_requests=self._writer.requests,
            write_queue_depth=self._writer.queue_depth,
        )

    async def close(self) -> None:
        """Commit and answer every append already accepted, then close every connection."""
        await self._writer.aclose()
        await self._pool.aclose()

    async def load_or_create_secrets(self) -> ServerSecrets:
        if self._secrets is None:
            self._secrets = await self._writer.run("load_or_create_secrets", txn.load_or_create_secrets_txn)
        return self._secrets

    async def _token_secret(self) -> bytes:
        """The key of the keyed hashes this store writes and looks up (read from the database once)."""
        return (await self.load_or_create_secrets()).token_secret

    # --- users and enrolment -----------------------------------------------------------------------

    async def create_user(self, *, now_ms: int, token_ttl_ms: int) -> NewUser:
        fn = functools.partial(txn.create_user_txn, now_ms=now_ms, token_ttl_ms=token_ttl_ms)
        return await self._writer.run("create_user", fn)

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
        return await self._writer.run("create_token", fn)

    async def enroll(self, enrollment: Enrollment) -> DeviceRecord:
        return await self._writer.run("enroll", functools.partial(txn.enroll_txn, e=enrollment))

    async def lookup_device(self, device_id: str, *, now_ms: int | None = None) -> DeviceLookup:
        fn = functools.partial(
            accounts.lookup_device_txn,
            device_id=device_id,
            token_secret=await self._token_secret(),
            now_ms=now_ms,
        )
        return await self._pool.run("lookup_device", fn, transaction=False)

    async def get_user(self, user_id: str, *, now_ms: int, clock_skew_ms: int) -> UserSummary:
        fn = functools.partial(
            accounts.get_user_txn, user_id=user_id, now_ms=now_ms, clock_skew_ms=clock_skew_ms
        )
        return await self._pool.run("get_user", fn, transaction=False)

    async def list_users(self) -> list[str]:
        return await self._pool.run("list_users", accounts.list_users_txn, transaction=False)

    async def list_devices(self, user_id: str) -> list[DeviceRecord]:
        fn = functools.partial(accounts.list_devices_txn, user_id=user_id)
        return await self._pool.run("list_devices", fn, transaction=False)

    async def touch_device(self, device_id: str, *, now_ms: int) -> None:
        fn = functools.partial(accounts.touch_device_txn, device_id=device_id, now_ms=now_ms)
        await self._writer.run("touch_device", fn)

    async def revoke_device(self, device_id: str, *, now_ms: int, user_id: str | None = None) -> DeviceRecord:
        fn = functools.partial(
            accounts.revoke_device_txn,
            device_id=device_id,
            now_ms=now_ms,
            user_id=user_id,
            token_secret=await self._token_secret(),
        )
        return await self._writer.run("revoke_device", fn)

    async def rename_device(
        self, device_id: str, *, name: str, name_key: str, now_ms: int, user_id: str | None = None
    ) -> DeviceRecord:
        fn = functools.partial(
            accounts.rename_device_txn, device_id=device_id, name=name, name_key=name_key, user_id=user_id
        )
        return await self._writer.run("rename_device", fn)

    async def delete_user(self, user_id: str, *, now_ms: int, remember_ms: int) -> DeletedCounts:
        fn = functools.partial(
            accounts.delete_user_txn,
            user_id=user_id,
            now_ms=now_ms,
            remember_ms=remember_ms,
            token_secret=await self._token_secret(),
        )
        return await self._writer.run("delete_user", fn)

    # --- revocation log and nonces -----------------------------------------------------------------

    # --- nodes sharing the database ------------------------------------------------------------------

    async def heartbeat_node(self, node_id: str, *, shared_bus: bool, now_ms: int, ttl_ms: int) -> None:
        fn = functools.partial(
            nodes_sql.heartbeat_node_txn,
            style="pyformat",
            node_id=node_id,
            shared_bus=shared_bus,
            now_ms=now_ms,
            expires_at=now_ms + ttl_ms,
        )
        await self._pool.run("heartbeat_node", fn, transaction=True)

    async def live_nodes(self, *, now_ms: int) -> list[NodeRecord]:
        fn = functools.partial(nodes_sql.live_nodes_txn, style="pyformat", now_ms=now_ms)
        return await self._pool.run("live_nodes", fn, transaction=False)

    async def forget_node(self, node_id: str) -> None:
        fn = functools.partial(nodes_sql.forget_node_txn, style="pyformat", node_id=node_id)
        await self._pool.run("forget_node", fn, transaction=False)

    async def latest_revocation(self) -> int:
        return await self._pool.run("latest_revocation", revocations.latest_revocation_txn, transaction=False)

    async def revocations_since(self, after: int, *, limit: int = 1000) -> list[RevocationEntry]:
        fn = functools.partial(revocations.revocations_since_txn, after=after, limit=limit)
        return await self._pool.run("revocations_since", fn, transaction=False)

    async def remember_nonce(self, device_id: str, nonce: str, *, expires_at: int, now_ms: int) -> bool:
        fn = functools.partial(
            accounts.remember_nonce_txn,
            device_id=device_id,
            nonce=nonce,
            expires_at=expires_at,
            now_ms=now_ms,
        )
        return await self._writer.run("remember_nonce", fn)

    # --- events ------------------------------------------------------------------------------------

    async def append(self, request: AppendRequest) -> Appended:
        return await self._writer.append(request)

    async def stream_head(self, user_id: str, stream: str) -> int:
        fn = functools.partial(txn.stream_head_txn, user_id=user_id, stream=stream)
        return await self._pool.run("stream_head", fn, transaction=False)

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
        return await self._pool.run("read_events", fn, transaction=False)

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
        return await self._pool.run("list_streams", fn, transaction=False)

    async def recent_streams(
        self, user_id: str, *, limit: int, now_ms: int, clock_skew_ms: int
    ) -> tuple[dict[str, int], bool]:
        fn = functools.partial(
            txn.recent_streams_txn, user_id=user_id, limit=limit, now_ms=now_ms, clock_skew_ms=clock_skew_ms
        )
        return await self._pool.run("recent_streams", fn, transaction=False)

    async def purge_expired(self, *, now_ms: int, clock_skew_ms: int, batch: int) -> int:
        fn = functools.partial(txn.purge_expired_txn, now_ms=now_ms, clock_skew_ms=clock_skew_ms, batch=batch)
        return await self._writer.run("purge_expired", fn)

    async def purge_housekeeping(self, *, now_ms: int, batch: int) -> int:
        fn = functools.partial(accounts.purge_housekeeping_txn, now_ms=now_ms, batch=batch)
        return await self._writer.run("purge_housekeeping", fn)


if TYPE_CHECKING:

    def _conforms(store: PostgresStore) -> Store:
        return store
