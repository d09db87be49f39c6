"""The PostgreSQL store's connections: psycopg 3's sync driver in worker threads, one pool, real cancellation.

psycopg's async API is asyncio-only, so the store uses the sync one: a ``psycopg_pool.ConnectionPool`` of
``size`` connections (all kept open, autocommit mode), and every call runs in a worker thread through
``trio.to_thread.run_sync`` under a ``trio.CapacityLimiter`` of the same size. The limiter is where a
caller waits for a connection (on the trio side, cancellably), so a worker thread never waits in the
pool for one that is busy; it waits only while the pool replaces a broken connection (at most
:data:`GETCONN_TIMEOUT_S`).

Cancellation (:meth:`PostgresPool.run`)
    A cancelled caller cancels its statement: a cancel request (``conn.cancel_safe()``) is sent from a
    helper thread, and the caller waits, shielded and for at most :data:`CANCEL_WAIT_S`, until the worker
    has rolled the connection back and returned it to the pool; then ``Cancelled`` propagates. So a
    cancelled call has either committed or left nothing behind, and its connection comes back healthy.
    A call with a transaction that notices the cancellation before its ``COMMIT`` rolls back instead.
    The cancel request is delivered before the worker may touch the connection again (they share a
    lock), so it can never hit the next statement, or the next caller of that connection.

Errors
    Every ``psycopg.Error`` (``psycopg_pool.PoolTimeout`` included) is raised as
    :class:`~relay.errors.StoreUnavailable` ``from`` it; errors of :mod:`relay.errors` raised by the
    function (refusals) pass through, after the rollback.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import psycopg
import trio
from psycopg import conninfo as pg_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from relay.errors import StoreUnavailable

__all__ = [
    "CANCEL_WAIT_S",
    "CONNECT_TIMEOUT_S",
    "GETCONN_TIMEOUT_S",
    "MIN_SERVER_VERSION",
    "PgConnection",
    "PostgresPool",
    "store_unavailable",
]

T = TypeVar("T")

PgConnection = psycopg.Connection[TupleRow]

#: How long opening a connection may take (seconds; ``connect_timeout``, unless the URL sets one).
CONNECT_TIMEOUT_S = 5
#: How long a worker waits for the pool to replace a broken connection (seconds). Callers never wait
#: here for a connection another caller holds (the capacity limiter is the pool's size), so a wait here
#: means the server is gone or slow to accept: fail soon, so that publishes answer ``unavailable``
#: quickly instead of hanging (and the circuit breaker opens after a few such failures).
GETCONN_TIMEOUT_S = 1.0
#: How long a cancel request may take to reach the server (seconds).
CANCEL_TIMEOUT_S = 5.0
#: How long a cancelled caller waits for its worker to hand the connection back (seconds).
CANCEL_WAIT_S = 10.0
#: The oldest PostgreSQL the store runs on (``server_version_num``).
MIN_SERVER_VERSION = 120000


def store_unavailable(exc: psycopg.Error, what: str) -> StoreUnavailable:
    """``StoreUnavailable`` caused by ``exc``, as ``raise … from exc`` would make it."""
    # libpq's messages run over several lines (a hint on the second): the detail is one line.
    text = " ".join(str(exc).split())
    error = StoreUnavailable(detail=f"{what}: {type(exc).__name__}: {text}".strip())
    error.__cause__ = exc
    error.__suppress_context__ = True
    return error


def _conninfo(url: str) -> str:
    """``url`` with a ``connect_timeout`` unless it has one (libpq waits for TCP's own otherwise)."""
    if "connect_timeout" in pg_conninfo.conninfo_to_dict(url):
        return pg_conninfo.make_conninfo(url)
    return pg_conninfo.make_conninfo(url, connect_timeout=CONNECT_TIMEOUT_S)


def _check_server(conn: PgConnection) -> None:
    if conn.info.server_version < MIN_SERVER_VERSION:
        raise StoreUnavailable(detail=f"PostgreSQL {conn.info.server_version} is too old (12 or newer)")
    encoding = conn.info.parameter_status("server_encoding")
    if encoding != "UTF8":
        # Bodies are stored as text and must come back byte for byte.
        raise StoreUnavailable(detail=f"the database's encoding is {encoding!r}, not UTF8")


def open_pool(url: str, size: int) -> ConnectionPool[PgConnection]:
    """Check the server once (failing fast), then open a pool of ``size`` connections. Blocking."""
    try:
        conninfo = _conninfo(url)
        # A pool retries failed connections in the background for minutes; one direct connection
        # answers at once whether the server is there, and what it is.
        with psycopg.connect(conninfo, autocommit=True) as probe:
            _check_server(probe)
        pool: ConnectionPool[PgConnection] = ConnectionPool(
            conninfo,
            min_size=size,
            max_size=size,
            kwargs={"autocommit": True},
            timeout=GETCONN_TIMEOUT_S,
            open=False,
            name="relay",
        )
    except psycopg.Error as exc:
        raise store_unavailable(exc, "cannot connect to PostgreSQL") from exc
    try:
        pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
    except psycopg.Error as exc:
        pool.close()
        raise store_unavailable(exc, "cannot open the connection pool") from exc
    return pool


class PostgresPool:
    """Pooled connections, used by worker threads one call at a time (see the module docstring)."""

    def __init__(self, pool: ConnectionPool[PgConnection], size: int) -> None:
        self._pool = pool
        self.size = size
        self._limiter = trio.CapacityLimiter(size)
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, size: int) -> PostgresPool:
        if size < 1:
            raise ValueError("a pool holds at least one connection")
        pool = await trio.to_thread.run_sync(open_pool, url, size)
        return cls(pool, size)

    async def run(self, name: str, fn: Callable[[PgConnection], T], *, transaction: bool) -> T:
        """``fn(conn)`` on a pooled connection in a worker thread; its result once it returned.

        With ``transaction``, ``fn`` runs inside ``BEGIN … COMMIT`` (rolled back if it raises);
        without, in autocommit mode (each statement its own transaction). ``name`` says what failed in
        the detail of a :class:`StoreUnavailable`. See the module docstring for cancellation.
        """
        if self._closed:
            raise StoreUnavailable(detail="the store is closed")
        call = _Call(self._pool, name, fn, transaction=transaction)
        try:
            return await trio.to_thread.run_sync(call.run, limiter=self._limiter, abandon_on_cancel=True)
        except trio.Cancelled:
            with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_WAIT_S):
                await call.cancel()
            raise

    def statistics(self) -> trio.CapacityLimiterStatistics:
        return self._limiter.statistics()

    async def aclose(self) -> None:
        """Refuse new calls and close the pool (connections still in use close when given back)."""
        if not self._closed:
            self._closed = True
            await trio.to_thread.run_sync(self._pool.close)


