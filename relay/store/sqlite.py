"""``SqliteStore``: the store contract on an embedded SQLite database (the default, one node).

Files, in the data directory: ``relay.sqlite3`` (with its ``-wal`` and ``-shm``; created mode 0600),
``server.key`` and ``token.secret`` (:mod:`relay.store.secret_files`).

Connections (ARCHITECTURE.md "Store"):

- one **write connection**, owned by one thread (:class:`~relay.store.sqlite_writer.SqliteWriter`),
  which runs every write, committing concurrent ones together (group commit, one savepoint each);
- a small pool of **read connections** (:data:`READ_POOL_CONNECTIONS`), each used by one worker thread
  at a time through ``trio.to_thread.run_sync`` under a ``CapacityLimiter``. In WAL mode readers never
  wait for the writer, nor the writer for them.

Every connection runs ``journal_mode=WAL`` (set once, persistent), ``synchronous=FULL`` (an
acknowledged commit survives power loss), ``secure_delete=ON`` (deleted rows are overwritten, §5),
``foreign_keys=ON`` and a ``busy_timeout`` for the write lock that other processes (``relay admin``
commands, a second worker) may hold. Every ``sqlite3.Error`` is raised as
:class:`~relay.errors.StoreUnavailable` ``from`` it.

Cancellation: writes, see :mod:`relay.store.sqlite_writer` (a cancelled caller stops waiting; the
write commits or not as a whole). A cancelled read is interrupted (``sqlite3_interrupt``) and
abandoned; its connection goes back to the pool when the worker thread is done with it.
"""

from __future__ import annotations

import collections
import functools
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

import trio

from relay.errors import StoreUnavailable
from relay.protocol.messages import StoredEvent
from relay.store import sqlite_txn as txn
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
)
from relay.store.secret_files import load_or_create_secret_files
from relay.store.sqlite_migrations import (
    DEFAULT_MIGRATIONS_DIR,
    applied_migrations,
    apply_migrations,
    load_migrations,
)
from relay.store.sqlite_writer import MAX_GROUP_REQUESTS, SqliteWriter, store_unavailable

if TYPE_CHECKING:
    from relay.store.base import Store

__all__ = ["BUSY_TIMEOUT_MS", "DATABASE_FILE", "READ_POOL_CONNECTIONS", "SqliteStore"]

T = TypeVar("T")

DATABASE_FILE = "relay.sqlite3"
#: Read connections, hence reads running at once (connections; one worker thread each).
READ_POOL_CONNECTIONS = 4
#: How long a connection waits for a lock held by another process before giving up (milliseconds).
BUSY_TIMEOUT_MS = 5000


def _connect(path: Path, *, writer: bool) -> sqlite3.Connection:
    # isolation_level=None: no implicit BEGIN; the writer opens its transactions explicitly.
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA synchronous = FULL")
        if writer:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode != "wal":
                raise StoreUnavailable(detail=f"{path}: SQLite refused WAL mode (journal_mode={mode})")
        else:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _open_writer(data_dir: Path) -> sqlite3.Connection:
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = data_dir / DATABASE_FILE
        # Create it private; SQLite gives its -wal and -shm files the same mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        return _connect(path, writer=True)
    except OSError as exc:
        raise StoreUnavailable(detail=f"cannot open the database in {data_dir}: {exc}") from exc
    except sqlite3.Error as exc:
        raise store_unavailable(exc, "open") from exc


class _ReaderPool:
    """Read connections, handed to worker threads one at a time (see the module docstring)."""

    def __init__(self, path: Path, size: int) -> None:
        self._path = path
        self._limiter = trio.CapacityLimiter(size)
        # Taken and given back by worker threads: deque's append and pop are atomic.
        self._idle: collections.deque[sqlite3.Connection] = collections.deque()
        self._closed = False

    async def run(self, name: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreUnavailable(detail="the store is closed")
        call = _ReadCall(self, name, fn)
        try:
            return await trio.to_thread.run_sync(call.run, limiter=self._limiter, abandon_on_cancel=True)
        except trio.Cancelled:
            call.interrupt()
            raise

    def take(self) -> sqlite3.Connection:
        try:
            return self._idle.pop()
        except IndexError:
            return _connect(self._path, writer=False)

    def give_back(self, conn: sqlite3.Connection) -> None:
        if self._closed:
            conn.close()
        else:
            self._idle.append(conn)

    def close(self) -> None:
        """Close the idle connections; busy ones are closed by their threads when they finish."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()


class _ReadCall(Generic[T]):
    """One read in a worker thread, interruptible from the trio thread while it runs."""

    def __init__(self, pool: _ReaderPool, name: str, fn: Callable[[sqlite3.Connection], T]) -> None:
        self._pool = pool
        self._name = name
        self._fn = fn
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def run(self) -> T:
        try:
            conn = self._pool.take()
        except sqlite3.Error as exc:
            raise store_unavailable(exc, self._name) from exc
        with self._lock:
            self._conn = conn
        try:
            return self._fn(conn)
        except sqlite3.Error as exc:
            raise store_unavailable(exc, self._name) from exc
        finally:
            with self._lock:  # after this, interrupt() can no longer reach the connection
                self._conn = None
            self._pool.give_back(conn)

    def interrupt(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.interrupt()


class SqliteStore:
    """The SQLite :class:`relay.store.base.Store`. Make one with :meth:`open`, inside trio."""

    def __init__(
        self, *, data_dir: Path, writer: SqliteWriter, readers: _ReaderPool, migrations_dir: Path
    ) -> None:
        self._data_dir = data_dir
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
        conn = await trio.to_thread.run_sync(_open_writer, data_dir)
        writer = SqliteWriter(conn, max_group=max_group)
        writer.start()
        readers = _ReaderPool(data_dir / DATABASE_FILE, read_connections)
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

    async def load_or_create_secrets(self) -> ServerSecrets:
        if self._secrets is None:
            self._secrets = await trio.to_thread.run_sync(load_or_create_secret_files, self._data_dir)
        return self._secrets

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

    async def lookup_device(self, device_id: str) -> DeviceLookup:
        return await self._readers.run(
            "lookup_device", functools.partial(txn.lookup_device_txn, device_id=device_id)
        )

    async def list_users(self) -> list[str]:
        return await self._readers.run("list_users", txn.list_users_txn)

    async def list_devices(self, user_id: str) -> list[DeviceRecord]:
        return await self._readers.run(
            "list_devices", functools.partial(txn.list_devices_txn, user_id=user_id)
        )

    async def touch_device(self, device_id: str, *, now_ms: int) -> None:
        fn = functools.partial(txn.touch_device_txn, device_id=device_id, now_ms=now_ms)
        await self._writer.submit("touch_device", fn)

    async def revoke_device(self, device_id: str, *, now_ms: int, user_id: str | None = None) -> DeviceRecord:
        fn = functools.partial(txn.revoke_device_txn, device_id=device_id, now_ms=now_ms, user_id=user_id)
        return await self._writer.submit("revoke_device", fn)

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


if TYPE_CHECKING:

    def _conforms(store: SqliteStore) -> Store:
        return store
