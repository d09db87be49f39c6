"""The Redis bus delivers events and notices across nodes (PROTOCOL.md §4.1, §4.3, §4.5, §5)."""

from __future__ import annotations

import orjson
import redis
import trio
from redis_bus_helpers import NodeFactory, Recorder, eventually, new_id, redis_call, settle, stored_event

from relay.bus.base import DeviceNote, note_to_json
from relay.bus.redis import RedisBus
from relay.bus.redis_presence import Names
from relay.errors import AccountDeleted, DeviceRevoked


async def test_an_event_reaches_every_session_of_the_user_on_every_node_but_the_publisher_and_no_other_user(
    make_node: NodeFactory,
) -> None:
    a, b, c = [(await make_node()).bus for _ in range(3)]
    user, stranger_user = new_id(), new_id()
    publisher = Recorder(user, new_id())
    same_node = Recorder(user, new_id())
    other_node = Recorder(user, new_id())
    stranger = Recorder(stranger_user, new_id())
    await a.subscribe(publisher, at=1)
    await a.subscribe(same_node, at=1)
    await b.subscribe(other_node, at=1)
    await c.subscribe(stranger, at=1)

    await a.publish(user, stored_event(7), origin_session_id=publisher.session_id)
    await eventually(lambda: bool(same_node.events() and other_node.events()))
    await settle(c, stranger_user, stranger)

    assert same_node.events() == [("notes", 7)]
    assert other_node.events() == [("notes", 7)]
    assert publisher.events() == []
    assert stranger.events() == []


async def test_an_event_is_encoded_once_and_every_node_hands_on_the_same_text(make_node: NodeFactory) -> None:
    a, b = (await make_node()).bus, (await make_node()).bus
    user = new_id()
    here, there = Recorder(user, new_id()), Recorder(user, new_id())
    await a.subscribe(here, at=1)
    await b.subscribe(there, at=1)
    await settle(a, user, here, there)
    here.raw.clear()
    there.raw.clear()

    await a.publish(user, stored_event(1), origin_session_id="elsewhere")
    await eventually(lambda: bool(here.raw and there.raw))

    assert here.raw == there.raw
    assert orjson.loads(here.raw[0])["type"] == "event"


async def test_a_node_listens_to_a_user_only_while_it_holds_a_session_of_it(
    make_node: NodeFactory, redis_url: str, prefix: str
) -> None:
    bus = (await make_node()).bus
    user = new_id()
    channel = Names(prefix).user_channel(user)

    async def listeners() -> int:
        answer = await redis_call(redis_url, lambda client: client.pubsub_numsub(channel))
        assert isinstance(answer, list)
        return int(answer[0][1])

    assert await listeners() == 0
    first, second = Recorder(user, new_id()), Recorder(user, new_id())
    await bus.subscribe(first, at=1)
    assert await listeners() == 1  # subscribe() returned: Redis had confirmed the subscription
    await bus.subscribe(second, at=1)
    await bus.unsubscribe(first, at=2)
    assert await listeners() == 1
    assert bus.statistics().channels == 3  # control, own node, this user
    await bus.unsubscribe(second, at=3)
    with trio.fail_after(5):
        while await listeners() != 0:  # noqa: ASYNC110 (Redis has no event to wait on)
            await trio.sleep(0.01)
    assert bus.statistics().channels == 2


async def test_an_event_published_as_soon_as_subscribe_returns_is_not_missed(make_node: NodeFactory) -> None:
    a, b = (await make_node()).bus, (await make_node()).bus
    for round_ in range(20):  # each round a user a's node never listened to before
        user = new_id()
        listener = Recorder(user, new_id())
        await a.subscribe(listener, at=1)
        await b.publish(user, stored_event(round_ + 1), origin_session_id="elsewhere")
        await eventually(lambda listener=listener: bool(listener.events()))  # type: ignore[misc]
        await a.unsubscribe(listener, at=2)


async def test_device_notices_reach_the_other_devices_on_every_node(make_node: NodeFactory) -> None:
    a, b = (await make_node()).bus, (await make_node()).bus
    user, phone_id = new_id(), new_id()
    phone, laptop = Recorder(user, phone_id), Recorder(user, new_id())
    await a.subscribe(phone, at=1)
    await b.subscribe(laptop, at=1)

    await a.announce_device(user, "renamed", phone_id, "Pocket", 7)
    await a.announce_device(user, "enrolled", new_id(), "Tablet", 8)
    await settle(a, user, phone, laptop)

    assert [(n["change"], n["name"]) for n in laptop.notices()] == [
        ("renamed", "Pocket"),
        ("enrolled", "Tablet"),
    ]
    assert [n["change"] for n in phone.notices()] == ["renamed", "enrolled"]  # its own rename too
    assert laptop.notices()[0] == {
        "type": "device",
        "change": "renamed",
        "device_id": phone_id,
        "name": "Pocket",
        "at": 7,
    }


