"""Replay and stream listing through the gateway (PROTOCOL.md §4.4)."""

from __future__ import annotations

import trio
from gateway_harness import Client, Device, FaultyStore, Relay, RelayFactory
from trio.testing import MockClock

from relay.store.memory import MemoryStore


async def device_with_events(relay: Relay, stream: str, count: int) -> tuple[Device, Client]:
    """A connected device that published ``count`` events to ``stream``."""
    device = await relay.device(await relay.user())
    client = await relay.connect(device)
    for n in range(count):
        await client.publish(stream, f"e{n}", {"n": n}, ts=relay.now())
    for _ in range(count):
        await client.expect("ack")
    return device, client


async def test_250_events_replay_in_pages_of_100_100_50_below_the_head_fixed_at_the_start(
    relay: Relay, autojump_clock: MockClock
) -> None:
    device, client = await device_with_events(relay, "notes", 250)
    writer = await relay.connect(await relay.device(device.user_id))

    await client.send({"type": "replay", "stream": "notes", "ref": "r"})
    first = await client.expect("replay.page", ignore=["presence"])
    for n in range(5):  # new events arrive during the replay: they are live, not part of it
        assert (await relay.publish(writer, "notes", f"late{n}"))["type"] == "ack"
    await client.send({"type": "replay.next", "token": first["next"], "ref": "r2"})
    second = await client.expect("replay.page", ignore=["event"])
    await client.send({"type": "replay.next", "token": second["next"]})
    third = await client.expect("replay.page", ignore=["event"])

    pages = [first, second, third]
    assert [[e["seq"] for e in page["events"]] for page in pages] == [
        list(range(1, 101)),
        list(range(101, 201)),
        list(range(201, 251)),
    ]
    assert [page["head"] for page in pages] == [250, 250, 250]
    assert [page["stream"] for page in pages] == ["notes"] * 3
    assert [page.get("ref") for page in pages] == ["r", "r2", None]
    assert first["next"] is not None
    assert second["next"] is not None
    assert third["next"] is None
    assert first["events"][0] == {
        "stream": "notes",
        "seq": 1,
        "id": "e0",
        "device_id": device.device_id,
        "ts": first["events"][0]["ts"],
        "received_at": first["events"][0]["received_at"],
        "expires_at": first["events"][0]["expires_at"],
        "body": {"n": 0},
    }


async def test_a_replay_after_and_limit_are_honoured_and_a_larger_limit_is_clamped(
    relay: Relay, autojump_clock: MockClock
) -> None:
    _, client = await device_with_events(relay, "notes", 120)
    await client.send({"type": "replay", "stream": "notes", "after": 10, "limit": 5})
    page = await client.expect("replay.page")
    assert [e["seq"] for e in page["events"]] == [11, 12, 13, 14, 15]
    await client.send({"type": "replay", "stream": "notes", "limit": 1000})
    assert len((await client.expect("replay.page"))["events"]) == 100


async def test_an_unknown_stream_gives_an_empty_page_with_head_0_and_no_next(
    relay: Relay, autojump_clock: MockClock
) -> None:
    _, client = await device_with_events(relay, "notes", 1)
    await client.send({"type": "replay", "stream": "never-written", "ref": "r"})
    page = await client.expect("replay.page")
    assert page == {
        "type": "replay.page",
        "stream": "never-written",
        "events": [],
        "head": 0,
        "next": None,
        "ref": "r",
    }


async def test_another_users_stream_of_the_same_name_is_invisible(
    relay: Relay, autojump_clock: MockClock
) -> None:
    await device_with_events(relay, "notes", 3)
    stranger = await relay.connect(await relay.device(await relay.user()))
    await stranger.send({"type": "replay", "stream": "notes"})
    assert (await stranger.expect("replay.page"))["head"] == 0
    await stranger.send({"type": "streams"})
    assert (await stranger.expect("streams.page"))["streams"] == {}


