"""A live relay for loopback tests, and raw WebSocket helpers for the frames a polite client never sends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from relay.app import RelayApp, create_app
from relay.client import DeviceCredentials, RelayHttp
from relay.client.connection import LiveMessage
from relay.config import Settings
from relay.protocol import codec, messages
from relay.protocol.client_handshake import ClientHandshake
from relay.serving import serve
from relay.store.base import Store

#: Cap of one loopback test (server start-up included; a few seconds at most when all is well).
CAP_S = 30


@attrs.define(eq=False)
class LiveServer:
    url: str
    app: RelayApp
    settings: Settings

    @property
    def store(self) -> Store:
        return self.app.services.runtime.store

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/ws"

    async def new_user(self) -> str:
        now = self.app.services.runtime.clock.now_ms()
        new = await self.store.create_user(now_ms=now, token_ttl_ms=900_000)
        return new.user_id

    async def token(self, user_id: str) -> str:
        issued = await self.store.create_token(
            user_id=user_id, now_ms=self.app.services.runtime.clock.now_ms(), token_ttl_ms=900_000
        )
        return issued.token

    async def enroll(self, name: str, user_id: str | None = None) -> DeviceCredentials:
        """A new device (of a new user unless ``user_id``), enrolled over HTTP."""
        if user_id is None:
            user_id = await self.new_user()
        token = await self.token(user_id)
        async with RelayHttp(self.url) as http:
            return await http.enroll(token, name)

    async def devices(self, count: int, *, user_id: str | None = None) -> list[DeviceCredentials]:
        """``count`` devices of one user (a new one unless given)."""
        if user_id is None:
            user_id = await self.new_user()
        return [await self.enroll(f"device {n}", user_id) for n in range(count)]


@asynccontextmanager
async def running_server(data_dir: Path, **settings: Any) -> AsyncIterator[LiveServer]:
    """``relay serve`` in this process on 127.0.0.1 and a free port, until the block ends."""
    config = Settings(data_dir=data_dir, host="127.0.0.1", port=0, **settings)
    app = create_app(config)
    stop = trio.Event()
    with trio.fail_after(CAP_S):
        async with trio.open_nursery() as nursery:
            urls: list[str] = await nursery.start(partial(serve, config, shutdown_trigger=stop.wait, app=app))
            try:
                yield LiveServer(url=urls[0], app=app, settings=config)
            finally:
                stop.set()


LiveChannel = tuple[trio.MemorySendChannel[LiveMessage], trio.MemoryReceiveChannel[LiveMessage]]


def live_channel(size: float = 10_000) -> LiveChannel:
    return trio.open_memory_channel[LiveMessage](size)


async def next_live(receive: trio.MemoryReceiveChannel[LiveMessage], kind: type[Any]) -> Any:
    """The next live message of type ``kind`` (others are skipped)."""
    while True:
        msg = await receive.receive()
        if isinstance(msg, kind):
            return msg


class RawSession:
    """A hand-driven WebSocket session, for frames the reference client never sends."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.welcome: messages.Welcome | None = None

    async def send(self, obj: object) -> None:
        await self.ws.send_message(obj if isinstance(obj, str | bytes) else json.dumps(obj))

    async def receive(self) -> messages.ServerMessage:
        return codec.decode_server(await self.ws.get_message())

    async def handshake(self, creds: DeviceCredentials) -> messages.Welcome:
        machine = ClientHandshake(creds.key, creds.device_id, creds.server_key)
        await self.ws.send_message(codec.encode_client(machine.hello()))
        auth = machine.receive_challenge(await self.receive())
        await self.ws.send_message(codec.encode_client(auth))
        self.welcome = machine.receive_welcome(await self.receive())
        return self.welcome

    async def until_closed(self) -> tuple[list[messages.ServerMessage], int | None, str | None]:
        """Every frame until the server closes, and the close code and reason."""
        frames: list[messages.ServerMessage] = []
        try:
            while True:
                frames.append(await self.receive())
        except ConnectionClosed as closed:
            reason = closed.reason
        return frames, (reason.code if reason else None), (reason.reason if reason else None)


@asynccontextmanager
async def raw_session(url: str, **options: Any) -> AsyncIterator[RawSession]:
    async with open_websocket_url(url, subprotocols=["relay.v1"], **options) as ws:
        yield RawSession(ws)


class Proxy:
    """A TCP proxy in front of the server, to break connections on purpose.

    ``hold_replies()`` stops forwarding what the server sends (a request reaches the server, its answer
    never reaches the client); ``cut()`` closes every connection through the proxy at once.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._streams: list[trio.SocketStream] = []
        self._replies = trio.Event()
        self._replies.set()
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold_replies(self) -> None:
        self._replies = trio.Event()

    def release_replies(self) -> None:
        self._replies.set()

    async def cut(self) -> None:
        streams, self._streams = self._streams, []
        for stream in streams:
            await trio.aclose_forcefully(stream)
        self.release_replies()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        self._streams += [client, upstream]

        async def pump(source: trio.SocketStream, sink: trio.SocketStream, replies: bool) -> None:
            try:
                while data := await source.receive_some(65536):
                    if replies:
                        await self._replies.wait()
                    await sink.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                await trio.aclose_forcefully(sink)
                await trio.aclose_forcefully(source)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, upstream, False)
            nursery.start_soon(pump, upstream, client, True)


@asynccontextmanager
async def proxy_to(server: LiveServer) -> AsyncIterator[Proxy]:
    port = int(server.url.rsplit(":", 1)[1])
    proxy = Proxy(port)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()


def via(creds: DeviceCredentials, proxy: Proxy) -> DeviceCredentials:
    """The same device, reaching its server through ``proxy``."""
    return attrs.evolve(creds, url=proxy.url)
