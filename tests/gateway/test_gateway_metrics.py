"""The gateway's metrics move as docs/operations.md says (in-process harness, virtual time).

Values are read from the gateway's own registry (``Relay.sample``); durations are exact, because time
is trio's MockClock and the MemoryStore takes none unless a test makes it wait.
"""

from __future__ import annotations

import pytest
import trio
from gateway_harness import Client, Closed, Device, FaultyStore, Relay, RelayFactory
from trio.testing import MockClock, wait_all_tasks_blocked

from relay.bus.local import LocalBus
from relay.gateway import AdmitAll
from relay.ops.metrics import Metrics
from relay.protocol.messages import StoredEvent
from relay.store.memory import MemoryStore

REMEMBER_MS = 86_400_000


async def connected_pair(relay: Relay) -> tuple[Device, Device, Client, Client]:
    user = await relay.user()
    phone, laptop = await relay.device(user), await relay.device(user)
    phone_client = await relay.connect(phone)
    laptop_client = await relay.connect(laptop)
    await phone_client.expect("presence")
    return phone, laptop, phone_client, laptop_client


async def test_the_gateway_counts_into_the_metrics_it_is_given(make_relay: RelayFactory) -> None:
    metrics = Metrics()
    relay = await make_relay(metrics=metrics)
    assert relay.gateway.metrics is metrics
    assert relay.gateway.context.metrics is metrics


