"""Helpers for the tests of the signed endpoints: devices, signed requests, a raw handshake, a fake session.

Requests go through Quart's test client (:class:`http_support.Relay`) with an ``Authorization`` header
built here with :mod:`relay.crypto` directly, so tests can sign anything (another path, a stale ``ts``,
a reused nonce). The reference client's own signing is tested through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import orjson
import trio
from http_support import CAP_S, Answer, Relay, enroll_body
from werkzeug.datastructures import Headers

from relay import crypto
from relay.bus.local import LocalBus
from relay.errors import BusUnavailable, SessionError
from relay.http.runtime import Runtime
from relay.protocol import messages
from relay.protocol.client_handshake import ClientHandshake
from relay.protocol.codec import decode_server, encode_client
from relay.protocol.messages import DeviceChange
from relay.store.base import AppendRequest


@attrs.frozen
class Device:
    user_id: str
    device_id: str
    key: crypto.SigningKey = attrs.field(repr=False)
    name: str


def runtime_of(relay: Relay) -> Runtime:
    runtime = relay.app.extensions["relay"]
    assert isinstance(runtime, Runtime)
    return runtime


def server_key(relay: Relay) -> str:
    return runtime_of(relay).server_key.public_key_b64


def authorization(
    relay: Relay,
    device: Device,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    ts: int | None = None,
    nonce: str | None = None,
    key: crypto.SigningKey | None = None,
    signed_server_key: str | None = None,
) -> str:
    """A valid ``Authorization`` value for the request, unless the arguments say otherwise."""
    ts = relay.clock.now_ms() if ts is None else ts
    nonce = crypto.random_nonce(crypto.HTTP_NONCE_BYTES) if nonce is None else nonce
    signed = crypto.http_request_string(
        signed_server_key if signed_server_key is not None else server_key(relay),
        device.device_id,
        method,
        target,
        ts,
        nonce,
        body,
    )
    sig = (key or device.key).sign(signed)
    return f"Relay-Ed25519 device={device.device_id}, ts={ts}, nonce={nonce}, sig={sig}"


async def send(
    relay: Relay, method: str, target: str, *, body: bytes = b"", headers: Headers | None = None
) -> Answer:
    """One request through the test client, headers as given (repeated ones included)."""
    sent = Headers(headers) if headers is not None else Headers()
    with trio.fail_after(CAP_S):
        response = await relay.client.open(target, method=method, data=body, headers=sent)
        raw = await response.get_data()
    parsed = jsonlib.loads(raw) if response.mimetype == "application/json" else None
    return Answer(response.status_code, response.headers, parsed)


async def signed(
    relay: Relay,
    device: Device,
    method: str,
    target: str,
    *,
    json: object = None,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    **signing: Any,
) -> Answer:
    """A signed request by ``device``; ``json`` is sent as its exact JSON bytes."""
    raw = body if body is not None else (orjson.dumps(json) if json is not None else b"")
    sent = Headers(dict(headers or {}))
    if json is not None:
        sent["Content-Type"] = "application/json"
    sent["Authorization"] = authorization(relay, device, method, target, raw, **signing)
    return await send(relay, method, target, body=raw, headers=sent)


def assert_unauthorized(relay: Relay, answer: Answer) -> None:
    """The one 401 of §3: the scheme named, the server's time, and no hint of what failed."""
    assert answer.status == 401, answer.body
    assert answer.headers["WWW-Authenticate"] == "Relay-Ed25519"
    assert error(answer) == {
        "code": "unauthorized",
        "message": "Unauthorized",
        "server_time": relay.clock.now_ms(),
        "request_id": answer.headers["X-Request-ID"],
    }


def error(answer: Answer) -> dict[str, Any]:
    assert isinstance(answer.body, dict), answer.body
    inner = answer.body["error"]
    assert isinstance(inner, dict)
    assert inner["request_id"] == answer.headers["X-Request-ID"]
    return inner


# --- devices ----------------------------------------------------------------------------------------


async def enroll_with(relay: Relay, token: str, name: str, key: crypto.SigningKey | None = None) -> Device:
    key = key if key is not None else crypto.SigningKey.generate()
    answer = await relay.enroll(enroll_body(token, key, name))
    assert answer.status == 201, answer.body
    return Device(answer.body["user_id"], answer.body["device_id"], key, answer.body["name"])


