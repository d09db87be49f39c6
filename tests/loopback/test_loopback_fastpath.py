"""The send fast path (relay.gateway.fastpath, relay.serving.FastTCPServer): frames on the wire exactly
as wsproto writes them, used when it is on and not when it is off, and left alone for connections
that negotiated permessage-deflate. (The whole loopback suite runs with it on and off: conftest.py.)"""

from __future__ import annotations

import json

import pytest
import trio
import wsproto
from loopback_support import CAP_S, LiveServer, live_channel, next_live
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from relay import serving
from relay.client import connect
from relay.gateway import fastpath
from relay.protocol import codec, messages
from relay.protocol.client_handshake import ClientHandshake


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 200_000])
def test_a_frame_is_encoded_exactly_as_wsproto_encodes_it(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)
    server = wsproto.frame_protocol.FrameProtocol(client=False, extensions=[])
    assert fastpath.encode_text_frame(text.encode()) == server.send_data(text, fin=True)


async def test_with_the_fast_path_an_events_frame_is_encoded_once_and_written_directly(
    server: LiveServer,
) -> None:
    devices = await server.devices(4)
    channels = [live_channel() for _ in devices[1:]]
    fastpath._encoded.clear()
    direct_before = serving.FAST_SEND.direct
    with trio.fail_after(CAP_S):
        async with (
            connect(devices[0]) as a,
            connect(devices[1], live=channels[0][0]),
            connect(devices[2], live=channels[1][0]),
            connect(devices[3], live=channels[2][0]),
        ):
            await a.publish("notes", {"once": True})
            got = [(await next_live(receive, messages.Event)).event for _, receive in channels]
    assert {e.body for e in got} == {'{"once":true}'}
    fast = server.settings.fast_send
    event_frames = [text for text, _ in fastpath._encoded.values() if text.startswith('{"type":"event"')]
    assert len(event_frames) == (1 if fast else 0)  # one encoding for the three recipients
    assert (serving.FAST_SEND.direct > direct_before) is fast


async def test_a_connection_that_negotiated_permessage_deflate_gets_frames_it_can_read(
    server: LiveServer,
) -> None:
    alice, bob = await server.devices(2)
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with trio.fail_after(CAP_S):
        stream = await trio.open_tcp_stream(host, int(port))
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        deflate = PerMessageDeflate()
        await stream.send_all(
            ws.send(Request(host=host, target="/v1/ws", subprotocols=["relay.v1"], extensions=[deflate]))
        )

        async def next_event() -> object:
            while True:
                for event in ws.events():
                    if isinstance(event, AcceptConnection | TextMessage):
                        return event
                ws.receive_data(await stream.receive_some(65536))

        accepted = await next_event()
        assert isinstance(accepted, AcceptConnection)
        assert deflate.enabled()  # the server agreed to compress
        machine = ClientHandshake(bob.key, bob.device_id, bob.server_key)

        async def send(msg: messages.ClientMessage) -> None:
            await stream.send_all(ws.send(TextMessage(data=codec.encode_client(msg))))

        async def receive() -> messages.ServerMessage:
            event = await next_event()
            assert isinstance(event, TextMessage)
            return codec.decode_server(event.data)

        await send(machine.hello())
        await send(machine.receive_challenge(await receive()))
        machine.receive_welcome(await receive())
        async with connect(alice) as a:
            ack = await a.publish("notes", {"compressed": "x" * 500})
            while True:
                msg = await receive()
                if isinstance(msg, messages.Event):
                    break
        await stream.aclose()
    assert (msg.event.seq, json.loads(msg.event.body)) == (ack.seq, {"compressed": "x" * 500})


async def test_the_upgrade_answer_carries_the_request_id_like_every_answer(server: LiveServer) -> None:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    answers = []
    with trio.fail_after(CAP_S):
        for sent in ("client-chosen.id-1", "not valid!"):
            stream = await trio.open_tcp_stream(host, int(port))
            ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
            await stream.send_all(
                ws.send(Request(host=host, target="/v1/ws", extra_headers=[(b"x-request-id", sent.encode())]))
            )
            accepted = None
            while accepted is None:
                ws.receive_data(await stream.receive_some(65536))
                accepted = next((e for e in ws.events() if isinstance(e, AcceptConnection)), None)
            answers.append(dict(accepted.extra_headers).get(b"x-request-id", b"").decode())
            await stream.aclose()
    assert answers[0] == "client-chosen.id-1"
    assert answers[1] not in ("", "not valid!")
    assert len(answers[1]) == 32
