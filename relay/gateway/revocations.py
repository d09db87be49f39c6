"""The revocation watcher: revocations made anywhere reach this node's live sessions (PROTOCOL.md §5,
§7 item 6; ARCHITECTURE.md "Bus": "Revocation never depends on the bus alone").

One watcher per node, run by :meth:`relay.gateway.Gateway.run`. The bus ends a revoked device's
sessions at once when the revocation was announced on it; the watcher is what makes a revocation
reach them when it was not (``relay admin device revoke`` in another process, a bus message lost, a
node that was not subscribed yet): within :data:`REVOCATION_POLL_S` of its commit, plus one read.

- **At start** it reads :meth:`~relay.store.base.Store.latest_revocation` once and takes it as its
  position: older entries are not replayed (they were applied when they were made, and a device
  revoked before then fails its handshake anyway).
- **Every** :data:`REVOCATION_POLL_S` it reads ``latest_revocation()`` again (one cheap read); when it
  moved, it reads every entry after its position (:meth:`~relay.store.base.Store.revocations_since`,
  pages of :data:`REVOCATION_PAGE`) and has the :class:`~relay.gateway.revocation_index.RevocationIndex`
  close the sessions they name: ``device_revoked`` (1008) for a device's entry, ``account_deleted``
  (1008) for a user's. Matching is one dictionary lookup per entry; no session is hashed per poll.
- **Falling behind.** Ids increase in commit order and are never reused, so the entries after the
  position are exactly the ids after it. When the ids read skip a value, entries were pruned (kept
  :data:`~relay.store.base.REVOCATION_LOG_RETENTION_MS`) before this node read them: after applying
  what is left, it re-checks every live session with ``lookup_device`` (:data:`RECHECK_WORKERS` at a
  time) and closes those revoked or deleted. A store whose ids can skip values without pruning only
  costs a needless re-check, never a missed revocation. The same re-check follows a log that went
  back (a restored database) and a position that could only be taken late (the store was down at start).
- **A store that does not answer** (``StoreUnavailable``, or no answer within
  :data:`STORE_CALL_TIMEOUT_S`) is logged once per outage, as a warning, and polled again; the
  position stays, so what was logged meanwhile is applied once the store answers. Any other failure is
  logged once per streak and polled again too: the watcher never ends the gateway. ``Cancelled`` goes
  through.

What a session does between its device lookup and its registration is covered by the index's
generation (see :mod:`relay.gateway.revocation_index`, "The handshake race").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterator
from typing import TypeVar

import attrs
import trio

from relay.clock import Clock
from relay.errors import StoreUnavailable
from relay.gateway.revocation_index import Revocable, RevocationIndex, revocation_error
from relay.store.base import RevocationEntry, Store

__all__ = [
    "RECHECK_WORKERS",
    "REVOCATION_PAGE",
    "REVOCATION_POLL_S",
    "STORE_CALL_TIMEOUT_S",
    "RevocationWatcher",
]

log = logging.getLogger("relay.gateway")

#: How often the watcher reads the log's highest id, in seconds (the design asks for at most 0.25).
REVOCATION_POLL_S = 0.2
#: Log entries read per ``revocations_since`` call.
REVOCATION_PAGE = 1000
#: Device lookups in flight at once during a full re-check of the live sessions.
RECHECK_WORKERS = 8
#: How long one store call of the watcher may take before the store counts as unavailable (seconds).
STORE_CALL_TIMEOUT_S = 5.0

T = TypeVar("T")


@attrs.define(eq=False)
class RevocationWatcher:
    """Polls the store's revocation log and closes the live sessions of ``index`` it names."""

    store: Store
    clock: Clock
    index: RevocationIndex
    #: The id of the last entry applied (or the log's head at start); ``None`` until first read.
    _position: int | None = attrs.field(default=None, init=False)
    _started: bool = attrs.field(default=False, init=False)
    _recheck_needed: bool = attrs.field(default=False, init=False)
    #: trio time the current outage began (``None``: the last round succeeded).
    _outage_since: float | None = attrs.field(default=None, init=False)
    _failing: bool = attrs.field(default=False, init=False)

    @property
    def position(self) -> int | None:
        """The id of the last entry applied, or the log's head when the watcher started."""
        return self._position

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take the position, report started, then poll every :data:`REVOCATION_POLL_S` until cancelled.

        Reports started even when the store did not answer the first read (then it keeps trying).
        Rounds never overlap; one that takes longer than a period is followed by the next at once.
        """
        await self._round()
        self._started = True
        task_status.started()
        deadline = trio.current_time()
        while True:
            deadline = max(deadline + REVOCATION_POLL_S, trio.current_time())
            await trio.sleep_until(deadline)
            await self._round()

    # --- one round ------------------------------------------------------------------------------------

    async def _round(self) -> None:
        try:
            await self._poll()
        except* (StoreUnavailable, trio.TooSlowError) as group:
            self._store_down(group)
        except* Exception as group:
            if not self._failing:
                log.error("the revocation watcher failed; polling again", exc_info=group)
            self._failing = True
        else:
            self._store_up()

    async def _poll(self) -> None:
        latest = await self._bounded(self.store.latest_revocation())
        if self._position is None:
            # A position taken after start (the store was down then): sessions that looked their
            # device up meanwhile may have missed an entry before it, so they are checked once.
            self._position = latest
            self._recheck_needed = self._recheck_needed or self._started
        elif latest < self._position:
            log.warning(
                "the revocation log went back from %d to %d (a restored database?): "
                "re-checking every live session",
                self._position,
                latest,
            )
            self._position = latest
            self._recheck_needed = True
        elif latest > self._position:
            await self._read_after(self._position)
        if self._recheck_needed:
            await self._recheck()

    async def _read_after(self, position: int) -> None:
        """Apply every entry after ``position``, page by page, moving the position as they are applied."""
        while True:
            entries = await self._bounded(self.store.revocations_since(position, limit=REVOCATION_PAGE))
            if not entries:
                return
            if entries[-1].id - position != len(entries):
                self._fell_behind(position, entries)
            self.index.apply(entries)
            position = self._position = entries[-1].id
            if len(entries) < REVOCATION_PAGE:
                return

    def _fell_behind(self, position: int, entries: list[RevocationEntry]) -> None:
        if not self._recheck_needed:
            log.warning(
                "the revocation log ids read after %d skip values (%d entries up to %d): entries were "
                "pruned before this node read them; re-checking every live session",
                position,
                len(entries),
                entries[-1].id,
            )
        self._recheck_needed = True

    async def _recheck(self) -> None:
        """Look up the device of every live session and close those revoked or deleted."""
        sessions = self.index.begin_recheck()
        now = self.clock.now_ms()
        queue = iter(sessions)
        closed: list[Revocable] = []
        async with trio.open_nursery() as nursery:
            for _ in range(min(RECHECK_WORKERS, len(sessions))):
                nursery.start_soon(self._recheck_from, queue, now, closed)
        self._recheck_needed = False
        log.info("re-checked %d live sessions against the store: %d closed", len(sessions), len(closed))

    async def _recheck_from(self, queue: Iterator[Revocable], now: int, closed: list[Revocable]) -> None:
        """One re-check worker: takes sessions from the shared ``queue`` until it is empty."""
        for session in queue:
            found = await self._bounded(self.store.lookup_device(session.device_id, now_ms=now))
            error = revocation_error(found, session.user_id)
            if error is not None:
                session.revoke(error)
                closed.append(session)

    async def _bounded(self, call: Awaitable[T]) -> T:
        """Await one store call; ``TooSlowError`` past :data:`STORE_CALL_TIMEOUT_S` (counted as down)."""
        with trio.fail_after(STORE_CALL_TIMEOUT_S):
            return await call

    # --- logging, once per outage ---------------------------------------------------------------------

    def _store_down(self, group: ExceptionGroup[StoreUnavailable | trio.TooSlowError]) -> None:
        if self._outage_since is None:
            self._outage_since = trio.current_time()
            log.warning(
                "the revocation log cannot be read (%s); polling on: revocations made elsewhere reach "
                "this node's sessions once it can",
                _describe(group),
            )

    def _store_up(self) -> None:
        if self._outage_since is not None:
            log.info(
                "the revocation log can be read again, after %.1f s",
                trio.current_time() - self._outage_since,
            )
        self._outage_since = None
        self._failing = False


def _describe(group: BaseExceptionGroup[BaseException]) -> str:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    if isinstance(first, trio.TooSlowError):
        return f"no answer within {STORE_CALL_TIMEOUT_S:g} s"
    return str(first)
