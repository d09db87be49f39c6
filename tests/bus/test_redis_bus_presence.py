"""Presence and replacement across nodes (PROTOCOL.md §4.1, §4.5), with presence as Redis state."""

from __future__ import annotations

import trio
from redis_bus_helpers import (
    TEST_HEARTBEAT_MS,
    NodeFactory,
    Recorder,
    eventually,
    new_id,
    redis_call,
    settle,
)

from relay.bus.redis_presence import Names, entry_lifetime_ms
from relay.errors import SessionReplaced


async def test_presence_is_announced_across_nodes_for_a_devices_first_and_last_session_only(
    make_node: NodeFactory,
) -> None:
    a, b, c = [(await make_node()).bus for _ in range(3)]
    user, phone_id = new_id(), new_id()
    laptop = Recorder(user, new_id())
    await a.subscribe(laptop, at=0)
    first, second = Recorder(user, phone_id), Recorder(user, phone_id)
    await b.subscribe(first, at=10)
    await settle(a, user, laptop)
    assert laptop.presence() == [(phone_id, True)]

    # A second session of the phone (it replaces the first): no change to announce, either way.
    await c.subscribe(second, at=11)
    await eventually(lambda: bool(first.ended))
    await b.unsubscribe(first, at=12)
    await settle(a, user, laptop)
    assert laptop.presence() == [(phone_id, True)]

    await c.unsubscribe(second, at=20)
    await settle(a, user, laptop)
    assert laptop.presence() == [(phone_id, True), (phone_id, False)]
    assert [f for f in laptop.frames if f["type"] == "presence"][-1] == {
        "type": "presence",
        "device_id": phone_id,
        "online": False,
        "at": 20,
    }
    assert first.presence() == []  # a device never hears of itself
    assert second.presence() == []


async def test_online_devices_lists_the_devices_with_a_live_session_on_any_node(
    make_node: NodeFactory,
) -> None:
    a, b = (await make_node()).bus, (await make_node()).bus
    user, phone_id, laptop_id = new_id(), new_id(), new_id()
    assert await a.online_devices(user) == []
    phone, laptop = Recorder(user, phone_id), Recorder(user, laptop_id)
    await a.subscribe(phone, at=0)
    await b.subscribe(laptop, at=0)

    assert sorted(await a.online_devices(user)) == sorted([phone_id, laptop_id])
    assert sorted(await b.online_devices(user)) == sorted([phone_id, laptop_id])
    await a.unsubscribe(phone, at=1)
    assert await b.online_devices(user) == [laptop_id]
    assert await a.online_devices(new_id()) == []


async def test_a_new_session_of_a_device_on_another_node_ends_the_older_one_without_a_presence_change(
    make_node: NodeFactory,
) -> None:
    a, b = (await make_node()).bus, (await make_node()).bus
    user, phone_id = new_id(), new_id()
    watcher, old = Recorder(user, new_id()), Recorder(user, phone_id)
    await a.subscribe(watcher, at=0)
    await a.subscribe(old, at=0)
    await settle(b, user, watcher, old)
    watcher.frames.clear()

    new = Recorder(user, phone_id)
    await b.subscribe(new, at=5)
    await eventually(lambda: bool(old.ended))
    await a.unsubscribe(old, at=6)
    await settle(b, user, watcher, new)

    assert [type(e) for e in old.ended] == [SessionReplaced]
    assert new.ended == []
    assert watcher.presence() == []
    assert await a.online_devices(user) in ([watcher.device_id, phone_id], [phone_id, watcher.device_id])


async def test_a_newer_session_on_the_same_node_replaces_the_older_one(make_node: NodeFactory) -> None:
    bus = (await make_node()).bus
    user, phone_id = new_id(), new_id()
    sessions = [Recorder(user, phone_id) for _ in range(3)]
    for session in sessions:
        await bus.subscribe(session, at=0)
    await eventually(lambda: all(s.ended for s in sessions[:2]))
    await settle(bus, user, *sessions)

    # Until it leaves, an older session hears of every newer one (as on the local bus).
    assert [set(s.codes()) for s in sessions] == [{"session_replaced"}, {"session_replaced"}, set()]


async def test_two_sessions_of_a_device_opening_at_once_on_two_nodes_end_exactly_the_older_one(
    make_node: NodeFactory,
) -> None:
    a, b = (await make_node()).bus, (await make_node()).bus
    for _ in range(10):
        user, phone_id = new_id(), new_id()
        here, there = Recorder(user, phone_id), Recorder(user, phone_id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda here=here: a.subscribe(here, at=0))
            nursery.start_soon(lambda there=there: b.subscribe(there, at=0))
        await eventually(lambda: bool(here.ended or there.ended))  # noqa: B023 (awaited right here)
        await settle(a, user, here, there)  # every ReplaceNote has arrived at both nodes now

        assert sorted([here.codes(), there.codes()]) == [[], ["session_replaced"]]
        await a.unsubscribe(here, at=1)
        await b.unsubscribe(there, at=1)


