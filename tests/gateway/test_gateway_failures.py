"""Failures around a session (PROTOCOL.md §4.2, §4.3, §4.6): the store, the bus, quotas, admission,
bugs, and that one session's failure never disturbs another."""

from __future__ import annotations

import pytest
import trio
from gateway_harness import Client, Device, FaultyStore, Relay, RelayFactory
from trio.testing import MockClock

from relay.bus.local import LocalBus
from relay.errors import AccountDeleted, BusUnavailable, RateLimited
from relay.protocol.messages import StoredEvent
from relay.store.memory import MemoryStore


async def two_sessions(relay: Relay) -> tuple[Device, Client, Client]:
    user = await relay.user()
    phone, laptop = await relay.device(user), await relay.device(user)
    phone_client = await relay.connect(phone)
    laptop_client = await relay.connect(laptop)
    await phone_client.expect("presence")
    return phone, phone_client, laptop_client


async def test_a_bus_that_refuses_a_committed_event_closes_the_publishing_session_4008_bus_lost(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    class BrokenBus(LocalBus):
        async def publish(self, user_id: str, event: StoredEvent, *, origin_session_id: str) -> None:
            await trio.lowlevel.checkpoint()
            raise BusUnavailable(detail="connection reset")

    relay = await make_relay(bus=BrokenBus())
    _, phone_client, _ = await two_sessions(relay)
    await phone_client.publish("notes", "e1", ts=relay.now())
    error, code, _ = await phone_client.expect_close()
    assert (error["code"], code) == ("bus_lost", 4008)
    assert await relay.memory.stream_head(phone_client.welcome["user_id"], "notes") == 1  # type: ignore[index]


async def test_a_refusal_of_the_admission_seam_is_answered_and_nothing_is_stored(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    class Limited:
        def check_publish(self, *, user_id: str, device_id: str, body_size: int, now_ms: int) -> None:
            raise RateLimited(retry_after_ms=250)

    relay = await make_relay(admission=Limited())
    _, phone_client, _ = await two_sessions(relay)
    error = await relay.publish(phone_client, "notes", "e1")
    assert (error["code"], error["retry_after_ms"], error["id"]) == ("rate_limited", 250, "e1")
    assert await relay.memory.stream_head(phone_client.welcome["user_id"], "notes") == 0  # type: ignore[index]


async def test_a_publish_beyond_the_stream_quota_is_quota_exceeded(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(max_streams=1)
    _, phone_client, _ = await two_sessions(relay)
    assert (await relay.publish(phone_client, "one", "e1"))["type"] == "ack"
    error = await relay.publish(phone_client, "two", "e2")
    assert (error["code"], error["stream"]) == ("quota_exceeded", "two")


async def test_a_publish_of_a_deleted_account_closes_1008_account_deleted(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)
    _, phone_client, _ = await two_sessions(relay)
    store.failures["append"] = AccountDeleted()
    await phone_client.publish("notes", "e1", ts=relay.now())
    error, code, _ = await phone_client.expect_close()
    assert (error["code"], code) == ("account_deleted", 1008)


async def test_a_bug_in_one_session_closes_it_1011_and_leaves_the_others_alone(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)
    _, phone_client, laptop_client = await two_sessions(relay)
    store.failures["list_streams"] = KeyError("token=secret")

    await phone_client.send({"type": "streams", "ref": "s"})
    error, code, _ = await phone_client.expect_close()

    assert (error["code"], error["message"], code) == ("internal", "Internal server error", 1011)
    assert "secret" not in str(error)
    await laptop_client.expect("presence")  # the phone went offline
    await laptop_client.send({"type": "ping"})
    await laptop_client.expect("pong")
    assert (await relay.publish(laptop_client, "notes", "e1"))["type"] == "ack"


async def test_an_event_committed_while_the_welcome_is_being_built_is_not_missed(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)
    user = await relay.user()
    laptop, phone = await relay.device(user), await relay.device(user)
    laptop_client = await relay.connect(laptop)
    gate = store.gates["recent_streams"] = trio.Event()
    phone_client = await relay.open()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(phone_client.handshake, phone)
        await laptop_client.expect("presence")  # the phone joined the bus: its welcome is being built
        assert (await relay.publish(laptop_client, "notes", "e1"))["type"] == "ack"
        gate.set()

    assert phone_client.welcome is not None
    assert phone_client.welcome["streams"] == {"notes": 1}
    assert (await phone_client.expect("event"))["seq"] == 1  # held, then sent right after the welcome


async def test_the_end_of_a_session_records_when_its_device_was_last_seen(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone, phone_client, _ = await two_sessions(relay)
    await trio.sleep(7)
    await phone_client.disconnect()
    await phone_client.ended.wait()
    devices = await relay.memory.list_devices(phone.user_id)
    assert [d.last_seen_at for d in devices if d.device_id == phone.device_id] == [relay.now()]


async def test_an_internal_error_is_logged_with_its_request_id_and_without_its_text(
    make_relay: RelayFactory, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)
    _, phone_client, _ = await two_sessions(relay)
    store.failures["list_streams"] = KeyError("token=secret")

    await phone_client.send({"type": "streams"})
    error, _, _ = await phone_client.expect_close()

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert error["request_id"] in logged
    assert "KeyError" in logged
    assert "secret" not in logged