async def first_device(relay: Relay, name: str = "Phone") -> Device:
    """A new user and its first device, enrolled over HTTP with an operator token."""
    _, token = await relay.new_token()
    return await enroll_with(relay, token, name)


async def pair(relay: Relay, device: Device, name: str) -> Device:
    """Another device of ``device``'s user: a pairing token by ``device``, then an enrolment."""
    answer = await signed(relay, device, "POST", "/v1/pairings", json={})
    assert answer.status == 201, answer.body
    return await enroll_with(relay, answer.body["token"], name)


async def store_events(relay: Relay, device: Device, stream: str, count: int) -> None:
    """``count`` events on ``stream`` by ``device``, straight into the store."""
    now = relay.clock.now_ms()
    for i in range(count):
        await relay.store.append(
            AppendRequest(
                user_id=device.user_id,
                device_id=device.device_id,
                id=f"{stream}-{i}",
                stream=stream,
                ts=now,
                expires_at=now + 3_600_000,
                expect_seq=None,
                body=b'{"n":1}',
                received_at=now,
                max_streams=100,
                max_stored_bytes=1 << 20,
                clock_skew_ms=relay.settings.clock_skew_ms,
            )
        )


# --- a live session, as the bus sees it ----------------------------------------------------------------


@attrs.define(eq=False)
class FakeSession:
    """A :class:`relay.bus.base.Subscriber` that records what the bus gives it."""

    user_id: str
    device_id: str
    session_id: str = attrs.field(factory=lambda: crypto.random_nonce(8))
    frames: list[dict[str, Any]] = attrs.field(factory=list)
    ended: list[SessionError] = attrs.field(factory=list)

    def send_live(self, frame: str, *, stream: str | None = None, seq: int | None = None) -> None:
        self.frames.append(orjson.loads(frame))

    def end(self, error: SessionError) -> None:
        self.ended.append(error)

    def codes(self) -> list[str]:
        return [e.code for e in self.ended]


async def connect(relay: Relay, device: Device) -> FakeSession:
    session = FakeSession(device.user_id, device.device_id)
    await runtime_of(relay).bus.subscribe(session, at=relay.clock.now_ms())
    return session


@attrs.define(eq=False)
class FlakyBus(LocalBus):
    """A local bus whose notices and presence can be turned off."""

    notices_down: bool = False
    presence_down: bool = False

    async def announce_device(
        self, user_id: str, change: DeviceChange, device_id: str, name: str, at: int
    ) -> None:
        if self.notices_down:
            raise BusUnavailable(detail="redis went away")
        await super().announce_device(user_id, change, device_id, name, at)

    async def online_devices(self, user_id: str) -> list[str]:
        if self.presence_down:
            raise BusUnavailable(detail="redis went away", retry_after_ms=1000)
        return await super().online_devices(user_id)


# --- the WebSocket handshake, raw ASGI ---------------------------------------------------------------


async def handshake_refusal(relay: Relay, device: Device) -> tuple[dict[str, Any], int]:
    """Authenticate ``device`` on ``/v1/ws`` through the app; the ``error`` frame and the close code."""
    to_server, server_receives = trio.open_memory_channel[dict[str, Any]](16)
    server_sends, from_server = trio.open_memory_channel[dict[str, Any]](16)
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/v1/ws",
        "raw_path": b"/v1/ws",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
        "subprotocols": ["relay.v1"],
        "extensions": {},
    }
    machine = ClientHandshake(device.key, device.device_id, server_key(relay))
    with trio.fail_after(CAP_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.app, scope, server_receives.receive, server_sends.send)
            await to_server.send({"type": "websocket.connect"})
            assert (await from_server.receive())["type"] == "websocket.accept"
            await to_server.send({"type": "websocket.receive", "text": encode_client(machine.hello())})
            challenge = decode_server((await from_server.receive())["text"])
            assert isinstance(challenge, messages.Challenge)
            auth = machine.receive_challenge(challenge)
            await to_server.send({"type": "websocket.receive", "text": encode_client(auth)})
            frame = orjson.loads((await from_server.receive())["text"])
            close = await from_server.receive()
            assert close["type"] == "websocket.close"
            await to_server.send({"type": "websocket.disconnect", "code": close["code"]})
    return frame, close["code"]


def names(devices: Iterable[dict[str, Any]]) -> list[str]:
    return [d["name"] for d in devices]