class _Abandoned(Exception):
    """Raised in a worker whose caller was cancelled before the call began; nobody receives it."""


class _Call(Generic[T]):
    """One call in a worker thread, cancellable from the trio thread while it runs."""

    def __init__(
        self,
        pool: ConnectionPool[PgConnection],
        name: str,
        fn: Callable[[PgConnection], T],
        *,
        transaction: bool,
    ) -> None:
        self._pool = pool
        self._name = name
        self._fn = fn
        self._transaction = transaction
        self._token = trio.lowlevel.current_trio_token()
        self._finished = trio.Event()
        # Guards _conn and _cancelled; held by a cancel request while it is on its way to the server.
        self._lock = threading.Lock()
        self._conn: PgConnection | None = None
        self._cancelled = False

    # --- the worker thread -------------------------------------------------------------------------

    def run(self) -> T:
        try:
            with self._lock:
                if self._cancelled:
                    raise _Abandoned()
            try:
                conn = self._pool.getconn()
            except psycopg.Error as exc:
                raise store_unavailable(exc, self._name) from exc
            try:
                with self._lock:
                    if self._cancelled:
                        raise _Abandoned()
                    self._conn = conn
                try:
                    return self._execute(conn)
                finally:
                    with self._lock:  # waits for a cancel request on its way: it must not hit what follows
                        self._conn = None
            finally:
                self._give_back(conn)
        finally:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._finished.set)

    def _execute(self, conn: PgConnection) -> T:
        try:
            if not self._transaction:
                return self._fn(conn)
            with conn.transaction():
                value = self._fn(conn)
                if self._cancelled:  # nobody waits for the answer: roll back rather than commit
                    raise _Abandoned()
            return value
        except psycopg.Error as exc:
            raise store_unavailable(exc, self._name) from exc

    def _give_back(self, conn: PgConnection) -> None:
        if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):  # a broken connection: the pool replaces it
                conn.rollback()
        broken = conn.broken
        with contextlib.suppress(psycopg.Error):  # a closed pool closes it
            self._pool.putconn(conn)
        if broken:
            # The server went away or restarted: the idle connections are likely dead too. Test them
            # now, so that the next callers get fresh ones instead of failing one by one.
            with contextlib.suppress(psycopg.Error):
                self._pool.check()

    # --- the trio thread ---------------------------------------------------------------------------

    async def cancel(self) -> None:
        """Cancel the running statement, if any, and wait for the connection to be given back.

        A worker that has not reached its statement yet sees the flag and gives up by itself.
        """
        with self._lock:
            self._cancelled = True
            running = self._conn is not None
        if running:
            await trio.to_thread.run_sync(self._send_cancel)
            await self._finished.wait()

    def _send_cancel(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(psycopg.Error):  # unreachable server: the statement fails anyway
                    self._conn.cancel_safe(timeout=CANCEL_TIMEOUT_S)
