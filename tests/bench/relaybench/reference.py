"""The reference of the benchmark: a bare relay in memory on trio-websocket.

    python -m relaybench.reference --port PORT

It does the least a relay can do for the same workload: a ``hello`` names the user and the device (no
signature), a ``publish`` gets the stream's next seq (in a dict), an ``ack`` goes back and an ``event``
to every other connection of the user, each through a bounded queue and a writer task of its own (a
connection that does not keep up is closed, as relay closes slow consumers). Nothing is durable,
validated or authenticated: it is the yardstick, the cost of the network and of Python around it.
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

QUEUE_FRAMES = 256

heads: dict[tuple[str, str], int] = {}
users: dict[str, dict[str, trio.MemorySendChannel[str]]] = {}


async def writer(ws: WebSocketConnection, frames: trio.MemoryReceiveChannel[str]) -> None:
    try:
        async for frame in frames:
            await ws.send_message(frame)
    except ConnectionClosed:
        pass


async def handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        hello = json.loads(await ws.get_message())
        user, device = hello["user"], hello["device"]
        send, receive = trio.open_memory_channel[str](QUEUE_FRAMES)
        sessions = users.setdefault(user, {})
        sessions[device] = send
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer, ws, receive)
                await send.send('{"type":"welcome"}')
                while True:
                    try:
                        msg = json.loads(await ws.get_message())
                    except ConnectionClosed:
                        send.close()
                        return
                    if msg.get("type") != "publish":
                        continue
                    key = (user, msg["stream"])
                    seq = heads[key] = heads.get(key, 0) + 1
                    await send.send(
                        json.dumps({"type": "ack", "id": msg["id"], "seq": seq, "ref": msg.get("ref")})
                    )
                    event = json.dumps(
                        {
                            "type": "event",
                            "stream": msg["stream"],
                            "seq": seq,
                            "id": msg["id"],
                            "device_id": device,
                            "body": msg["body"],
                        }
                    )
                    for other, queue in list(sessions.items()):
                        if other != device:
                            try:
                                queue.send_nowait(event)
                            except trio.WouldBlock:
                                queue.close()
        finally:
            if sessions.get(device) is send:
                del sessions[device]
    except ConnectionClosed:
        pass


async def main(port: int) -> None:
    await serve_websocket(handler, "127.0.0.1", port, ssl_context=None, max_message_size=1 << 20)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    trio.run(partial(main, parser.parse_args().port))