async def test_a_page_ends_early_when_the_next_event_would_not_fit_in_a_frame(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(max_event_bytes=10_000, max_frame_bytes=14_096)
    device = await relay.device(await relay.user())
    client = await relay.connect(device)
    for n in range(5):
        assert (await relay.publish(client, "big", f"e{n}", "x" * 6000))["type"] == "ack"

    seqs = []
    await client.send({"type": "replay", "stream": "big"})
    while True:
        page = await client.expect("replay.page")
        seqs.append([e["seq"] for e in page["events"]])
        if page["next"] is None:
            break
        await client.send({"type": "replay.next", "token": page["next"]})
    assert seqs == [[1, 2], [3, 4], [5]]


async def test_more_than_max_replays_outstanding_requests_are_busy(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)
    _, client = await device_with_events(relay, "notes", 2)
    gate = store.gates["stream_head"] = trio.Event()

    for n in range(4):
        await client.send({"type": "replay", "stream": "notes", "ref": f"r{n}"})
    await client.send({"type": "replay", "stream": "notes", "ref": "r4"})
    busy = await client.expect("error")
    assert (busy["code"], busy["ref"], busy["stream"]) == ("busy", "r4", "notes")

    gate.set()
    refs = [(await client.expect("replay.page"))["ref"] for _ in range(4)]
    assert refs == ["r0", "r1", "r2", "r3"]
    await client.send({"type": "streams", "ref": "again"})
    assert (await client.expect("streams.page"))["ref"] == "again"


async def test_a_continuation_token_is_valid_for_ten_minutes_and_not_a_millisecond_more(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(heartbeat_ms=1_000_000)
    _, client = await device_with_events(relay, "notes", 3)
    await client.send({"type": "replay", "stream": "notes", "limit": 1})
    token = (await client.expect("replay.page"))["next"]

    await trio.sleep(600)
    await client.send({"type": "replay.next", "token": token})
    assert [e["seq"] for e in (await client.expect("replay.page"))["events"]] == [2]
    await trio.sleep(0.001)
    await client.send({"type": "replay.next", "token": token, "ref": "late"})
    error = await client.expect("error")
    assert (error["code"], error["ref"]) == ("invalid_token", "late")
    assert "stream" not in error


async def test_a_token_survives_a_reconnect_of_its_device_but_not_a_change_to_it_or_another_device(
    relay: Relay, autojump_clock: MockClock
) -> None:
    device, client = await device_with_events(relay, "notes", 3)
    await client.send({"type": "replay", "stream": "notes", "limit": 1})
    token = (await client.expect("replay.page"))["next"]

    again = await relay.connect(device)  # replaces the first session
    await again.send({"type": "replay.next", "token": token})
    assert [e["seq"] for e in (await again.expect("replay.page"))["events"]] == [2]

    altered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    await again.send({"type": "replay.next", "token": altered})
    assert (await again.expect("error"))["code"] == "invalid_token"

    sibling = await relay.connect(await relay.device(device.user_id))
    await sibling.send({"type": "replay.next", "token": token})
    assert (await sibling.expect("error"))["code"] == "invalid_token"


async def test_streams_are_listed_in_byte_order_in_pages_with_next(
    relay: Relay, autojump_clock: MockClock
) -> None:
    device = await relay.device(await relay.user())
    client = await relay.connect(device)
    for name in ("b", "a", "C", "c", "a/1"):
        assert (await relay.publish(client, name, f"id-{name.replace('/', '.')}"))["type"] == "ack"

    await client.send({"type": "streams", "limit": 2, "ref": "s1"})
    first = await client.expect("streams.page")
    await client.send({"type": "streams", "after": first["next"], "limit": 2})
    second = await client.expect("streams.page")
    await client.send({"type": "streams", "after": second["next"], "limit": 2})
    third = await client.expect("streams.page")

    assert first == {"type": "streams.page", "streams": {"C": 1, "a": 1}, "next": "a", "ref": "s1"}
    assert (second["streams"], second["next"]) == ({"a/1": 1, "b": 1}, "b")
    assert (third["streams"], third["next"]) == ({"c": 1}, None)


async def test_a_full_last_streams_page_says_no_more_follow(relay: Relay, autojump_clock: MockClock) -> None:
    device = await relay.device(await relay.user())
    client = await relay.connect(device)
    for name in ("a", "b"):
        await relay.publish(client, name, f"id-{name}")
    await client.send({"type": "streams", "limit": 2})
    assert (await client.expect("streams.page"))["next"] is None
