"""The purge of expired rows: events past their expiry, then housekeeping (nonces, memories of deleted
devices, old revocation log entries, long-expired tokens), every minute, in short transactions."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from relay.clock import Clock
from relay.config import Settings
from relay.errors import StoreUnavailable
from relay.store.base import Store

__all__ = ["PURGE_BATCH", "PURGE_INTERVAL_S", "purge_expired_events"]

log = logging.getLogger("relay")

#: How often expired events are purged, in seconds of trio's clock.
PURGE_INTERVAL_S = 60
#: Events deleted per purge transaction: short transactions, so publishes never wait long behind one.
PURGE_BATCH = 1000


async def purge_expired_events(
    store: Store,
    clock: Clock,
    settings: Settings,
    *,
    interval_s: float = PURGE_INTERVAL_S,
    batch: int = PURGE_BATCH,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every ``interval_s``, delete expired events, then housekeeping rows, in transactions of ``batch``.

    Housekeeping (:meth:`Store.purge_housekeeping`) forgets expired nonces, expired memories of deleted
    devices, old revocation log entries and long-expired tokens. Each is repeated while a transaction
    deleted a whole ``batch``. Runs until cancelled. A store that is unavailable (or any other failure,
    logged) is tried again at the next interval, and a failing event purge does not keep the
    housekeeping from running; heads never decrease (the store keeps them).
    """
    task_status.started()
    while True:
        await trio.sleep(interval_s)
        events = await _purge_in_batches(
            "expired events",
            lambda: store.purge_expired(
                now_ms=clock.now_ms(), clock_skew_ms=settings.clock_skew_ms, batch=batch
            ),
            batch=batch,
            interval_s=interval_s,
        )
        if events:
            log.info("purged %d expired events", events)
        rows = await _purge_in_batches(
            "housekeeping rows",
            lambda: store.purge_housekeeping(now_ms=clock.now_ms(), batch=batch),
            batch=batch,
            interval_s=interval_s,
        )
        if rows:
            log.debug("forgot %d housekeeping rows (nonces, deleted devices, log entries, tokens)", rows)


async def _purge_in_batches(
    what: str, purge: Callable[[], Awaitable[int]], *, batch: int, interval_s: float
) -> int:
    """Call ``purge`` while it deletes a whole ``batch``; how many rows went. Failures are logged only."""
    total = 0
    try:
        while True:
            deleted = await purge()
            total += deleted
            if deleted < batch:
                break
            await trio.lowlevel.checkpoint()  # let other work in between batches
    except StoreUnavailable as exc:
        log.warning("purge of %s postponed: %s", what, exc.detail or exc.message)
    except Exception:
        # A bug here must not stop the server: expired events are never served anyway (every read
        # filters them), expired nonces and memories are never trusted; they only take room until a
        # later purge succeeds.
        log.exception("purge of %s failed; trying again in %s s", what, interval_s)
    return total
