"""Frames after the welcome (PROTOCOL.md §4, §4.6): what closes the session and what only gets an error."""

from __future__ import annotations

import trio
from gateway_harness import NOW, Client, Relay, RelayFactory
from trio.testing import MockClock


async def connected(relay: Relay) -> Client:
    return await relay.connect(await relay.device(await relay.user()))


async def test_a_binary_frame_closes_1003(relay: Relay, autojump_clock: MockClock) -> None:
    client = await connected(relay)
    await client.send_bytes(b'{"type": "ping"}')
    error, code, _ = await client.expect_close()
    assert (error["code"], code) == ("binary_frame", 1003)


async def test_a_binary_frame_during_the_handshake_closes_1003(
    relay: Relay, autojump_clock: MockClock
) -> None:
    client = await relay.open()
    await client.send_bytes(b"\x00")
    error, code, _ = await client.expect_close()
    assert (error["code"], code) == ("binary_frame", 1003)


async def test_a_frame_of_exactly_max_frame_bytes_is_read_and_one_byte_more_closes_1009(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(max_event_bytes=1000, max_frame_bytes=5096)
    client = await connected(relay)
    ping = '{"type":"ping","ref":"é"}'  # é is two bytes: the limit counts UTF-8 bytes, not characters
    padding = 5096 - len(ping.encode())
    await client.send_text(ping[:-1] + " " * padding + "}")
    assert (await client.expect("pong"))["ref"] == "é"

    await client.send_text(ping[:-1] + " " * (padding + 1) + "}")
    error, code, _ = await client.expect_close()
    assert (error["code"], code) == ("frame_too_large", 1009)


async def test_a_frame_that_is_not_an_i_json_object_closes_1007(
    relay: Relay, autojump_clock: MockClock
) -> None:
    for text in ("{", "[1]", '{"type": "ping", "type": "ping"}', '{"n": NaN}'):
        client = await connected(relay)
        await client.send_text(text)
        error, code, _ = await client.expect_close()
        assert (error["code"], code) == ("invalid_json", 1007), text


async def test_wrong_types_get_bad_request_with_the_path_and_the_session_stays_open(
    relay: Relay, autojump_clock: MockClock
) -> None:
    client = await connected(relay)
    await client.send({"type": "replay", "stream": "notes", "after": "zero", "ref": "r1"})
    error = await client.expect("error")
    assert error == {
        "type": "error",
        "code": "bad_request",
        "message": "$.after: must be an integer in 0..2^53-1",
        "ref": "r1",
        "stream": "notes",
        "path": "$.after",
    }
    await client.send({"type": "streams", "limit": 0})
    assert (await client.expect("error"))["path"] == "$.limit"
    await client.send({"type": "ping", "extra": 1})
    assert (await client.expect("error"))["path"] == "$.extra"
    await client.send({"type": "ping"})
    await client.expect("pong")


async def test_an_unknown_type_gets_unknown_type_and_the_session_stays_open(
    relay: Relay, autojump_clock: MockClock
) -> None:
    client = await connected(relay)
    await client.send({"type": "subscribe", "ref": "r2"})
    error = await client.expect("error")
    assert (error["code"], error["ref"]) == ("unknown_type", "r2")
    await client.send({"type": "ping"})
    await client.expect("pong")


async def test_a_ping_is_answered_with_a_pong_carrying_the_server_time_and_the_ref(
    relay: Relay, autojump_clock: MockClock
) -> None:
    client = await connected(relay)
    await trio.sleep(5)
    await client.send({"type": "ping", "ref": "p"})
    assert await client.expect("pong") == {"type": "pong", "server_time": NOW + 5000, "ref": "p"}


async def test_a_disconnect_ends_the_session_without_anything_sent(
    relay: Relay, autojump_clock: MockClock
) -> None:
    client = await connected(relay)
    await client.disconnect()
    await client.ended.wait()
    assert client.pending() == []
    assert relay.gateway.session_count == 0
