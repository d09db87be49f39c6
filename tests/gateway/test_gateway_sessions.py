"""Sessions over time (PROTOCOL.md §4.1, §4.3, §4.5, §8): presence, replacement, heartbeats, notices,
slow consumers, the heads ticker and shutdown."""

from __future__ import annotations

from typing import Any

import trio
from gateway_harness import NOW, Client, Relay, RelayFactory
from trio.testing import MockClock

from relay.gateway.outbox import OUTBOX_FRAMES

HEARTBEAT_S = 20


async def keep_alive(client: Client) -> None:
    """Ping like a well-behaved client: whenever it has sent nothing for ``heartbeat_ms``."""
    while True:
        await trio.sleep(HEARTBEAT_S)
        await client.send({"type": "ping"})


async def assert_quiet(client: Client, seconds: float) -> None:
    """Nothing but pongs arrives for ``seconds``."""
    with trio.move_on_after(seconds):
        unexpected = await client.expect("nothing", ignore=["pong"])
        raise AssertionError(f"nothing changed, yet {unexpected}")


async def test_a_devices_first_session_is_announced_online_and_its_last_offline(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user = await relay.user()
    laptop, phone = await relay.device(user), await relay.device(user)
    laptop_client = await relay.connect(laptop)
    await trio.sleep(1)

    phone_client = await relay.connect(phone)
    assert await laptop_client.expect("presence") == {
        "type": "presence",
        "device_id": phone.device_id,
        "online": True,
        "at": NOW + 1000,
    }
    assert phone_client.welcome is not None
    assert phone_client.welcome["online"] == [laptop.device_id]
    await trio.sleep(1)
    await phone_client.disconnect()
    assert await laptop_client.expect("presence") == {
        "type": "presence",
        "device_id": phone.device_id,
        "online": False,
        "at": NOW + 2000,
    }
    assert await relay.bus.online_devices(user) == [laptop.device_id]


async def test_welcome_online_lists_only_the_users_other_devices_with_a_live_session(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user = await relay.user()
    a, b, offline = await relay.device(user), await relay.device(user), await relay.device(user)
    await relay.connect(await relay.device(await relay.user()))  # another user's device
    await relay.connect(a)
    await relay.connect(b)
    assert offline  # enrolled, never connected
    client = await relay.connect(a)  # a second session of a (it replaces the first)
    assert client.welcome is not None
    assert client.welcome["online"] == [b.device_id]


async def test_a_new_session_of_a_device_closes_the_older_with_4001_and_no_presence_change(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user = await relay.user()
    laptop, phone = await relay.device(user), await relay.device(user)
    laptop_client = await relay.connect(laptop)
    old = await relay.connect(phone)
    await laptop_client.expect("presence")

    new = await relay.connect(phone)

    error, code, _ = await old.expect_close()
    assert (error["code"], code) == ("session_replaced", 4001)
    await trio.sleep(1)
    assert laptop_client.pending() == []
    assert await relay.bus.online_devices(user) == [laptop.device_id, phone.device_id]
    assert (await relay.publish(laptop_client, "notes", "e1"))["type"] == "ack"
    assert (await new.expect("event"))["id"] == "e1"


async def test_a_silent_client_is_closed_between_two_and_three_heartbeats_and_shows_offline(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user = await relay.user()
    laptop, phone = await relay.device(user), await relay.device(user)
    laptop_client = await relay.connect(laptop)
    relay.nursery.start_soon(keep_alive, laptop_client)
    phone_client = await relay.connect(phone)
    await laptop_client.expect("presence")
    await trio.sleep(15)
    await phone_client.send({"type": "ping"})
    await phone_client.expect("pong")
    last_frame = trio.current_time()

    error, code, _ = await phone_client.expect_close()

    assert (error["code"], code) == ("heartbeat_timeout", 1001)
    assert 2 * HEARTBEAT_S <= trio.current_time() - last_frame <= 3 * HEARTBEAT_S
    presence = await laptop_client.expect("presence", ignore=["pong"])
    assert (presence["device_id"], presence["online"]) == (phone.device_id, False)
    assert await relay.bus.online_devices(user) == [laptop.device_id]


async def test_a_client_that_pings_stays_connected(relay: Relay, autojump_clock: MockClock) -> None:
    client = await relay.connect(await relay.device(await relay.user()))
    relay.nursery.start_soon(keep_alive, client)
    await trio.sleep(10 * HEARTBEAT_S)
    assert all(frame["type"] == "websocket.send" for frame in client.pending())
    assert relay.gateway.session_count == 1


async def test_device_notices_reach_the_other_sessions_and_a_revoked_device_is_closed_1008(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user = await relay.user()
    laptop, phone = await relay.device(user), await relay.device(user)
    laptop_client = await relay.connect(laptop)
    phone_client = await relay.connect(phone)
    await laptop_client.expect("presence")

    await relay.bus.announce_device(user, "enrolled", "0f8fad5b-d9cb-469f-a165-70867728950e", "Tablet", NOW)
    await relay.bus.announce_device(user, "renamed", phone.device_id, "Pocket", NOW + 1)
    await relay.bus.announce_device(user, "revoked", phone.device_id, "Pocket", NOW + 2)

    notices = [await laptop_client.expect("device") for _ in range(3)]
    assert [(n["change"], n["name"]) for n in notices] == [
        ("enrolled", "Tablet"),
        ("renamed", "Pocket"),
        ("revoked", "Pocket"),
    ]
    assert (await phone_client.expect("device"))["change"] == "enrolled"
    assert (await phone_client.expect("device"))["change"] == "renamed"
    error, code, _ = await phone_client.expect_close()
    assert (error["code"], code) == ("device_revoked", 1008)


async def test_a_deleted_account_closes_every_session_of_the_user_1008(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user = await relay.user()
    clients = [await relay.connect(await relay.device(user)) for _ in range(2)]
    await relay.bus.announce_user_deleted(user)
    for client in clients:
        error, code, _ = await client.expect_close(ignore=["presence"])
        assert (error["code"], code) == ("account_deleted", 1008)


async def test_a_session_that_does_not_read_its_live_events_is_closed_4008_slow_consumer(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user = await relay.user()
    writer_device, reader_device = await relay.device(user), await relay.device(user)
    writer = await relay.connect(writer_device)
    slow = await relay.connect(reader_device, buffer=0)
    await writer.expect("presence")

    for n in range(OUTBOX_FRAMES + 10):
        await writer.publish("notes", f"e{n}", ts=relay.now())
    for _ in range(OUTBOX_FRAMES + 10):
        await writer.expect("ack", ignore=["presence"])

    frames = []
    while True:
        frame = await slow.receive()
        frames.append(frame)
        if frame["type"] == "error":
            break
    assert frame["code"] == "slow_consumer"
    await slow.expect_closed(4008, "slow_consumer")
    assert len(frames) < OUTBOX_FRAMES + 10
    assert await relay.bus.online_devices(user) == [writer_device.device_id]


async def test_heads_are_sent_each_heartbeat_to_every_session_whose_streams_changed(
    relay: Relay, autojump_clock: MockClock
) -> None:
    await relay.nursery.start(relay.gateway.run)
    user = await relay.user()
    phone_client = await relay.connect(await relay.device(user))
    laptop_client = await relay.connect(await relay.device(user))
    await phone_client.expect("presence")
    relay.nursery.start_soon(keep_alive, phone_client)
    relay.nursery.start_soon(keep_alive, laptop_client)
    start = trio.current_time()

    for n in range(3):
        assert (await relay.publish(phone_client, "notes", f"e{n}"))["type"] == "ack"
    assert (await relay.publish(phone_client, "todo", "t1"))["type"] == "ack"

    for client in (phone_client, laptop_client):  # the publisher's own session included
        heads = await client.expect("heads", ignore=["event"])
        assert heads == {"type": "heads", "streams": {"notes": 3, "todo": 1}}
        assert trio.current_time() - start <= HEARTBEAT_S
    await assert_quiet(laptop_client, 3 * HEARTBEAT_S)


async def test_heads_already_in_the_welcome_are_not_sent_again(
    relay: Relay, autojump_clock: MockClock
) -> None:
    await relay.nursery.start(relay.gateway.run)
    user = await relay.user()
    phone_client = await relay.connect(await relay.device(user))
    relay.nursery.start_soon(keep_alive, phone_client)
    await relay.publish(phone_client, "notes", "e1")
    await phone_client.expect("heads")
    laptop_client = await relay.connect(await relay.device(user))
    relay.nursery.start_soon(keep_alive, laptop_client)
    assert laptop_client.welcome is not None
    assert laptop_client.welcome["streams"] == {"notes": 1}
    await assert_quiet(laptop_client, 3 * HEARTBEAT_S)


async def test_shutdown_acks_what_was_read_then_closes_sessions_1001_spread_over_the_drain(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(drain_timeout_ms=10_000)
    user = await relay.user()
    first = await relay.connect(await relay.device(user))
    second = await relay.connect(await relay.device(user))
    await first.expect("presence")
    await first.publish("notes", "e1", ts=relay.now())
    start = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.gateway.shutdown)
        assert (await first.expect("ack"))["seq"] == 1
        closed_at = []
        for client in (first, second):
            error, code, _ = await client.expect_close(ignore=["event", "presence"])
            assert (error["code"], code) == ("going_away", 1001)
            closed_at.append(trio.current_time() - start)
    assert closed_at == [0, 5]  # the first at once, the last half-way: 2 sessions over 10 s

    late = await relay.open()
    error, code, _ = await late.expect_close()
    assert (error["code"], code) == ("going_away", 1001)


async def test_the_wrapper_serves_v1_ws_and_leaves_everything_else_to_the_inner_app(
    relay: Relay, autojump_clock: MockClock
) -> None:
    seen: list[tuple[str, str | None]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], scope.get("path")))

    app = relay.gateway.wrap_asgi(inner)
    for scope in (
        {"type": "http", "path": "/v1/ws"},
        {"type": "websocket", "path": "/v1/other"},
        {"type": "lifespan"},
    ):
        await app(scope, None, None)  # type: ignore[arg-type]
    assert seen == [("http", "/v1/ws"), ("websocket", "/v1/other"), ("lifespan", None)]

    client = Client(relay.gateway, relay.server_key.public_key_b64, app=app)
    await client.open(relay.nursery)  # the WebSocket scope of /v1/ws, through the wrapper
    await client.handshake(await relay.device(await relay.user()))