async def test_sessions_open_counts_live_sessions_handshakes_included(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user = await relay.user()
    device = await relay.device(user)
    assert relay.sample("relay_sessions_open") == 0

    waiting = await relay.open()  # upgraded, no handshake yet
    await wait_all_tasks_blocked()
    assert relay.sample("relay_sessions_open") == 1
    client = await relay.connect(device)
    assert relay.sample("relay_sessions_open") == 2

    await client.disconnect()
    with trio.fail_after(1):
        await client.ended.wait()
    assert relay.sample("relay_sessions_open") == 1
    assert relay.sample("relay_sessions_closed_total", code="disconnected") == 1
    await waiting.disconnect()
    with trio.fail_after(1):
        await waiting.ended.wait()
    assert relay.sample("relay_sessions_open") == 0


async def test_handshakes_count_welcome_or_the_code_that_ended_them(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user = await relay.user()
    device = await relay.device(user)
    await relay.connect(device)
    assert relay.sample("relay_handshakes_total", outcome="welcome") == 1

    impostor = Device(user_id=user, device_id=device.device_id, key=(await relay.device(user)).key, name="x")
    wrong = await relay.open()
    assert (await wrong.authenticate(impostor))["code"] == "unauthorized"
    await wrong.expect_closed(1008, "unauthorized")

    stalled = await relay.open()
    _, code, reason = await stalled.expect_close()
    assert (code, reason) == (1001, "handshake_timeout")

    out_of_order = await relay.open()
    await out_of_order.send({"type": "ping"})
    _, code, _ = await out_of_order.expect_close()
    assert code == 1002
    for client in (wrong, stalled, out_of_order):
        with trio.fail_after(1):
            await client.ended.wait()

    assert relay.sample("relay_handshakes_total", outcome="welcome") == 1
    assert relay.sample("relay_handshakes_total", outcome="unauthorized") == 1
    assert relay.sample("relay_handshakes_total", outcome="handshake_timeout") == 1
    assert relay.sample("relay_handshakes_total", outcome="protocol_error") == 1
    assert relay.sample("relay_sessions_closed_total", code="unauthorized") == 1
    assert relay.sample("relay_sessions_closed_total", code="handshake_timeout") == 1


async def test_published_duplicate_and_delivered_events_are_counted(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(admission=AdmitAll())
    _, _, phone_client, laptop_client = await connected_pair(relay)
    tablet_client = await relay.connect(await relay.device(phone_client.welcome["user_id"]))  # type: ignore[index]
    await phone_client.expect("presence")
    await laptop_client.expect("presence")

    assert (await relay.publish(phone_client, "notes", "e1", {"n": 1}))["type"] == "ack"
    await laptop_client.expect("event", ignore=["presence"])
    await tablet_client.expect("event", ignore=["presence"])
    assert (await relay.publish(phone_client, "notes", "e1", {"n": 1}))["duplicate"] is True
    assert (await relay.publish(phone_client, "notes", "e2", {"n": 2}))["seq"] == 2
    await laptop_client.expect("event", ignore=["presence"])
    await tablet_client.expect("event", ignore=["presence"])
    await trio.sleep(relay.settings.heartbeat_ms / 1000 * 1.5)  # heads frames are not events

    assert relay.sample("relay_events_published_total") == 2
    assert relay.sample("relay_events_duplicate_total") == 1
    assert relay.sample("relay_events_delivered_total") == 4  # 2 events × 2 other sessions
    assert relay.sample("relay_events_refused_total", code="bad_request") == 0


async def test_refused_publishes_are_counted_by_code_and_nothing_is_published(
    relay: Relay, autojump_clock: MockClock
) -> None:
    _, _, phone_client, _ = await connected_pair(relay)
    now = relay.now()
    answers = [
        await relay.publish(phone_client, "bad name!", "e1"),
        await relay.publish(phone_client, "notes", "e2", ts=now - 10**9, ttl=1),
        await relay.publish(phone_client, "notes", "e3", ts=now + 10**9),
        await relay.publish(phone_client, "notes", "e4", expect_seq=7),
        await relay.publish(phone_client, "notes", "e5", expect_seq=7),
    ]
    assert [a["code"] for a in answers] == [
        "bad_request",
        "expired",
        "clock_skew",
        "seq_conflict",
        "seq_conflict",
    ]
    assert relay.sample("relay_events_refused_total", code="bad_request") == 1
    assert relay.sample("relay_events_refused_total", code="expired") == 1
    assert relay.sample("relay_events_refused_total", code="clock_skew") == 1
    assert relay.sample("relay_events_refused_total", code="seq_conflict") == 2
    assert relay.sample("relay_events_published_total") == 0


async def test_publish_commit_seconds_runs_from_the_frame_read_to_the_append_returning(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)  # type: ignore[arg-type]
    _, _, phone_client, _ = await connected_pair(relay)
    store.gates["append"] = gate = trio.Event()

    async def open_gate_later() -> None:
        await trio.sleep(0.25)
        gate.set()

    relay.nursery.start_soon(open_gate_later)
    assert (await relay.publish(phone_client, "notes", "e1"))["type"] == "ack"

    assert relay.sample("relay_publish_commit_seconds_count") == 1
    assert relay.sample("relay_publish_commit_seconds_sum") == pytest.approx(0.25)
    assert relay.sample("relay_publish_commit_seconds_bucket", le="0.25") == 1
    assert relay.sample("relay_publish_commit_seconds_bucket", le="0.1") == 0


class SlowBus(LocalBus):
    """A local bus whose hand-over of an event takes ``delay`` seconds."""

    delay = 0.04

    async def publish(self, user_id: str, event: StoredEvent, *, origin_session_id: str) -> None:
        await trio.sleep(self.delay)
        await super().publish(user_id, event, origin_session_id=origin_session_id)


async def test_fanout_seconds_times_the_hand_over_to_the_bus(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(bus=SlowBus())
    _, _, phone_client, laptop_client = await connected_pair(relay)
    await relay.publish(phone_client, "notes", "e1")
    await laptop_client.expect("event")

    assert relay.sample("relay_fanout_seconds_count") == 1
    assert relay.sample("relay_fanout_seconds_sum") == pytest.approx(SlowBus.delay)
    assert relay.sample("relay_publish_commit_seconds_sum") == 0  # the commit itself took no time


async def test_replay_and_streams_pages_are_counted_by_kind(relay: Relay, autojump_clock: MockClock) -> None:
    _, _, phone_client, _ = await connected_pair(relay)
    for n in range(3):
        await relay.publish(phone_client, "notes", f"e{n}")
    await phone_client.send({"type": "replay", "stream": "notes", "limit": 2})
    page = await phone_client.expect("replay.page")
    await phone_client.send({"type": "replay.next", "token": page["next"]})
    await phone_client.expect("replay.page")
    await phone_client.send({"type": "streams"})
    await phone_client.expect("streams.page")
    await phone_client.send({"type": "replay.next", "token": "x" * 20})
    assert (await phone_client.expect("error"))["code"] == "invalid_token"

    assert relay.sample("relay_replay_pages_total", kind="replay") == 2
    assert relay.sample("relay_replay_pages_total", kind="streams") == 1


async def read_close_after(client: Client, delay: float) -> tuple[str, int]:
    """Let ``delay`` pass with the client not reading (its channel holds nothing), then read the close."""
    await trio.sleep(delay)
    error = await client.receive()
    with pytest.raises(Closed) as closed:
        await client.receive()
    return error["code"], closed.value.code


async def test_revocation_close_seconds_times_the_bus_path_to_the_close_being_sent(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user = await relay.user()
    phone = await relay.device(user)
    phone_client = await relay.connect(phone, buffer=0)  # the writer waits until the test reads

    record = await relay.memory.revoke_device(phone.device_id, now_ms=relay.now())
    await relay.bus.announce_device(user, "revoked", phone.device_id, record.name, relay.now())
    assert await read_close_after(phone_client, 0.03) == ("device_revoked", 1008)
    with trio.fail_after(1):
        await phone_client.ended.wait()

    assert relay.sample("relay_revocation_close_seconds_count", path="bus") == 1
    assert relay.sample("relay_revocation_close_seconds_sum", path="bus") == pytest.approx(0.03)
    assert relay.sample("relay_revocation_close_seconds_count", path="log") == 0
    assert relay.sample("relay_sessions_closed_total", code="device_revoked") == 1


async def test_revocation_close_seconds_times_the_log_path_from_the_watcher_reading_it(
    relay: Relay, autojump_clock: MockClock
) -> None:
    await relay.nursery.start(relay.gateway.run)
    doomed = await relay.user()
    client = await relay.connect(await relay.device(doomed), buffer=0)

    await relay.memory.delete_user(doomed, now_ms=relay.now(), remember_ms=REMEMBER_MS)
    await trio.sleep(0.5)  # the watcher has read the log (and the writer waits for the test)
    assert await read_close_after(client, 0) == ("account_deleted", 1008)
    with trio.fail_after(1):
        await client.ended.wait()

    assert relay.sample("relay_revocation_close_seconds_count", path="log") == 1
    seconds = relay.sample("relay_revocation_close_seconds_sum", path="log")
    assert 0.3 <= seconds < 0.5  # learned at a poll within 0.2 s of the deletion, sent at 0.5 s
    assert relay.sample("relay_revocation_close_seconds_count", path="bus") == 0


async def test_sessions_closed_counts_the_code_of_each_close(relay: Relay, autojump_clock: MockClock) -> None:
    _, _, phone_client, laptop_client = await connected_pair(relay)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.gateway.shutdown)
        for client in (phone_client, laptop_client):
            _, code, reason = await client.expect_close(ignore=["presence"])
            assert (code, reason) == (1001, "going_away")
    assert relay.sample("relay_sessions_closed_total", code="going_away") == 2
    assert relay.sample("relay_sessions_open") == 0