async def test_unsubscribing_twice_announces_offline_once(make_node: NodeFactory) -> None:
    a, b = (await make_node()).bus, (await make_node()).bus
    user, phone_id = new_id(), new_id()
    laptop, phone = Recorder(user, new_id()), Recorder(user, phone_id)
    await a.subscribe(laptop, at=0)
    await b.subscribe(phone, at=0)
    await settle(a, user, laptop)

    await b.unsubscribe(phone, at=1)
    await b.unsubscribe(phone, at=2)
    await settle(a, user, laptop)

    assert laptop.presence() == [(phone_id, True), (phone_id, False)]
    assert await a.online_devices(user) == [laptop.device_id]


async def test_a_crashed_nodes_devices_go_offline_within_three_heartbeats(
    make_node: NodeFactory, redis_url: str, prefix: str
) -> None:
    survivor = (await make_node()).bus
    doomed = await make_node()
    user, phone_id = new_id(), new_id()
    laptop, phone = Recorder(user, new_id()), Recorder(user, phone_id)
    await survivor.subscribe(laptop, at=0)
    await doomed.bus.subscribe(phone, at=0)
    await settle(survivor, user, laptop)
    assert laptop.presence() == [(phone_id, True)]

    crashed_at = trio.current_time()
    doomed.crash()  # no unsubscribe: its entry stays in Redis until it expires
    await eventually(lambda: laptop.presence() == [(phone_id, True), (phone_id, False)])
    took_ms = (trio.current_time() - crashed_at) * 1000

    assert took_ms <= 3 * TEST_HEARTBEAT_MS + 400  # §4.5, plus room for a loaded test machine
    assert await survivor.online_devices(user) == [laptop.device_id]
    offline = [f for f in laptop.frames if f["type"] == "presence"][-1]
    assert isinstance(offline["at"], int)
    assert offline["at"] > 0  # stamped by the survivor's clock
    await settle(survivor, user, laptop)
    assert len(laptop.presence()) == 2  # announced once, though the survivor beats on


async def test_the_devices_of_a_crashed_node_leave_online_devices_when_their_entries_expire(
    make_node: NodeFactory,
) -> None:
    observer = (await make_node()).bus  # holds no session of the user: nobody sweeps, entries expire
    doomed = await make_node()
    user, phone_id = new_id(), new_id()
    await doomed.bus.subscribe(Recorder(user, phone_id), at=0)
    assert await observer.online_devices(user) == [phone_id]

    doomed.crash()
    with trio.fail_after(5):
        while await observer.online_devices(user):  # noqa: ASYNC110 (Redis has no event to wait on)
            await trio.sleep(0.01)


async def test_a_user_nobody_holds_a_session_of_leaves_no_key_behind(
    make_node: NodeFactory, redis_url: str, prefix: str
) -> None:
    doomed = await make_node()
    user = new_id()
    await doomed.bus.subscribe(Recorder(user, new_id()), at=0)
    key = Names(prefix).presence_key(user)
    ttl = await redis_call(redis_url, lambda client: client.pttl(key))
    assert isinstance(ttl, int)
    assert 0 < ttl <= entry_lifetime_ms(TEST_HEARTBEAT_MS)

    doomed.crash()
    with trio.fail_after(5):
        while await redis_call(redis_url, lambda client: client.exists(key)):  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_a_session_whose_presence_entry_vanished_is_ended_with_bus_lost(
    make_node: NodeFactory, redis_url: str, prefix: str
) -> None:
    """As after a stall of the node longer than the entry's lifetime, when another node swept it."""
    bus = (await make_node()).bus
    user = new_id()
    kept, lost = Recorder(user, new_id()), Recorder(user, new_id())
    await bus.subscribe(kept, at=0)
    await bus.subscribe(lost, at=0)
    key = Names(prefix).presence_key(user)

    await redis_call(redis_url, lambda client: client.zrem(key, f"{lost.device_id}/{lost.session_id}"))

    await eventually(lambda: lost.codes() == ["bus_lost"])
    assert kept.ended == []


async def test_heartbeats_keep_presence_alive_past_the_entry_lifetime(
    make_node: NodeFactory, redis_url: str, prefix: str
) -> None:
    bus = (await make_node()).bus
    user, phone_id = new_id(), new_id()
    laptop, phone = Recorder(user, new_id()), Recorder(user, phone_id)
    await bus.subscribe(laptop, at=0)
    await bus.subscribe(phone, at=0)
    key, entry = Names(prefix).presence_key(user), f"{phone_id}/{phone.session_id}"

    async def expiry() -> float:
        score = await redis_call(redis_url, lambda client: client.zscore(key, entry))
        assert isinstance(score, float)
        return score

    first = await expiry()
    lifetime = entry_lifetime_ms(TEST_HEARTBEAT_MS)
    with trio.fail_after(10):  # until the entry has been renewed past three of its lifetimes
        while await expiry() < first + 3 * lifetime:  # noqa: ASYNC110 (Redis has no event to wait on)
            await trio.sleep(0.02)

    await settle(bus, user, laptop, phone)
    assert laptop.presence() == [(phone_id, True)]
    assert phone.ended == []
    assert laptop.ended == []
    assert sorted(await bus.online_devices(user)) == sorted([laptop.device_id, phone_id])
