"""Revocation and deletion reaching live sessions (PROTOCOL.md §5, §7 item 6), whoever made them.

A revocation announced on the bus closes at once; one made only in the store (as ``relay admin`` in
another process, or another node, would) reaches the sessions through the node's revocation watcher
within ``REVOCATION_POLL_S``. Time is virtual and the ``MemoryStore`` takes none, so the bounds below
are exact.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
import trio
from gateway_harness import Client, Closed, Device, FaultyStore, Relay, RelayFactory
from trio.testing import MockClock

from relay.errors import StoreUnavailable
from relay.gateway.revocations import REVOCATION_PAGE, REVOCATION_POLL_S
from relay.store.base import REVOCATION_LOG_RETENTION_MS, Appended, AppendRequest, DeviceLookup
from relay.store.memory import MemoryStore

REMEMBER_MS = 86_400_000


async def start_watcher(relay: Relay) -> float:
    """Start the gateway's background work (heads ticker, revocation watcher); the trio time it started."""
    await relay.nursery.start(relay.gateway.run)
    return trio.current_time()


async def closed_after(client: Client) -> tuple[str, int, float]:
    """The code of the ``error`` before the close, the close code, and how long they took to come."""
    start = trio.current_time()
    error, code, _ = await client.expect_close(ignore=["presence", "device"])
    return error["code"], code, trio.current_time() - start


async def assert_open(client: Client) -> None:
    """The session still answers, and sent nothing but presence and device notices meanwhile."""
    unexpected = [m for m in client.pending() if '"presence"' not in m.get("text", "")]
    assert unexpected == []
    await client.send({"type": "ping", "ref": "alive"})
    assert (await client.expect("pong", ignore=["presence", "device"]))["ref"] == "alive"


def test_the_poll_interval_is_within_the_design_bound() -> None:
    assert 0 < REVOCATION_POLL_S <= 0.25


