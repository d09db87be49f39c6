"""The PostgreSQL store's write path: appends committed in groups, every other write in its own transaction.

Group commit
    Appends go into a bounded queue (:data:`WRITE_QUEUE_MAX_REQUESTS`). Each of ``writers`` writer tasks
    takes the first waiting append, then every other one already waiting (up to ``max_group``), and
    commits them in ONE transaction on one pooled connection (:mod:`relay.store.postgres_pool`): one
    ``BEGIN``, one ``COMMIT`` and one WAL flush for the whole group, and for each of its users a handful
    of statements whatever the number of appends (:mod:`relay.store.postgres_append_txn`). Appends that
    arrive while a group runs form the next one. Inside a group the users come in id order, and each
    user's row is locked (:func:`~relay.store.postgres_txn.lock_user_txn`) before the rows of its
    streams, in name order: the lock order of every writer on every node, so two groups (of this node
    or another) may wait for each other, but never in a circle. Each append succeeds or fails alone:
    a refusal (a :class:`~relay.errors.RelayError` such as ``SeqConflict``) is decided before anything
    is written, and a write that fails is rolled back to its savepoint. Every caller is answered only
    after the ``COMMIT`` of its group returned; if a statement outside the savepoints, or the
    ``COMMIT``, fails, every append of the group is answered :class:`~relay.errors.StoreUnavailable`
    and nothing of the group is stored.

Other writes (enrolment, revocation, deletion, nonces, purges...) are rarer and lock more than one
    user's rows in their own order, so each runs alone in its own transaction, at once, on a pooled
    connection (:meth:`PostgresWriter.run`); a cancelled caller cancels it (see the pool).

Writer tasks
    They are trio system tasks (the store is opened without a nursery, like the SQLite store's writer
    thread): :meth:`PostgresWriter.start` spawns them, :meth:`PostgresWriter.aclose` ends them after
    the queue is drained. They never raise: any failure becomes the answer of the appends it concerns.

Cancellation of an append
    A caller cancelled before its append is queued leaves nothing behind. A caller cancelled after it
    was queued stops waiting at once; the append is then dropped if no writer has taken it yet, or
    else it commits or rolls back as a whole with its group (cancelling the group's statement would
    fail the others). Either way nothing is half-written, and the caller cannot know which happened (a
    publisher retries with the same event id, as PROTOCOL.md §4.2 asks of a publish without an ack).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from relay.errors import StoreUnavailable
from relay.store.base import Appended, AppendRequest
from relay.store.postgres_append_txn import append_user_txn
from relay.store.postgres_pool import PgConnection, PostgresPool

__all__ = ["MAX_GROUP_REQUESTS", "WRITERS", "WRITE_QUEUE_MAX_REQUESTS", "PostgresWriter"]

T = TypeVar("T")

#: Appends that may wait in the queue for a writer (requests); beyond, callers wait for room.
WRITE_QUEUE_MAX_REQUESTS = 1024
#: Appends committed by one transaction at most (requests): bounds how long a group holds its users'
#: locks and how long its first caller waits for the last one's work. Measured (tests/bench/
#: bench_store_postgres.py, docs/architecture.md): larger groups bring nothing more, and 64 keeps the
#: one-at-a-time fallback within the subtransaction ids PostgreSQL caches per backend (64).
MAX_GROUP_REQUESTS = 64
#: Writer tasks, hence groups committing at once, each on its own connection (tasks). One: groups of
#: one user's appends would only wait for each other's locks, and split in two they cost two WAL
#: flushes instead of one (measured); nodes already commit side by side.
WRITERS = 1


class _Append:
    """One queued append and, once its group is done, its result or its error."""

    __slots__ = ("abandoned", "done", "error", "request", "value")

    def __init__(self, request: AppendRequest) -> None:
        self.request = request
        self.done = trio.Event()
        #: Set by the caller's task when it stops waiting; read by the writer task and its thread.
        self.abandoned = False
        self.value: Appended | None = None
        self.error: BaseException | None = None


def _unavailable(detail: str, cause: BaseException | None) -> StoreUnavailable:
    # One instance per caller: an exception raised in several tasks would share its traceback.
    error = StoreUnavailable(detail=detail)
    error.__cause__ = cause
    error.__suppress_context__ = True
    return error


def append_group_txn(conn: PgConnection, group: Sequence[_Append]) -> None:
    """Run the group's appends in the open transaction, each answer set on its :class:`_Append`.

    Users in id order, and each user's appends by stream (arrival order within a stream): the lock
    order of every writer. A driver error escaping here (outside the savepoints) dooms the whole group.
    """
    ordered = sorted(group, key=lambda queued: (queued.request.user_id, queued.request.stream))
    for user_id, appends in itertools.groupby(ordered, key=lambda queued: queued.request.user_id):
        mine = list(appends)
        outcomes = append_user_txn(conn, user_id, [queued.request for queued in mine])
        for queued, outcome in zip(mine, outcomes, strict=True):
            if isinstance(outcome, Appended):
                queued.value = outcome
            else:
                queued.error = outcome


class PostgresWriter:
    """The write path of one store: the append queue, its writer tasks, and counters. Start it in trio."""

    def __init__(
        self, pool: PostgresPool, *, writers: int = WRITERS, max_group: int = MAX_GROUP_REQUESTS
    ) -> None:
        if max_group < 1:
            raise ValueError("max_group is at least 1")
        if not 1 <= writers <= pool.size:
            raise ValueError("writers is at least 1 and at most the pool's size")
        self._pool = pool
        self._writers = writers
        self._max_group = max_group
        self._send, self._receive = trio.open_memory_channel[_Append](WRITE_QUEUE_MAX_REQUESTS)
        self._running = 0
        self._stopped = trio.Event()
        self._closing = False
        #: Write transactions run, and the write requests they carried (statistics()).
        self.transactions = 0
        self.requests = 0
        #: Write requests submitted and not yet answered.
        self.queue_depth = 0

    def start(self) -> None:
        for n in range(self._writers):
            self._running += 1
            trio.lowlevel.spawn_system_task(self._write_groups, name=f"relay-postgres-writer-{n}")

    # --- callers -----------------------------------------------------------------------------------

    async def append(self, request: AppendRequest) -> Appended:
        """Queue the append and return its answer once its group committed (see the module docstring)."""
        self._check_open()
        queued = _Append(request)
        self.queue_depth += 1
        try:
            await self._send.send(queued)
        except BaseException as exc:
            self.queue_depth -= 1
            if isinstance(exc, trio.ClosedResourceError):
                raise StoreUnavailable(detail="the store is closed") from None
            raise
        try:
            await queued.done.wait()
        except BaseException:
            queued.abandoned = True
            raise
        if queued.error is not None:
            raise queued.error
        assert queued.value is not None  # set whenever error is None
        return queued.value

    async def run(self, name: str, fn: Callable[[PgConnection], T]) -> T:
        """Run ``fn(conn)`` in a transaction of its own and return its result once committed."""
        self._check_open()
        self.queue_depth += 1
        try:
            return await self._pool.run(name, fn, transaction=True)
        finally:
            self.queue_depth -= 1
            self.transactions += 1
            self.requests += 1

    def _check_open(self) -> None:
        if self._closing:
            raise StoreUnavailable(detail="the store is closed")

    async def aclose(self) -> None:
        """Answer every append already queued, then end the writer tasks."""
        if not self._closing:
            self._closing = True
            await self._send.aclose()
        if self._running:
            await self._stopped.wait()

    # --- the writer tasks --------------------------------------------------------------------------

    async def _write_groups(self) -> None:
        try:
            async for first in self._receive:
                group = [first]
                while len(group) < self._max_group:
                    try:
                        group.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self._commit(group)
        finally:
            self._running -= 1
            if not self._running:
                self._stopped.set()

    async def _commit(self, group: list[_Append]) -> None:
        live = [queued for queued in group if not queued.abandoned]
        try:
            if live:
                await self._pool.run(
                    "append", functools.partial(append_group_txn, group=live), transaction=True
                )
        except trio.Cancelled:  # the trio run is ending with the store still open
            for queued in live:
                queued.error = _unavailable("the store was not closed before the end of the run", None)
            raise
        except Exception as exc:  # StoreUnavailable, or a bug: either fails this group only
            if isinstance(exc, StoreUnavailable):
                detail, cause = exc.detail or "append", exc.__cause__ or exc
            else:
                detail, cause = f"append: {exc!r}", exc
            for queued in live:
                queued.value = None
                queued.error = _unavailable(detail, cause)
        finally:
            if live:
                self.transactions += 1
                self.requests += len(live)
            for queued in group:
                queued.done.set()
                self.queue_depth -= 1
