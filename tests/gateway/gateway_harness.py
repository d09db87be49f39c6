"""An in-process client of :meth:`relay.gateway.Gateway.handle`, speaking raw ASGI over memory channels.

The channel towards the server is unbuffered, so a client's ``send`` completes only when the gateway
reads the frame: tests see the reader stop under back-pressure. The channel towards the client is
unbounded unless a test asks otherwise (a slow consumer). Every wait is capped in virtual time.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import attrs
import orjson
import trio

from relay import crypto
from relay.bus.base import Bus
from relay.clock import TrioClock
from relay.config import Settings
from relay.crypto import SigningKey
from relay.gateway import Gateway
from relay.ops.metrics import Metrics
from relay.protocol import messages
from relay.protocol.client_handshake import ClientHandshake
from relay.protocol.codec import decode_server, encode_client
from relay.protocol.names import device_name_key, normalize_device_name
from relay.store.base import Enrollment, Store
from relay.store.memory import MemoryStore

NOW = 1_764_000_000_000
TOKEN_TTL_MS = 900_000

#: Virtual seconds any single wait of a test may take before the test fails.
CAP_S = 3600


class Closed(Exception):
    """The server closed the WebSocket."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed {code} {reason}")
        self.code = code
        self.reason = reason


@attrs.frozen
class Device:
    user_id: str
    device_id: str
    key: SigningKey
    name: str


