"""The SQLite store's one writer thread, fed by a bounded queue, committing writes in groups.

Group commit
    The thread takes the first waiting write request, then every other one already waiting (up to
    ``max_group``), and runs them in ONE ``BEGIN IMMEDIATE … COMMIT``: one fsync of the WAL for the
    whole group, which is what makes many small appends cheap. Each request runs inside its own
    ``SAVEPOINT``, so a refused request (a :class:`~relay.errors.RelayError` such as ``SeqConflict``)
    or a failed one is rolled back alone and the others still commit. Requests that arrive while a
    group is running form the next group. Every caller is answered only after the COMMIT of its group
    returned (durable under ``synchronous=FULL``); if the BEGIN or the COMMIT fails, every request of
    the group is answered :class:`~relay.errors.StoreUnavailable` and nothing of the group is stored.

Exclusive requests (migrations) run alone, between groups, and manage their own transactions.

Backpressure
    At most :data:`WRITE_QUEUE_MAX_REQUESTS` requests are queued or running; a caller beyond that
    waits (cancellably) for room. Room is given back when the writer has finished a request, not when
    its caller stops waiting, so abandoned requests still count.

Cancellation
    A caller cancelled before its request is queued leaves nothing behind. A caller cancelled after
    it was queued stops waiting at once; the request is then dropped if the writer has not started
    it yet, or else runs to the end of its group and commits or rolls back as a whole with it. Either
    way nothing is half-written, and the caller cannot know which happened (a publisher retries with the
    same event id, which is what PROTOCOL.md §4.2 asks of a publish without an ack). The thread never
    sees trio's cancellation and survives it, and any exception of a request.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

from relay.errors import StoreUnavailable

__all__ = ["MAX_GROUP_REQUESTS", "WRITE_QUEUE_MAX_REQUESTS", "SqliteWriter", "store_unavailable"]

T = TypeVar("T")

#: Write requests that may be queued for, or running in, the writer thread at once (requests).
WRITE_QUEUE_MAX_REQUESTS = 1024
#: Write requests committed by one transaction at most (requests): bounds how long a group holds the
#: write lock and how long its first caller waits for the last one's work.
MAX_GROUP_REQUESTS = 256


def store_unavailable(exc: sqlite3.Error, what: str) -> StoreUnavailable:
    """``StoreUnavailable`` caused by ``exc``, as ``raise … from exc`` would make it."""
    error = StoreUnavailable(detail=f"{what}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    error.__suppress_context__ = True
    return error


class _Request(Generic[T]):
    """One write request and, once the writer is done with it, its result or its error."""

    __slots__ = ("abandoned", "done", "error", "exclusive", "fn", "name", "value")

    def __init__(self, name: str, fn: Callable[[sqlite3.Connection], T], *, exclusive: bool) -> None:
        self.name = name
        self.fn = fn
        self.exclusive = exclusive
        self.done = trio.Event()
        #: Set by the caller's task when it stops waiting; read by the writer thread (a bool under the GIL).
        self.abandoned = False
        self.value: T | None = None
        self.error: BaseException | None = None


#: Put on the queue by :meth:`SqliteWriter.aclose`: everything queued before it is finished first.
_STOP = object()


class SqliteWriter:
    """Owns the write connection and the thread that uses it. Create, then :meth:`start`, in trio."""

    def __init__(self, conn: sqlite3.Connection, *, max_group: int = MAX_GROUP_REQUESTS) -> None:
        if max_group < 1:
            raise ValueError("max_group is at least 1")
        self._conn = conn
        self._max_group = max_group
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._room = trio.Semaphore(WRITE_QUEUE_MAX_REQUESTS)
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._run, name="relay-sqlite-writer", daemon=True)
        self._closing = False
        #: Set by the thread if it ever ends other than by ``_STOP`` (a bug): the store is then unusable.
        self._dead = False
        self._carry: object | None = None
        # Counters: written by the writer thread, read anywhere (ints under the GIL).
        self.transactions = 0
        self.requests = 0
        #: Requests submitted and not yet answered; only touched in the trio thread.
        self.queue_depth = 0

    def start(self) -> None:
        self._thread.start()

    # --- the trio side -----------------------------------------------------------------------------

    async def submit(self, name: str, fn: Callable[[sqlite3.Connection], T], *, exclusive: bool = False) -> T:
        """Run ``fn(conn)`` in the writer thread and return its result once committed.

        ``fn`` runs inside a savepoint of a group transaction (or alone, managing its own transactions,
        when ``exclusive``); an exception it raises is raised here after its savepoint was rolled back,
        a :class:`sqlite3.Error` as :class:`StoreUnavailable`. See the module docstring for cancellation.
        """
        self._check_open()
        await self._room.acquire()
        try:
            self._check_open()  # again: close() may have begun while we waited for room
        except StoreUnavailable:
            self._room.release()
            raise
        request = _Request(name, fn, exclusive=exclusive)
        self.queue_depth += 1
        self._queue.put(request)
        try:
            await request.done.wait()
        except BaseException:
            request.abandoned = True
            raise
        if request.error is not None:
            raise request.error
        return request.value  # type: ignore[return-value]  # set whenever error is None

    def _check_open(self) -> None:
        if self._closing or self._dead:
            raise StoreUnavailable(detail="the store is closed")

    def _deliver(self, requests: list[_Request[object]]) -> None:
        # Runs in the trio thread (run_sync_soon): wake the callers, give the room back.
        for request in requests:
            request.done.set()
            self.queue_depth -= 1
            self._room.release()

    async def aclose(self) -> None:
        """Finish every request already queued, then stop the thread and close the connection."""
        if not self._closing:
            self._closing = True
            self._queue.put(_STOP)
        await trio.to_thread.run_sync(self._thread.join)

    # --- the thread --------------------------------------------------------------------------------

    def _next(self) -> object:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        return self._queue.get()

    def _run(self) -> None:
        stopped = False
        try:
            while True:
                item = self._next()
                if item is _STOP:
                    stopped = True
                    return
                assert isinstance(item, _Request)
                if item.exclusive:
                    self._run_exclusive(item)
                    continue
                group: list[_Request[object]] = [item]
                while len(group) < self._max_group:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP or (isinstance(more, _Request) and more.exclusive):
                        self._carry = more
                        break
                    assert isinstance(more, _Request)
                    group.append(more)
                self._run_group(group)
        finally:
            if not stopped:
                self._fail_everything()
            self._conn.close()

    def _fail_everything(self) -> None:
        # Only reached through a bug: answer every waiting caller rather than leave it hanging.
        self._dead = True
        self._rollback_quietly()
        pending: list[_Request[object]] = []
        while True:
            try:
                item = self._carry if self._carry is not None else self._queue.get_nowait()
            except queue.Empty:
                break
            self._carry = None
            if isinstance(item, _Request):
                item.error = StoreUnavailable(detail="the writer thread stopped")
                pending.append(item)
        self._answer(pending)

    def _answer(self, requests: list[_Request[object]]) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # nobody is left to answer
            self._token.run_sync_soon(self._deliver, requests)

    def _run_exclusive(self, request: _Request[object]) -> None:
        if not request.abandoned:
            try:
                request.value = request.fn(self._conn)
            except sqlite3.Error as exc:
                request.error = store_unavailable(exc, request.name)
            except Exception as exc:
                request.error = exc
            finally:
                self._rollback_quietly()
                self.transactions += 1
                self.requests += 1
        self._answer([request])

    def _run_group(self, group: list[_Request[object]]) -> None:
        live = [r for r in group if not r.abandoned]
        if live:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                for request in live:
                    self._run_one(request)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback_quietly()
                for request in live:
                    request.error = store_unavailable(exc, request.name)
            self.transactions += 1
            self.requests += len(live)
        self._answer(group)

    def _run_one(self, request: _Request[object]) -> None:
        """One request in its savepoint. A sqlite3 error escaping here dooms the whole group."""
        conn = self._conn
        conn.execute("SAVEPOINT request")
        try:
            request.value = request.fn(conn)
        except Exception as exc:
            request.error = store_unavailable(exc, request.name) if isinstance(exc, sqlite3.Error) else exc
            conn.execute("ROLLBACK TO request")
        conn.execute("RELEASE request")

    def _rollback_quietly(self) -> None:
        if self._conn.in_transaction:
            # It may fail when SQLite already rolled back by itself (e.g. after SQLITE_FULL).
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
