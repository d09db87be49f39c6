"""The Redis bus when Redis goes away, goes silent or comes back, and when its callers are cancelled."""

from __future__ import annotations

import pytest
import trio
from redis_bus_helpers import (
    START_TIMEOUT_S,
    NodeFactory,
    Recorder,
    RedisServer,
    eventually,
    new_id,
    redis_call,
    serve,
    settle,
    stored_event,
)

from relay.bus.redis import RedisBus
from relay.bus.redis_presence import Names
from relay.errors import BusUnavailable

#: Back-off cap of the nodes of these tests (seconds): they reconnect quickly once Redis is back.
FAST_RECONNECT_S = 0.2


async def test_losing_redis_ends_every_session_with_bus_lost_and_the_bus_subscribes_again_by_itself(
    make_node: NodeFactory, own_redis: RedisServer
) -> None:
    a = (await make_node(own_redis.url, reconnect_max_s=FAST_RECONNECT_S)).bus
    b = (await make_node(own_redis.url, reconnect_max_s=FAST_RECONNECT_S)).bus
    user = new_id()
    here, there = Recorder(user, new_id()), Recorder(user, new_id())
    await a.subscribe(here, at=0)
    await b.subscribe(there, at=0)

    await trio.to_thread.run_sync(own_redis.stop)
    await eventually(lambda: here.codes() == ["bus_lost"] and there.codes() == ["bus_lost"])
    assert not a.statistics().delivering
    with pytest.raises(BusUnavailable):
        await a.subscribe(Recorder(user, new_id()), at=1)
    with pytest.raises(BusUnavailable):
        await a.canary()

    await trio.to_thread.run_sync(own_redis.start)  # same port, empty: a restarted Redis
    await eventually(lambda: a.statistics().delivering and b.statistics().delivering, within=10)
    assert a.statistics().generations == 2
    await a.unsubscribe(here, at=2)  # the ended sessions leave as the gateway makes them
    await b.unsubscribe(there, at=2)

    # The clients reconnect: everything works again.
    again_here, again_there = Recorder(user, new_id()), Recorder(user, new_id())
    await a.subscribe(again_here, at=3)
    await b.subscribe(again_there, at=3)
    await a.publish(user, stored_event(5), origin_session_id=again_here.session_id)
    await eventually(lambda: again_there.events() == [("notes", 5)])
    with trio.fail_after(5):
        await a.canary()
    assert sorted(await b.online_devices(user)) == sorted([again_here.device_id, again_there.device_id])


async def test_run_reports_started_only_once_it_delivers(
    nursery: trio.Nursery, own_redis: RedisServer, prefix: str
) -> None:
    await trio.to_thread.run_sync(own_redis.stop)
    bus = RedisBus(own_redis.url, prefix=prefix, heartbeat_ms=200, reconnect_max_s=FAST_RECONNECT_S)
    started = trio.Event()

    async def start() -> None:
        await nursery.start(serve, bus)
        started.set()

    nursery.start_soon(start)
    await eventually(lambda: bus.statistics().connect_attempts >= 3)
    assert not started.is_set()
    with pytest.raises(BusUnavailable):
        await bus.canary()

    await trio.to_thread.run_sync(own_redis.start)
    with trio.fail_after(START_TIMEOUT_S):
        await started.wait()
    assert bus.statistics().delivering
    with trio.fail_after(5):
        await bus.canary()


async def test_a_silent_redis_is_noticed_by_the_ping_and_its_sessions_are_ended(
    make_node: NodeFactory, own_redis: RedisServer
) -> None:
    bus = (await make_node(own_redis.url, reconnect_max_s=FAST_RECONNECT_S)).bus
    session = Recorder(new_id(), new_id())
    await bus.subscribe(session, at=0)

    own_redis.freeze()  # its sockets stay open: only the unanswered PING can tell
    try:
        await eventually(lambda: session.codes() == ["bus_lost"], within=10)
        assert not bus.statistics().delivering
    finally:
        own_redis.thaw()
    await eventually(lambda: bus.statistics().delivering, within=20)


async def test_publishing_and_reading_presence_raise_bus_unavailable_while_redis_is_down(
    make_node: NodeFactory, own_redis: RedisServer
) -> None:
    bus = (await make_node(own_redis.url, reconnect_max_s=FAST_RECONNECT_S)).bus
    user = new_id()
    await trio.to_thread.run_sync(own_redis.stop)

    with pytest.raises(BusUnavailable):
        await bus.publish(user, stored_event(1), origin_session_id="s")
    with pytest.raises(BusUnavailable):
        await bus.announce_user_deleted(user)
    with pytest.raises(BusUnavailable):
        await bus.online_devices(user)
    with pytest.raises(BusUnavailable):
        await bus.canary()


async def test_subscribe_is_refused_by_a_bus_that_does_not_run(redis_url: str, prefix: str) -> None:
    bus = RedisBus(redis_url, prefix=prefix)
    session = Recorder(new_id(), new_id())
    with pytest.raises(BusUnavailable):
        await bus.subscribe(session, at=0)
    await bus.unsubscribe(session, at=1)  # harmless, as after any failed subscribe
    assert bus.statistics().sessions == 0


async def test_a_subscribe_cancelled_at_any_point_is_undone_by_unsubscribe(
    make_node: NodeFactory, redis_url: str, prefix: str
) -> None:
    a, b = (await make_node()).bus, (await make_node()).bus
    user = new_id()
    watcher = Recorder(user, new_id())
    await b.subscribe(watcher, at=0)
    key = Names(prefix).presence_key(user)
    for step in range(12):
        session = Recorder(user, new_id())
        with trio.move_on_after(step * 0.0005):
            await a.subscribe(session, at=0)
        await a.unsubscribe(session, at=1)

        assert a.statistics().sessions == 0
        assert a.statistics().channels == 2
        await settle(b, user, watcher)
        entries = await redis_call(redis_url, lambda client: client.zrange(key, 0, -1))
        assert entries == [f"{watcher.device_id}/{watcher.session_id}".encode()]
        online = [device for device, up in watcher.presence() if device == session.device_id and up]
        offline = [device for device, up in watcher.presence() if device == session.device_id and not up]
        assert len(online) == len(offline) <= 1  # whatever was announced was taken back


async def test_unsubscribe_takes_effect_even_in_a_cancelled_scope(make_node: NodeFactory) -> None:
    a, b = (await make_node()).bus, (await make_node()).bus
    user, phone_id = new_id(), new_id()
    watcher, phone = Recorder(user, new_id()), Recorder(user, phone_id)
    await b.subscribe(watcher, at=0)
    await a.subscribe(phone, at=0)

    with trio.CancelScope() as scope:
        scope.cancel()
        await a.unsubscribe(phone, at=7)

    assert a.statistics().sessions == 0
    assert await b.online_devices(user) == [watcher.device_id]
    await settle(b, user, watcher)
    assert watcher.presence() == [(phone_id, True), (phone_id, False)]


async def test_a_stopped_node_leaves_no_connection_open(make_node: NodeFactory, redis_url: str) -> None:
    node = await make_node()
    await node.bus.subscribe(Recorder(new_id(), new_id()), at=0)
    await node.bus.online_devices(new_id())
    name = node.bus.client_name

    async def connections() -> int:
        listed = await redis_call(redis_url, lambda client: client.client_list())
        assert isinstance(listed, list)
        return sum(1 for entry in listed if entry.get("name") == name)

    assert await connections() >= 2  # the subscription and at least one for commands
    node.crash()
    with trio.fail_after(5):
        while await connections():  # noqa: ASYNC110 (Redis has no event to wait on)
            await trio.sleep(0.01)
