"""The app's lifespan: migrations and secrets first, a purge every minute, the store closed last."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import attrs
import pytest
import trio
from http_support import open_relay
from trio.testing import MockClock

from relay.app import PURGE_BATCH, PURGE_INTERVAL_S, purge_expired_events
from relay.clock import TrioClock
from relay.config import Settings
from relay.errors import StoreUnavailable
from relay.store.base import ServerSecrets
from relay.store.memory import MemoryStore


@attrs.define(eq=False)
class RecordingStore(MemoryStore):
    """A MemoryStore that records the lifecycle calls and fakes a backlog of expired events."""

    calls: list[str] = attrs.field(factory=list)
    purges: list[tuple[int, int, int]] = attrs.field(factory=list)
    expired_backlog: int = 0
    purge_failures: int = 0
    purge_bugs: int = 0
    housekeeping: list[tuple[int, int]] = attrs.field(factory=list)
    housekeeping_backlog: int = 0
    housekeeping_failures: int = 0
    order: list[str] = attrs.field(factory=list)

    async def migrate(self) -> list[str]:
        self.calls.append("migrate")
        return await super().migrate()

    async def load_or_create_secrets(self) -> ServerSecrets:
        self.calls.append("secrets")
        return await super().load_or_create_secrets()

    async def close(self) -> None:
        self.calls.append("close")
        await super().close()

    async def purge_expired(self, *, now_ms: int, clock_skew_ms: int, batch: int) -> int:
        await trio.lowlevel.checkpoint()
        self.purges.append((now_ms, clock_skew_ms, batch))
        if self.purge_failures:
            self.purge_failures -= 1
            raise StoreUnavailable(detail="database is locked")
        if self.purge_bugs:
            self.purge_bugs -= 1
            raise RuntimeError("a bug in the purge")
        self.order.append("events")
        deleted = min(batch, self.expired_backlog)
        self.expired_backlog -= deleted
        return deleted

    async def purge_housekeeping(self, *, now_ms: int, batch: int) -> int:
        await trio.lowlevel.checkpoint()
        self.housekeeping.append((now_ms, batch))
        if self.housekeeping_failures:
            self.housekeeping_failures -= 1
            raise StoreUnavailable(detail="database is locked")
        self.order.append("housekeeping")
        deleted = min(batch, self.housekeeping_backlog)
        self.housekeeping_backlog -= deleted
        return deleted


async def test_start_up_migrates_then_loads_secrets_and_shutdown_closes_the_store(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    store = RecordingStore()
    async with open_relay(Settings(data_dir=tmp_path), store) as relay:
        assert store.calls == ["migrate", "secrets"]
        assert (await relay.request("GET", "/healthz")).status == 200
    assert store.calls == ["migrate", "secrets", "close"]


async def test_the_app_purges_expired_events_every_minute_in_batches(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    store = RecordingStore(expired_backlog=2 * PURGE_BATCH + 1)
    settings = Settings(data_dir=tmp_path, clock_skew_ms=1234)
    async with open_relay(settings, store) as relay:
        start = relay.clock.now_ms()
        await trio.sleep(PURGE_INTERVAL_S - 1)
        assert store.purges == []
        await trio.sleep(1)
        await trio.testing.wait_all_tasks_blocked()
        first_minute = list(store.purges)
        await trio.sleep(PURGE_INTERVAL_S)
        await trio.testing.wait_all_tasks_blocked()
    at = start + PURGE_INTERVAL_S * 1000
    assert first_minute == [(at, 1234, PURGE_BATCH)] * 3
    assert store.purges[3:] == [(at + PURGE_INTERVAL_S * 1000, 1234, PURGE_BATCH)]
    assert store.expired_backlog == 0


@pytest.mark.parametrize("failure", ["purge_failures", "purge_bugs"])
async def test_a_purge_that_fails_tries_again_next_minute(autojump_clock: MockClock, failure: str) -> None:
    store = RecordingStore(expired_backlog=10)
    setattr(store, failure, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(purge_expired_events, store, TrioClock.starting_at(0), Settings()))
        await trio.sleep(60)
        await trio.testing.wait_all_tasks_blocked()
        assert (len(store.purges), store.expired_backlog) == (1, 10)
        await trio.sleep(60)
        await trio.testing.wait_all_tasks_blocked()
        assert (len(store.purges), store.expired_backlog) == (2, 0)
        nursery.cancel_scope.cancel()


async def test_after_the_events_the_purge_forgets_housekeeping_rows_in_batches_every_minute(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    store = RecordingStore(expired_backlog=PURGE_BATCH + 1, housekeeping_backlog=2 * PURGE_BATCH)
    async with open_relay(Settings(data_dir=tmp_path), store) as relay:
        start = relay.clock.now_ms()
        await trio.sleep(PURGE_INTERVAL_S)
        await trio.testing.wait_all_tasks_blocked()
        first_minute = (list(store.order), list(store.housekeeping))
        await trio.sleep(PURGE_INTERVAL_S)
        await trio.testing.wait_all_tasks_blocked()
    at = start + PURGE_INTERVAL_S * 1000
    # a whole batch means "call again": 2 batches of events, then 3 calls to drain 2 whole batches
    assert first_minute == (["events"] * 2 + ["housekeeping"] * 3, [(at, PURGE_BATCH)] * 3)
    assert store.housekeeping[3:] == [(at + PURGE_INTERVAL_S * 1000, PURGE_BATCH)]
    assert store.housekeeping_backlog == 0


async def test_a_failing_event_purge_does_not_keep_the_housekeeping_from_running(
    autojump_clock: MockClock,
) -> None:
    store = RecordingStore(purge_failures=1, housekeeping_backlog=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(purge_expired_events, store, TrioClock.starting_at(0), Settings()))
        await trio.sleep(60)
        await trio.testing.wait_all_tasks_blocked()
        assert (len(store.purges), store.housekeeping, store.housekeeping_backlog) == (
            1,
            [(60_000, PURGE_BATCH)],
            0,
        )
        nursery.cancel_scope.cancel()


async def test_a_failing_housekeeping_is_tried_again_next_minute(autojump_clock: MockClock) -> None:
    store = RecordingStore(housekeeping_failures=1, housekeeping_backlog=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(purge_expired_events, store, TrioClock.starting_at(0), Settings()))
        await trio.sleep(60)
        await trio.testing.wait_all_tasks_blocked()
        assert (len(store.housekeeping), store.housekeeping_backlog) == (1, 5)
        await trio.sleep(60)
        await trio.testing.wait_all_tasks_blocked()
        assert (len(store.housekeeping), store.housekeeping_backlog) == (2, 0)
        nursery.cancel_scope.cancel()