class Client:
    """One WebSocket connection to the gateway."""

    def __init__(
        self,
        gateway: Gateway,
        server_key: str,
        *,
        subprotocols: Iterable[str] = ("relay.v1",),
        query_string: bytes = b"",
        buffer: float = math.inf,
        app: Any = None,
        client: tuple[str, int] | None = None,
    ) -> None:
        self.gateway = gateway
        #: The ASGI app the connection goes to: the gateway's handler unless a test wraps it.
        self.app = app if app is not None else gateway.handle
        self.server_key = server_key
        self.scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "path": "/v1/ws",
            "raw_path": b"/v1/ws",
            "query_string": query_string,
            "headers": [],
            "subprotocols": list(subprotocols),
        }
        if client is not None:  # the peer's address, as a server puts it (absent: a Unix socket)
            self.scope["client"] = list(client)
        self._to_server, self._server_receives = trio.open_memory_channel[dict[str, Any]](0)
        self._server_sends, self._from_server = trio.open_memory_channel[dict[str, Any]](buffer)
        self.ended = trio.Event()
        self._closed_by_server: int | None = None
        self.accepted: dict[str, Any] | None = None
        self.welcome: dict[str, Any] | None = None
        self.challenge: dict[str, Any] | None = None

    async def open(self, nursery: trio.Nursery) -> None:
        """Start the gateway's handler for this connection and complete the upgrade."""
        nursery.start_soon(self._serve)
        await self._put({"type": "websocket.connect"})
        message = await self._next()
        assert message["type"] == "websocket.accept", message
        self.accepted = message

    async def _serve(self) -> None:
        try:
            await self.app(self.scope, self._receive_for_server, self._send_from_server)
        finally:
            self.ended.set()

    async def _send_from_server(self, message: dict[str, Any]) -> None:
        if message.get("type") == "websocket.close":
            self._closed_by_server = message.get("code", 1000)
        await self._server_sends.send(message)

    async def _receive_for_server(self) -> dict[str, Any]:
        # Once the server has sent its close, this peer answers it at once, as a real one does: the
        # server (Hypercorn) then hands the app ``websocket.disconnect``.
        if self._closed_by_server is not None:
            await trio.lowlevel.checkpoint()
            return {"type": "websocket.disconnect", "code": self._closed_by_server}
        return await self._server_receives.receive()

    async def _put(self, message: dict[str, Any]) -> None:
        with trio.fail_after(CAP_S):
            await self._to_server.send(message)

    async def _next(self) -> dict[str, Any]:
        with trio.fail_after(CAP_S):
            return await self._from_server.receive()

    # --- sending -----------------------------------------------------------------------------------------

    async def send(self, obj: object) -> None:
        await self.send_text(orjson.dumps(obj).decode())

    async def send_text(self, text: str) -> None:
        await self._put({"type": "websocket.receive", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        await self._put({"type": "websocket.receive", "bytes": data})

    async def disconnect(self) -> None:
        await self._put({"type": "websocket.disconnect", "code": 1000})

    # --- receiving ---------------------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        """The next frame the server sent, parsed; :class:`Closed` if it closed instead."""
        message = await self._next()
        if message["type"] == "websocket.close":
            raise Closed(message["code"], message["reason"])
        assert message["type"] == "websocket.send", message
        text = message["text"]
        decode_server(text, strict=True)  # every frame is a valid server message of the protocol
        frame: dict[str, Any] = orjson.loads(text)
        return frame

    async def expect(self, kind: str, *, ignore: Iterable[str] = ()) -> dict[str, Any]:
        """The next frame, which must be of type ``kind`` (frames of the ``ignore`` types are skipped)."""
        skipped = set(ignore)
        while True:
            frame = await self.receive()
            if frame["type"] in skipped:
                continue
            assert frame["type"] == kind, frame
            return frame

    async def expect_close(self, *, ignore: Iterable[str] = ()) -> tuple[dict[str, Any], int, str]:
        """The ``error`` frame that precedes the server's close, and the close code and reason."""
        error = await self.expect("error", ignore=ignore)
        message = await self._next()
        assert message["type"] == "websocket.close", message
        assert message["reason"] == error["code"]  # §4.6: the close reason is the error's code
        return error, message["code"], message["reason"]

    def pending(self) -> list[dict[str, Any]]:
        """What the server has sent and the test has not read yet, without waiting."""
        frames = []
        while True:
            try:
                message = self._from_server.receive_nowait()
            except trio.WouldBlock:
                return frames
            frames.append(message)

    # --- the handshake -----------------------------------------------------------------------------------

    async def authenticate(self, device: Device) -> dict[str, Any]:
        """``hello`` and ``auth`` as ``device`` with real signatures; returns the server's next frame."""
        machine = ClientHandshake(device.key, device.device_id, self.server_key)
        await self.send_text(encode_client(machine.hello()))
        self.challenge = await self.expect("challenge")
        challenge = decode_server(orjson.dumps(self.challenge))
        assert isinstance(challenge, messages.Challenge)
        await self.send_text(encode_client(machine.receive_challenge(challenge)))
        answer = await self.receive()
        if answer["type"] == "welcome":
            welcome = decode_server(orjson.dumps(answer))
            assert isinstance(welcome, messages.Welcome)
            machine.receive_welcome(welcome)
        return answer

    async def handshake(self, device: Device) -> dict[str, Any]:
        """Authenticate as ``device``; returns the ``welcome``."""
        answer = await self.authenticate(device)
        assert answer["type"] == "welcome", answer
        self.welcome = answer
        return answer

    async def expect_closed(self, code: int, reason: str) -> None:
        """The next thing the server does is closing with ``code`` and ``reason``."""
        message = await self._next()
        assert message == {"type": "websocket.close", "code": code, "reason": reason}

    async def publish(
        self, stream: str, event_id: str, body: object = None, *, ts: int, **fields: Any
    ) -> None:
        """Send a ``publish`` (the caller reads the answer)."""
        await self.send(
            {"type": "publish", "id": event_id, "stream": stream, "ts": ts, "body": body, **fields}
        )


@attrs.define(eq=False)
class Relay:
    """A gateway and what it runs on, with helpers to make users, devices and connections."""

    nursery: trio.Nursery
    settings: Settings
    store: Store
    memory: MemoryStore
    bus: Bus
    clock: TrioClock
    server_key: SigningKey
    gateway: Gateway
    _names: itertools.count[int] = attrs.field(factory=itertools.count)

    def now(self) -> int:
        return self.clock.now_ms()

    @property
    def metrics(self) -> Metrics:
        return self.gateway.metrics

    def sample(self, name: str, **labels: str) -> float:
        """The current value of the sample ``name`` with ``labels`` (0 when it was never set)."""
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def clock_tick(self) -> None:
        """Let one millisecond of virtual time pass (so that writes are ordered in time)."""
        await trio.sleep(0.001)

    async def user(self) -> str:
        new = await self.memory.create_user(now_ms=self.now(), token_ttl_ms=TOKEN_TTL_MS)
        return new.user_id

    async def device(self, user_id: str, name: str | None = None) -> Device:
        """Enrol a new device of ``user_id`` through the store, as ``POST /v1/enroll`` would."""
        issued = await self.memory.create_token(user_id=user_id, now_ms=self.now(), token_ttl_ms=TOKEN_TTL_MS)
        raw = crypto.b64decode(issued.token, crypto.TOKEN_BYTES)
        assert raw is not None
        key = SigningKey.generate()
        stored_name = normalize_device_name(name or f"device {next(self._names)}")
        record = await self.memory.enroll(
            Enrollment(
                token_hash=crypto.hash_token(raw),
                public_key=key.public_key,
                name=stored_name,
                name_key=device_name_key(stored_name),
                max_devices=self.settings.max_devices,
                now_ms=self.now(),
            )
        )
        return Device(user_id=user_id, device_id=record.device_id, key=key, name=record.name)

    async def open(self, **options: Any) -> Client:
        """A connection that completed the upgrade and nothing else."""
        client = Client(self.gateway, self.server_key.public_key_b64, **options)
        await client.open(self.nursery)
        return client

    async def connect(self, device: Device, **options: Any) -> Client:
        """A connection of ``device`` that completed the handshake (its welcome is ``client.welcome``)."""
        client = await self.open(**options)
        await client.handshake(device)
        return client

    async def publish(
        self, client: Client, stream: str, event_id: str, body: object = None, **fields: Any
    ) -> dict[str, Any]:
        """Publish and return the answer (an ``ack`` or an ``error``)."""
        fields.setdefault("ts", self.now())
        await client.publish(stream, event_id, body, **fields)
        return await client.receive()


RelayFactory = Callable[..., Awaitable[Relay]]


class FaultyStore:
    """A ``MemoryStore`` whose async methods can be made to fail, or to wait for a gate, by name.

    ``failures[name]`` is raised instead of calling the method; ``gates[name]`` (a ``trio.Event``) is
    waited for before calling it. ``calls[name]`` counts calls.
    """

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.failures: dict[str, BaseException] = {}
        self.gates: dict[str, trio.Event] = {}
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(method):
            return method

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            gate = self.gates.get(name)
            if gate is not None:
                await gate.wait()
            failure = self.failures.get(name)
            if failure is not None:
                await trio.lowlevel.checkpoint()
                raise failure
            return await method(*args, **kwargs)

        return wrapped
