"""Publishing through the gateway (PROTOCOL.md §4.2, §4.3, §7): acks, fan-out, refusals, order, limits."""

from __future__ import annotations

from typing import Any

import trio
from gateway_harness import NOW, Client, Device, FaultyStore, Relay, RelayFactory
from trio.testing import MockClock

from relay.errors import StoreUnavailable
from relay.store.memory import MemoryStore

SKEW_MS = 300_000


async def two_devices(relay: Relay) -> tuple[Device, Device, Client, Client]:
    user = await relay.user()
    phone, laptop = await relay.device(user), await relay.device(user)
    phone_client = await relay.connect(phone)
    laptop_client = await relay.connect(laptop)
    await phone_client.expect("presence")  # the laptop came online
    return phone, laptop, phone_client, laptop_client


async def test_an_ack_follows_the_commit_and_the_event_reaches_the_users_other_session_only(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone, _, phone_client, laptop_client = await two_devices(relay)
    stranger = await relay.connect(await relay.device(await relay.user()))

    ack = await relay.publish(phone_client, "notes", "e1", {"text": "hi"}, ttl=60, ref="r1")

    assert ack == {
        "type": "ack",
        "id": "e1",
        "stream": "notes",
        "seq": 1,
        "received_at": NOW,
        "expires_at": NOW + 60_000,
        "duplicate": False,
        "ref": "r1",
    }
    assert await laptop_client.expect("event") == {
        "type": "event",
        "stream": "notes",
        "seq": 1,
        "id": "e1",
        "device_id": phone.device_id,
        "ts": NOW,
        "received_at": NOW,
        "expires_at": NOW + 60_000,
        "body": {"text": "hi"},
    }
    await trio.sleep(1)
    assert phone_client.pending() == []
    assert stranger.pending() == []


async def test_an_answer_without_ref_carries_the_event_id_as_ref(
    relay: Relay, autojump_clock: MockClock
) -> None:
    _, _, phone_client, _ = await two_devices(relay)
    ack = await relay.publish(phone_client, "notes", "e1")
    assert ack["ref"] == "e1"


async def test_a_duplicate_gets_the_original_ack_marked_duplicate_and_is_not_delivered_again(
    relay: Relay, autojump_clock: MockClock
) -> None:
    _, _, phone_client, laptop_client = await two_devices(relay)
    first = await relay.publish(phone_client, "notes", "e1", {"a": 1})
    await laptop_client.expect("event")
    await trio.sleep(3)

    again = await relay.publish(phone_client, "notes", "e1", {"a": 1}, ttl=5, ref="retry")

    assert again == {**first, "duplicate": True, "ref": "retry"}
    await trio.sleep(1)
    assert laptop_client.pending() == []


async def test_the_same_id_with_another_body_is_an_id_conflict(
    relay: Relay, autojump_clock: MockClock
) -> None:
    _, _, phone_client, _ = await two_devices(relay)
    await relay.publish(phone_client, "notes", "e1", {"a": 1})
    error = await relay.publish(phone_client, "notes", "e1", {"a": 2})
    assert error == {
        "type": "error",
        "code": "id_conflict",
        "message": "This event id was already used for a different event",
        "ref": "e1",
        "id": "e1",
        "stream": "notes",
    }


async def test_a_wrong_expect_seq_is_a_seq_conflict_carrying_the_head(
    relay: Relay, autojump_clock: MockClock
) -> None:
    _, _, phone_client, _ = await two_devices(relay)
    assert (await relay.publish(phone_client, "notes", "e1", expect_seq=0))["seq"] == 1
    assert (await relay.publish(phone_client, "notes", "e2", expect_seq=1))["seq"] == 2
    error = await relay.publish(phone_client, "notes", "e3", expect_seq=1)
    assert (error["code"], error["head"], error["id"], error["stream"]) == ("seq_conflict", 2, "e3", "notes")


async def test_a_malformed_publish_echoes_what_was_valid(relay: Relay, autojump_clock: MockClock) -> None:
    _, _, phone_client, _ = await two_devices(relay)
    error = await relay.publish(phone_client, "bad stream!", "e1", ttl=0)
    assert (error["code"], error["path"], error["id"], error["ref"]) == (
        "bad_request",
        "$.stream",
        "e1",
        "e1",
    )
    assert "stream" not in error
    await phone_client.send({"type": "publish", "id": "e2", "stream": "notes", "ts": NOW, "ref": "r"})
    error = await phone_client.expect("error")
    assert (error["code"], error["path"], error["ref"], error["stream"]) == (
        "bad_request",
        "$.body",
        "r",
        "notes",
    )


async def test_a_body_over_max_event_bytes_is_too_large(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(max_event_bytes=100)
    _, _, phone_client, _ = await two_devices(relay)
    error = await relay.publish(phone_client, "notes", "e1", "x" * 99)
    assert error["code"] == "too_large"


async def test_a_ts_exactly_clock_skew_ahead_is_accepted_and_one_ms_more_is_clock_skew(
    relay: Relay, autojump_clock: MockClock
) -> None:
    _, _, phone_client, _ = await two_devices(relay)
    assert (await relay.publish(phone_client, "notes", "e1", ts=NOW + SKEW_MS))["type"] == "ack"
    error = await relay.publish(phone_client, "notes", "e2", ts=NOW + SKEW_MS + 1)
    assert (error["code"], error["server_time"]) == ("clock_skew", NOW)


async def test_an_event_expired_by_exactly_the_skew_is_accepted_and_one_ms_older_is_expired(
    relay: Relay, autojump_clock: MockClock
) -> None:
    _, _, phone_client, _ = await two_devices(relay)
    at_bound = NOW - SKEW_MS - 60_000  # expires_at + skew == now
    assert (await relay.publish(phone_client, "notes", "e1", ts=at_bound, ttl=60))["type"] == "ack"
    error = await relay.publish(phone_client, "notes", "e2", ts=at_bound - 1, ttl=60)
    assert (error["code"], error["server_time"]) == ("expired", NOW)


async def test_an_event_is_not_replayed_once_expired(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(heartbeat_ms=1_000_000)
    _, _, phone_client, _ = await two_devices(relay)
    await relay.publish(phone_client, "notes", "e1", ttl=1)
    await phone_client.send({"type": "replay", "stream": "notes"})
    assert [e["seq"] for e in (await phone_client.expect("replay.page"))["events"]] == [1]

    await trio.sleep((1000 + SKEW_MS) / 1000)  # now == expires_at + skew: still there
    await phone_client.send({"type": "replay", "stream": "notes"})
    assert len((await phone_client.expect("replay.page"))["events"]) == 1
    await trio.sleep(0.001)
    await phone_client.send({"type": "replay", "stream": "notes"})
    page = await phone_client.expect("replay.page")
    assert (page["events"], page["head"], page["next"]) == ([], 1, None)


async def test_publishes_are_answered_in_the_order_received(relay: Relay, autojump_clock: MockClock) -> None:
    _, _, phone_client, _ = await two_devices(relay)
    frames: list[dict[str, Any]] = [
        {"type": "publish", "id": "a", "stream": "s", "ts": NOW, "body": 1},
        {"type": "publish", "id": "b", "stream": "bad stream", "ts": NOW, "body": 2},
        {"type": "publish", "id": "c", "stream": "s", "ts": NOW, "body": 3, "expect_seq": 7},
        {"type": "publish", "id": "d", "stream": "s", "ts": NOW, "body": 4},
    ]
    for frame in frames:
        await phone_client.send(frame)
    answers = [await phone_client.receive() for _ in frames]
    assert [(a["type"], a["ref"]) for a in answers] == [
        ("ack", "a"),
        ("error", "b"),
        ("error", "c"),
        ("ack", "d"),
    ]
    assert [a.get("seq") for a in answers] == [1, None, None, 2]


async def test_four_devices_publishing_concurrently_get_gapless_seqs(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user = await relay.user()
    devices = [await relay.device(user) for _ in range(4)]
    observer = await relay.connect(await relay.device(user))
    clients = [await relay.connect(device) for device in devices]
    seqs: list[int] = []

    async def publish_many(client: Client, index: int) -> None:
        for n in range(50):
            await client.publish("shared", f"d{index}-{n}", n, ts=relay.now())
        for _ in range(50):
            ack = await client.expect("ack", ignore=["presence", "event"])
            seqs.append(ack["seq"])

    async with trio.open_nursery() as nursery:
        for index, client in enumerate(clients):
            nursery.start_soon(publish_many, client, index)

    assert sorted(seqs) == list(range(1, 201))
    delivered = []
    while len(delivered) < 200:
        frame = await observer.expect("event", ignore=["presence"])
        delivered.append(frame["seq"])
    assert sorted(delivered) == list(range(1, 201))


async def test_an_unavailable_store_answers_unavailable_with_retry_after_and_the_session_stays_open(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)
    _, _, phone_client, _ = await two_devices(relay)
    store.failures["append"] = StoreUnavailable(detail="disk full")

    error = await relay.publish(phone_client, "notes", "e1")
    assert (error["code"], error["retry_after_ms"], error["id"]) == ("unavailable", 1000, "e1")

    del store.failures["append"]
    assert (await relay.publish(phone_client, "notes", "e1"))["type"] == "ack"


async def test_a_device_revoked_before_the_commit_gets_device_revoked_and_is_closed_1008(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone, _, phone_client, _ = await two_devices(relay)
    await relay.memory.revoke_device(phone.device_id, now_ms=relay.now())
    await phone_client.publish("notes", "e1", ts=relay.now())
    error, code, _ = await phone_client.expect_close()
    assert (error["code"], error["id"], code) == ("device_revoked", "e1", 1008)


async def test_at_most_max_inflight_publishes_are_read_before_their_answers(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory, max_inflight=3, heartbeat_ms=1000)
    _, _, phone_client, _ = await two_devices(relay)
    gate = store.gates["append"] = trio.Event()

    for n in range(3):
        await phone_client.publish("notes", f"e{n}", ts=relay.now())
    # Longer than the heartbeat's bound (back-pressure is not silence), shorter than a commit's.
    with trio.move_on_after(5) as blocked:
        await phone_client.send({"type": "ping"})
    assert blocked.cancelled_caught

    gate.set()
    # (The laptop, which sends no pings, has meanwhile timed out: hence presence frames.)
    assert [(await phone_client.expect("ack", ignore=["presence"]))["seq"] for _ in range(3)] == [1, 2, 3]
    await phone_client.send({"type": "ping"})
    await phone_client.expect("pong")