async def test_a_revocation_made_only_in_the_store_closes_the_device_within_the_poll_interval(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user = await relay.user()
    laptop = await relay.device(user)
    laptop_client = await relay.connect(laptop)
    started = await start_watcher(relay)

    # Revocations at several phases of the watcher's polling: each closes within one interval.
    for tick, phase in enumerate((0.001, 0.05, 0.1, 0.15, 0.199), start=1):
        phone = await relay.device(user)
        phone_client = await relay.connect(phone)
        await trio.sleep_until(started + tick * REVOCATION_POLL_S + phase)
        await relay.memory.revoke_device(phone.device_id, now_ms=relay.now())
        code, close, elapsed = await closed_after(phone_client)
        assert (code, close) == ("device_revoked", 1008)
        assert 0 < elapsed <= REVOCATION_POLL_S
    await assert_open(laptop_client)


async def test_a_user_deleted_only_in_the_store_closes_every_session_of_the_user_and_no_other(
    relay: Relay, autojump_clock: MockClock
) -> None:
    doomed, other = await relay.user(), await relay.user()
    clients = [await relay.connect(await relay.device(doomed)) for _ in range(3)]
    bystander = await relay.connect(await relay.device(other))
    await start_watcher(relay)
    await trio.sleep(1.234)

    await relay.memory.delete_user(doomed, now_ms=relay.now(), remember_ms=REMEMBER_MS)
    for client in clients:
        code, close, elapsed = await closed_after(client)
        assert (code, close) == ("account_deleted", 1008)
        assert elapsed <= REVOCATION_POLL_S
    await trio.sleep(1)
    await assert_open(bystander)


async def test_a_revocation_or_deletion_announced_on_the_bus_closes_at_once(
    relay: Relay, autojump_clock: MockClock
) -> None:
    await start_watcher(relay)
    user = await relay.user()
    phone = await relay.device(user)
    laptop_client = await relay.connect(await relay.device(user))
    phone_client = await relay.connect(phone)
    await trio.sleep(0.05)

    record = await relay.memory.revoke_device(phone.device_id, now_ms=relay.now())
    await relay.bus.announce_device(user, "revoked", phone.device_id, record.name, relay.now())
    assert await closed_after(phone_client) == ("device_revoked", 1008, 0)

    await relay.memory.delete_user(user, now_ms=relay.now(), remember_ms=REMEMBER_MS)
    await relay.bus.announce_user_deleted(user)
    assert await closed_after(laptop_client) == ("account_deleted", 1008, 0)


async def test_log_entries_older_than_the_watchers_start_are_not_applied(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user = await relay.user()
    early, late = await relay.device(user), await relay.device(user)
    early_client, late_client = await relay.connect(early), await relay.connect(late)
    # Revoked while no watcher ran (and nothing on the bus): its entry predates the watcher.
    await relay.memory.revoke_device(early.device_id, now_ms=relay.now())

    await start_watcher(relay)
    await trio.sleep(1)
    await assert_open(early_client)
    await relay.memory.revoke_device(late.device_id, now_ms=relay.now())
    code, close, elapsed = await closed_after(late_client)
    assert (code, close) == ("device_revoked", 1008)
    assert elapsed <= REVOCATION_POLL_S
    await assert_open(early_client)


async def test_a_store_outage_while_polling_is_logged_once_and_the_revocation_applies_once_it_is_back(
    make_relay: RelayFactory, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.gateway")
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)
    device = await relay.device(await relay.user())
    client = await relay.connect(device)
    await start_watcher(relay)

    store.failures["latest_revocation"] = StoreUnavailable(detail="the database is gone")
    await memory.revoke_device(device.device_id, now_ms=relay.now())
    await trio.sleep(30)
    assert store.calls["latest_revocation"] > 100  # polled on all along
    outage = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(outage) == 1
    assert outage[0].levelno == logging.WARNING
    assert "the database is gone" in outage[0].getMessage()
    assert client.pending() == []

    del store.failures["latest_revocation"]
    code, close, elapsed = await closed_after(client)
    assert (code, close) == ("device_revoked", 1008)
    assert elapsed <= REVOCATION_POLL_S
    assert any("can be read again" in r.getMessage() for r in caplog.records)


async def test_an_unexpected_failure_of_the_watcher_is_logged_once_and_polling_goes_on(
    make_relay: RelayFactory, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)
    device = await relay.device(await relay.user())
    client = await relay.connect(device)
    await start_watcher(relay)

    store.failures["revocations_since"] = RuntimeError("a bug")
    await memory.revoke_device(device.device_id, now_ms=relay.now())
    await trio.sleep(5)
    failures = [r for r in caplog.records if "watcher failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR
    assert store.calls["revocations_since"] > 20

    del store.failures["revocations_since"]
    code, _, elapsed = await closed_after(client)
    assert code == "device_revoked"
    assert elapsed <= REVOCATION_POLL_S


async def test_a_watcher_that_could_not_read_the_log_at_start_rechecks_the_sessions_once_it_can(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)
    store.failures["latest_revocation"] = StoreUnavailable()
    await start_watcher(relay)  # reports started all the same
    device = await relay.device(await relay.user())
    client = await relay.connect(device)
    await memory.revoke_device(device.device_id, now_ms=relay.now())
    await trio.sleep(2)
    assert client.pending() == []

    lookups = store.calls["lookup_device"]
    del store.failures["latest_revocation"]
    code, _, elapsed = await closed_after(client)
    assert code == "device_revoked"
    assert elapsed <= REVOCATION_POLL_S
    assert store.calls["lookup_device"] == lookups + 1  # the re-check of the one live session


async def test_a_log_pruned_past_the_watchers_position_makes_it_recheck_every_live_session(
    make_relay: RelayFactory, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)
    first, second, bystander = await relay.user(), await relay.user(), await relay.user()
    a, b = await relay.device(first), await relay.device(first)
    c, d = await relay.device(second), await relay.device(bystander)
    clients = {device.device_id: await relay.connect(device) for device in (a, b, c, d)}
    await start_watcher(relay)
    await trio.sleep(0.05)  # between two polls: what follows happens before the next one

    now = relay.now()
    await memory.revoke_device(a.device_id, now_ms=now)
    await memory.delete_user(second, now_ms=now, remember_ms=REMEMBER_MS)
    await memory.revoke_device(b.device_id, now_ms=now)
    # Housekeeping far in the future forgets every entry but the newest (b's): a's and c's are gone.
    await memory.purge_housekeeping(now_ms=now + REVOCATION_LOG_RETENTION_MS + 1, batch=1000)
    assert [e.id for e in await memory.revocations_since(0)] == [3]
    lookups = store.calls["lookup_device"]

    for device, expected in ((a, "device_revoked"), (b, "device_revoked"), (c, "account_deleted")):
        code, close, elapsed = await closed_after(clients[device.device_id])
        assert (code, close) == (expected, 1008)
        assert elapsed <= REVOCATION_POLL_S
    assert store.calls["lookup_device"] == lookups + 4  # every live session, once
    assert any("re-checking every live session" in r.getMessage() for r in caplog.records)
    await assert_open(clients[d.device_id])


async def test_the_watcher_reads_every_page_of_a_long_log(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)
    await start_watcher(relay)
    last = await relay.user()
    client = await relay.connect(await relay.device(last))
    await trio.sleep(0.05)

    for _ in range(REVOCATION_PAGE + 10):
        await memory.delete_user(await relay.user(), now_ms=relay.now(), remember_ms=REMEMBER_MS)
    await memory.delete_user(last, now_ms=relay.now(), remember_ms=REMEMBER_MS)
    code, _, elapsed = await closed_after(client)
    assert code == "account_deleted"
    assert elapsed <= REVOCATION_POLL_S
    assert store.calls["revocations_since"] == 2


class CommitLog:
    """A ``MemoryStore`` whose appends take a while, before and after their commit, and which records
    the ids of the appends that committed, in commit order.

    The ``MemoryStore`` does all of a call's work after its one checkpoint and returns without
    yielding, so recording right after the call returns records the commit order.
    """

    def __init__(self, inner: MemoryStore, *, seed: int) -> None:
        self.inner = inner
        self.log: list[str] = []
        self._random = random.Random(seed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append(self, request: AppendRequest) -> Appended:
        await trio.sleep(self._random.uniform(0, 0.003))  # the way to the database
        appended = await self.inner.append(request)
        self.log.append(request.id)
        await trio.sleep(self._random.uniform(0, 0.003))  # the way back
        return appended


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("path", ["log", "bus"])
async def test_publishes_racing_a_revocation_are_acked_only_when_committed_before_it(
    make_relay: RelayFactory, autojump_clock: MockClock, path: str, seed: int
) -> None:
    memory = MemoryStore()
    store = CommitLog(memory, seed=seed)
    relay = await make_relay(store=store, memory=memory)
    await start_watcher(relay)
    device = await relay.device(await relay.user())
    client = await relay.connect(device)
    answers: list[dict[str, Any]] = []
    committed_before: list[str] = []

    async def publish_all() -> None:
        for n in range(1000):
            await client.publish("race", f"e{n}", {"n": n}, ts=relay.now())

    async def read_answers() -> None:
        while True:
            answers.append(await client.receive())

    async def revoke() -> None:
        """Revoke at a moment unrelated to the publishes, with appends on their way both ways."""
        await trio.sleep(0.1 + seed * 0.0007)
        record = await memory.revoke_device(device.device_id, now_ms=relay.now())
        committed_before.extend(store.log)  # what committed before the revocation did
        if path == "bus":
            await relay.bus.announce_device(
                device.user_id, "revoked", device.device_id, record.name, relay.now()
            )

    async with trio.open_nursery() as tasks:
        tasks.start_soon(publish_all)
        tasks.start_soon(revoke)
        with pytest.raises(Closed) as closed:
            await read_answers()
        tasks.cancel_scope.cancel()

    assert (closed.value.code, closed.value.reason) == (1008, "device_revoked")
    assert len(committed_before) > 10
    assert store.log == committed_before  # nothing of the revoked device committed after it
    acked = [a["id"] for a in answers if a["type"] == "ack"]
    assert acked == committed_before[: len(acked)]  # every ack is of an event committed before
    assert [a["code"] for a in answers if a["type"] != "ack"] == ["device_revoked"]  # then the close
    stored = await memory.read_events(
        device.user_id, "race", after=0, head=10_000, limit=10_000, now_ms=relay.now(), clock_skew_ms=0
    )
    assert [e.id for e in stored] == committed_before


async def test_a_replay_request_of_a_revoked_session_is_not_served(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)
    await start_watcher(relay)
    device = await relay.device(await relay.user())
    client = await relay.connect(device)
    for n in range(3):
        assert (await relay.publish(client, "notes", f"e{n}"))["type"] == "ack"

    gate = store.gates["stream_head"] = trio.Event()
    await client.send({"type": "replay", "stream": "notes", "ref": "first"})
    await client.send({"type": "replay", "stream": "notes", "ref": "queued"})
    await memory.revoke_device(device.device_id, now_ms=relay.now())
    code, close, elapsed = await closed_after(client)  # expect_close: no page came before the error
    assert (code, close) == ("device_revoked", 1008)
    assert elapsed <= REVOCATION_POLL_S
    gate.set()
    await trio.sleep(1)
    assert store.calls["stream_head"] == 1  # the queued request never reached the store
    assert store.calls["read_events"] == 0


class HeldLookup:
    """A ``MemoryStore`` whose next ``lookup_device`` answers what it read, but only once released.

    So a revocation can commit, and be applied by the watcher, after the handshake's lookup read the
    device and before the handshake goes on: the answer it acts on is stale.
    """

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.hold: trio.Event | None = None
        self.holding = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def lookup_device(self, device_id: str, *, now_ms: int | None = None) -> DeviceLookup:
        found = await self.inner.lookup_device(device_id, now_ms=now_ms)
        hold, self.hold = self.hold, None
        if hold is not None:
            self.holding.set()
            await hold.wait()
        return found


@pytest.mark.parametrize("what", ["device_revoked", "account_deleted"])
async def test_a_revocation_applied_during_a_handshakes_device_lookup_still_refuses_the_session(
    make_relay: RelayFactory, autojump_clock: MockClock, what: str
) -> None:
    memory = MemoryStore()
    store = HeldLookup(memory)
    relay = await make_relay(store=store, memory=memory)
    await start_watcher(relay)
    device = await relay.device(await relay.user())
    client = await relay.open()
    release = store.hold = trio.Event()
    answers: list[dict[str, Any]] = []

    async def authenticate(device: Device) -> None:
        answers.append(await client.authenticate(device))

    relay.nursery.start_soon(authenticate, device)
    await store.holding.wait()  # the lookup has read the device, still in good standing
    if what == "device_revoked":
        await memory.revoke_device(device.device_id, now_ms=relay.now())
    else:
        await memory.delete_user(device.user_id, now_ms=relay.now(), remember_ms=REMEMBER_MS)
    await trio.sleep(1)  # the watcher applied the entry meanwhile, before the session registered
    release.set()
    await client.expect_closed(1008, what)
    assert [(a["type"], a["code"]) for a in answers] == [("error", what)]


async def test_a_revocation_during_the_shutdown_drain_closes_with_device_revoked(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory, drain_timeout_ms=10_000)
    device = await relay.device(await relay.user())
    client = await relay.connect(device)
    gate = store.gates["append"] = trio.Event()
    await client.publish("notes", "e1", ts=relay.now())
    await trio.sleep(0.01)  # the publish waits for its commit
    relay.nursery.start_soon(relay.gateway.shutdown)
    await trio.sleep(0.01)  # the drain began: the session waits for its accepted publish

    record = await memory.revoke_device(device.device_id, now_ms=relay.now())
    await relay.bus.announce_device(device.user_id, "revoked", device.device_id, record.name, relay.now())
    gate.set()
    error, code, _ = await client.expect_close()
    assert (error["code"], code) == ("device_revoked", 1008)
    assert store.calls["append"] == 1
