"""The SQLite store's connections: how each is opened, and the pool of read connections.

Every connection runs the pragmas listed in :mod:`relay.store.sqlite` (WAL, ``synchronous=FULL``,
``secure_delete=ON``, ``foreign_keys=ON``, ``busy_timeout``); read connections are also
``query_only``. The write connection is handed to :class:`~relay.store.sqlite_writer.SqliteWriter`;
reads go through :class:`ReaderPool`, one worker thread per read, interruptible when cancelled.
"""

from __future__ import annotations

import collections
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import trio

from relay.errors import StoreUnavailable
from relay.store.sqlite_writer import store_unavailable

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DATABASE_FILE",
    "READ_POOL_CONNECTIONS",
    "ReaderPool",
    "connect",
    "open_writer",
]

T = TypeVar("T")

DATABASE_FILE = "relay.sqlite3"
#: Read connections, hence reads running at once (connections; one worker thread each).
READ_POOL_CONNECTIONS = 4
#: How long a connection waits for a lock held by another process before giving up (milliseconds).
BUSY_TIMEOUT_MS = 5000


def connect(path: Path, *, writer: bool) -> sqlite3.Connection:
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


def open_writer(data_dir: Path) -> sqlite3.Connection:
    """Create the data directory and the database file (private) if needed; open the write connection."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = data_dir / DATABASE_FILE
        # Create it private; SQLite gives its -wal and -shm files the same mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        return connect(path, writer=True)
    except OSError as exc:
        raise StoreUnavailable(detail=f"cannot open the database in {data_dir}: {exc}") from exc
    except sqlite3.Error as exc:
        raise store_unavailable(exc, "open") from exc


class ReaderPool:
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
            return connect(self._path, writer=False)

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

    def __init__(self, pool: ReaderPool, name: str, fn: Callable[[sqlite3.Connection], T]) -> None:
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