async def test_a_revoked_device_is_ended_on_every_node_and_the_others_hear_of_it(
    make_node: NodeFactory,
) -> None:
    a, b = (await make_node()).bus, (await make_node()).bus
    user, phone_id = new_id(), new_id()
    phone_a, phone_b, laptop = Recorder(user, phone_id), Recorder(user, phone_id), Recorder(user, new_id())
    await a.subscribe(laptop, at=1)
    await a.subscribe(phone_a, at=1)
    await b.subscribe(phone_b, at=1)  # replaces phone_a: still, both must hear of the revocation
    await eventually(lambda: bool(phone_a.ended))

    await b.announce_device(user, "revoked", phone_id, "Phone", 9)

    await eventually(lambda: any(isinstance(e, DeviceRevoked) for e in phone_b.ended))
    await eventually(lambda: any(isinstance(e, DeviceRevoked) for e in phone_a.ended))
    await eventually(lambda: [n["change"] for n in laptop.notices()] == ["revoked"])


async def test_a_process_that_does_not_run_the_bus_can_still_revoke_and_delete(
    make_node: NodeFactory, redis_url: str, prefix: str
) -> None:
    """Like ``relay admin``: a bus that is never run publishes each announcement with a call of its own."""
    serving = (await make_node()).bus
    admin = RedisBus(redis_url, prefix=prefix)
    user, other_user, phone_id = new_id(), new_id(), new_id()
    phone, laptop, stranger = (
        Recorder(user, phone_id),
        Recorder(user, new_id()),
        Recorder(other_user, new_id()),
    )
    for sub in (phone, laptop, stranger):
        await serving.subscribe(sub, at=1)

    await admin.announce_device(user, "revoked", phone_id, "Phone", 5)
    await eventually(lambda: phone.codes() == ["device_revoked"])
    await admin.announce_user_deleted(user)

    await eventually(lambda: laptop.codes() == ["account_deleted"])
    await settle(admin, other_user, stranger)
    assert stranger.ended == []
    assert isinstance(laptop.ended[0], AccountDeleted)
    admin.close()


async def test_revocations_travel_on_the_control_channel_that_every_node_listens_to(
    make_node: NodeFactory, redis_url: str, prefix: str
) -> None:
    bus = (await make_node()).bus
    user, phone_id = new_id(), new_id()
    phone = Recorder(user, phone_id)
    await bus.subscribe(phone, at=1)
    note = DeviceNote(user_id=user, device_id=phone_id, change="revoked", frame='{"type":"device"}')

    await redis_call(
        redis_url, lambda client: client.publish(Names(prefix).control_channel, note_to_json(note))
    )

    await eventually(lambda: phone.codes() == ["device_revoked"])


async def test_a_malformed_message_is_dropped_and_delivery_goes_on(
    make_node: NodeFactory, redis_url: str, prefix: str
) -> None:
    bus = (await make_node()).bus
    user = new_id()
    listener = Recorder(user, new_id())
    await bus.subscribe(listener, at=1)
    channel = Names(prefix).user_channel(user)
    other_user_note = note_to_json(
        DeviceNote(user_id=new_id(), device_id=new_id(), change="enrolled", frame='{"type":"device"}')
    )

    def send(client: redis.Redis) -> None:
        client.publish(channel, b"not a note")
        client.publish(channel, other_user_note)  # a note of another user on this user's channel
        client.publish(Names(prefix).control_channel, b'{"kind": "nope"}')

    await redis_call(redis_url, send)
    await settle(bus, user, listener)

    assert listener.frames[-1]["type"] == "event"
    assert listener.notices() == []
    assert bus.statistics().delivering


async def test_concurrent_publishes_share_round_trips(make_node: NodeFactory) -> None:
    a, b = (await make_node()).bus, (await make_node()).bus
    user = new_id()
    listener = Recorder(user, new_id())
    await b.subscribe(listener, at=1)
    before = a.statistics()

    async with trio.open_nursery() as nursery:
        for seq in range(1, 201):
            nursery.start_soon(lambda seq=seq: a.publish(user, stored_event(seq), origin_session_id="x"))
    await eventually(lambda: len(listener.events()) == 200)

    after = a.statistics()
    assert after.published - before.published == 200
    assert after.publish_batches - before.publish_batches < 100
    assert sorted(seq for _, seq in listener.events()) == list(range(1, 201))


async def test_the_canary_comes_back_to_its_own_node(make_node: NodeFactory) -> None:
    a, b = (await make_node()).bus, (await make_node()).bus
    with trio.fail_after(5):
        await a.canary()
        await b.canary()
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(a.canary)


async def test_sessions_of_one_user_coming_and_going_at_once_never_miss_an_event_after_subscribe(
    make_node: NodeFactory, redis_url: str, prefix: str
) -> None:
    a, b = (await make_node()).bus, (await make_node()).bus
    user = new_id()

    async def session(seq: int) -> None:
        recorder = Recorder(user, new_id())
        await a.subscribe(recorder, at=0)
        await b.publish(user, stored_event(seq), origin_session_id="elsewhere")
        await eventually(lambda: ("notes", seq) in recorder.heads)
        await a.unsubscribe(recorder, at=1)

    for round_ in range(5):
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(session, round_ * 100 + n)

    channel = Names(prefix).user_channel(user)
    with trio.fail_after(5):
        while (await redis_call(redis_url, lambda client: client.pubsub_numsub(channel))) != [(channel, 0)]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert a.statistics().channels == 2
    assert a.statistics().sessions == 0
