"""A live relay for the security tests, a well-behaved bystander, and raw clients of every layer.

- :func:`secure_server`: ``relay serve`` in this process on 127.0.0.1 and a free port (production mode,
  SQLite in a temporary data dir), by default with generous rate limits so that a test's thousands of
  connections and requests from one address reach the code under test rather than a ``429``/``1013``;
- :class:`Bystander`: a user minding its own business during an attack: one device publishes an event
  every few milliseconds, its other device must receive each one, in order, and ``/healthz`` must keep
  answering; :meth:`Bystander.verify` fails the test otherwise;
- :class:`Wire`: a WebSocket client on a plain trio TCP stream (the upgrade written by hand, wsproto
  parsing what the server sends), so that tests can send any bytes at all: fragments, control frames in
  the middle of a message, unmasked frames, reserved bits, absurd lengths, invalid UTF-8;
- :func:`raw_http`: one HTTP/1.1 exchange of arbitrary bytes;
- checks shared by every test: :func:`check_server_frame`, :func:`check_error`, :func:`check_close`
  (PROTOCOL.md §4.6: every close the server starts follows an ``error`` frame naming the close's code,
  and no message shows anything of the server's insides);
- :func:`rss_bytes`, and :data:`CASES` (how many cases each test ran; printed at the end of the run).

Real clock, real sockets: every wait is capped with ``trio.fail_after``.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import attrs
import httpx
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from relay import errors
from relay.app import RelayApp, create_app
from relay.client import DeviceCredentials, RelayHttp, connect
from relay.client.connection import LiveMessage
from relay.config import Settings
from relay.http.limits import HttpLimits
from relay.ops.ratelimit import LocalLimiter, RateLimit
from relay.protocol import codec, messages
from relay.protocol.client_handshake import ClientHandshake
from relay.serving import serve
from relay.store.base import Store

T = TypeVar("T")

#: Cap of one whole test (server start-up included).
CAP_S = 60
#: Cap of one exchange (a request and its answer, a session until it closes).
STEP_S = 10
#: A limit no test reaches: handshakes, enrolments and signed requests from 127.0.0.1 all pass.
GENEROUS = RateLimit(rate=1_000_000, burst=1_000_000)

#: Cases run per test, for the summary at the end of the run (conftest.py prints it).
CASES: collections.Counter[str] = collections.Counter()


# --- the server --------------------------------------------------------------------------------------


@attrs.define(eq=False)
class LiveServer:
    url: str
    app: RelayApp
    settings: Settings

    @property
    def store(self) -> Store:
        return self.app.services.runtime.store

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/ws"

    @property
    def server_key(self) -> str:
        return self.app.services.runtime.server_key.public_key_b64

    def now_ms(self) -> int:
        return self.app.services.runtime.clock.now_ms()

    async def new_user(self) -> str:
        new = await self.store.create_user(now_ms=self.now_ms(), token_ttl_ms=900_000)
        return new.user_id

    async def token(self, user_id: str) -> str:
        issued = await self.store.create_token(user_id=user_id, now_ms=self.now_ms(), token_ttl_ms=900_000)
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
async def secure_server(
    data_dir: Path, *, generous: bool = True, **settings: Any
) -> AsyncIterator[LiveServer]:
    """``relay serve`` in this process on 127.0.0.1 and a free port, until the block ends.

    ``generous`` (the default) replaces the handshake limit per address and the HTTP limits per address
    and per device with :data:`GENEROUS` (everything here comes from 127.0.0.1); ``generous=False`` keeps
    the server's own limits.
    """
    config = Settings(data_dir=data_dir, host="127.0.0.1", port=0, **settings)
    assert config.production  # the messages clients see are the production ones
    app = create_app(config)
    if generous:
        app.services.handshake_limiter = LocalLimiter(GENEROUS)
        app.services.runtime.limits = HttpLimits(
            address=LocalLimiter(GENEROUS), device=LocalLimiter(GENEROUS)
        )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(STEP_S):
            urls: list[str] = await nursery.start(partial(serve, config, shutdown_trigger=stop.wait, app=app))
        try:
            yield LiveServer(url=urls[0], app=app, settings=config)
        finally:
            stop.set()


class Portal:
    """A server running in a trio loop of its own thread, for synchronous (hypothesis) tests.

    :meth:`run` calls an async function in that loop and returns its result; the caller's thread waits.
    The function must cap its own waits (``trio.fail_after``).
    """

    def __init__(self, token: trio.lowlevel.TrioToken, server: LiveServer, nursery: trio.Nursery) -> None:
        self.token = token
        self.server = server
        self.nursery = nursery

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def start(self, fn: Callable[..., Awaitable[Any]]) -> Any:
        """``nursery.start(fn)`` in the server's loop: a background task until the portal closes."""
        return self.run(self.nursery.start, fn)


@contextmanager
def server_thread(data_dir: Path, **settings: Any) -> Iterator[Portal]:
    """:func:`secure_server` in a thread of its own, reachable through the :class:`Portal` yielded."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with secure_server(data_dir, **settings) as server, trio.open_nursery() as nursery:
            stop = trio.Event()
            box["portal"] = Portal(trio.lowlevel.current_trio_token(), server, nursery)
            box["stop"] = stop
            ready.set()
            await stop.wait()
            nursery.cancel_scope.cancel()

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            box["failure"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=thread_main, name="relay-server", daemon=True)
    thread.start()
    ready.wait(CAP_S)
    if "portal" not in box:
        raise RuntimeError(f"the server did not start: {box.get('failure')!r}")
    portal: Portal = box["portal"]
    try:
        yield portal
    finally:
        trio.from_thread.run_sync(box["stop"].set, trio_token=portal.token)
        thread.join(CAP_S)
        if "failure" in box:
            raise box["failure"]


# --- what every answer must look like ----------------------------------------------------------------


def _all_errors(cls: type[errors.RelayError]) -> list[type[errors.RelayError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_all_errors(sub))
    return found


#: The safe message of every code (PROTOCOL.md §4.6, relay/errors.py).
SAFE_MESSAGES = {cls.code: cls.safe_message for cls in reversed(_all_errors(errors.RelayError))}
SAFE_MESSAGES["internal"] = errors.INTERNAL_MESSAGE
#: Codes whose message is always exactly the safe one; the others explain a rule (``$.ts: must be ...``).
FIXED_MESSAGE_CODES = frozenset(SAFE_MESSAGES) - {"bad_request", "too_large", "unavailable", "not_found"}
#: What would show the server's insides: exception text, stack traces, file paths, object reprs.
LEAK = re.compile(
    r"Traceback|File \"|\.py\b|/work/|/home/|/usr/|/tmp/|site-packages|sqlite|psycopg|redis|orjson|cattrs"
    r"|hypercorn|quart|werkzeug|wsproto|h11|\b[A-Z][A-Za-z]*(Error|Exception)\b"
    r"|<[\w.]+ object at|0x[0-9a-f]{6}",
    re.IGNORECASE,
)
#: The text of a rule (what follows the path in a ``bad_request``): a short English sentence.
RULE = re.compile(r"[A-Za-z0-9 _.,:;'()\[\]^~/+\-…$=]{1,200}")


def leaks(text: str) -> bool:
    return LEAK.search(text) is not None


def check_error(frame: dict[str, Any]) -> None:
    """An ``error`` frame (or HTTP error object) shows a safe message and nothing of the server's insides."""
    code, message = frame["code"], frame["message"]
    assert code in SAFE_MESSAGES, frame
    assert "detail" not in frame, frame  # development mode only
    if code in FIXED_MESSAGE_CODES:
        assert message == SAFE_MESSAGES[code], frame
        return
    path = frame.get("path")
    rule = message
    if isinstance(path, str) and message.startswith(path + ": "):
        rule = message[len(path) + 2 :]  # the path echoes the client's own member names
    assert RULE.fullmatch(rule), frame
    assert not leaks(rule), frame


def check_server_frame(text: str) -> dict[str, Any]:
    """A frame the server sent: a valid server message of the protocol (no unknown member), parsed."""
    codec.decode_server(text, strict=True)
    frame: dict[str, Any] = json.loads(text)
    if frame["type"] == "error":
        check_error(frame)
    return frame


def expected_close(code: str, *, in_handshake: bool) -> int | None:
    """The close code an ``error`` of ``code`` ends a session with (``None``: it keeps it open)."""
    if code == "rate_limited" and in_handshake:
        return 1013  # refused right after the upgrade (docs/protocol.md "Rate limits")
    cls = errors.error_by_code(code)
    if in_handshake or not issubclass(cls, errors.RequestError):
        return cls.close_code
    return None


def check_close(
    frames: list[dict[str, Any]], code: int | None, reason: str | None, *, in_handshake: bool
) -> str:
    """The server closed after ``frames``: its last frame is the ``error`` whose code is the close's reason,
    and the close code is that error's. Returns the code. A connection the server dropped without a close
    (``code`` None) fails."""
    assert code is not None, f"the server dropped the connection without a close after {frames[-3:]}"
    assert frames, (code, reason, frames[-3:])
    assert frames[-1]["type"] == "error", (code, reason, frames[-3:])
    error = frames[-1]
    assert reason == error["code"], (code, reason, error)
    assert code == expected_close(error["code"], in_handshake=in_handshake), (code, error)
    return str(error["code"])


# --- raw WebSocket frames ----------------------------------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DEFAULT_MASK = b"\x37\xfa\x21\x3d"


def ws_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = DEFAULT_MASK,
    length: int | None = None,
) -> bytes:
    """One client frame, as RFC 6455 §5.2 lays it out, with every bit chosen by the caller.

    ``mask=None`` sends it unmasked (a client must mask); ``length`` writes another payload length in the
    header than the payload's (up to 2^64-1, the most significant bit included).
    """
    declared = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)])
    mask_bit = 0x80 if mask is not None else 0
    if declared < 126:
        head.append(mask_bit | declared)
    elif declared < 1 << 16:
        head.append(mask_bit | 126)
        head += declared.to_bytes(2, "big")
    else:
        head.append(mask_bit | 127)
        head += declared.to_bytes(8, "big")
    if mask is None:
        return bytes(head) + payload
    return bytes(head) + mask + masked_payload(payload, mask)


def masked_payload(payload: bytes, mask: bytes) -> bytes:
    """``payload`` XORed with the repeated 4-byte ``mask`` (RFC 6455 §5.3), as one big-integer XOR: a
    loop over the bytes of a 1 MB frame would hold up the event loop the server shares for seconds."""
    if not payload:
        return b""
    size = len(payload)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


@attrs.frozen
class Closed:
    """The server closed the WebSocket (``code`` None: the TCP connection ended without a close frame)."""

    code: int | None
    reason: str | None


class Wire:
    """A WebSocket client that writes raw bytes (see the module docstring). Use :func:`open_wire`."""

    def __init__(self, stream: trio.SocketStream, trailing: bytes) -> None:
        self.stream = stream
        self.conn = Connection(ConnectionType.CLIENT, trailing_data=trailing)
        self._text: list[str] = []
        self._bytes: list[bytes] = []
        self._events: collections.deque[Any] = collections.deque()
        self.closed: Closed | None = None

    async def send_raw(self, data: bytes) -> None:
        """Write ``data`` as is; a connection the server already closed is not an error here."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)

    async def send_text(self, text: str | bytes) -> None:
        await self.send_raw(ws_frame(OP_TEXT, text.encode() if isinstance(text, str) else text))

    async def send_json(self, obj: object) -> None:
        await self.send_text(json.dumps(obj))

    async def receive(self) -> str | bytes | Closed:
        """The next whole message the server sent, or :class:`Closed` (then always that)."""
        while self.closed is None:
            while self._events:
                event = self._events.popleft()
                if isinstance(event, TextMessage):
                    self._text.append(event.data)
                    if event.message_finished:
                        text, self._text = "".join(self._text), []
                        return text
                elif isinstance(event, BytesMessage):
                    self._bytes.append(bytes(event.data))
                    if event.message_finished:
                        data, self._bytes = b"".join(self._bytes), []
                        return data
                elif isinstance(event, Ping):
                    await self.send_raw(ws_frame(OP_PONG, bytes(event.payload)))
                elif isinstance(event, CloseConnection):
                    self.closed = Closed(event.code, event.reason)
                    if self.conn.state is ConnectionState.REMOTE_CLOSING:
                        await self.send_raw(ws_frame(OP_CLOSE, close_payload(event.code)))
                    await self.aclose()
                    return self.closed
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.closed = Closed(None, None)
                await self.aclose()
                break
            self.conn.receive_data(data)
            self._events.extend(self.conn.events())
        return self.closed

    async def next_frame(self) -> dict[str, Any] | Closed:
        """The next message, checked and parsed (a binary message from the server fails the test)."""
        message = await self.receive()
        if isinstance(message, Closed):
            return message
        assert isinstance(message, str), "the server sent a binary message"
        return check_server_frame(message)

    async def until_closed(self) -> tuple[list[dict[str, Any]], Closed]:
        """Every frame until the server closes, and the close."""
        frames: list[dict[str, Any]] = []
        while not isinstance(message := await self.next_frame(), Closed):
            frames.append(message)
        return frames, message

    async def handshake(self, creds: DeviceCredentials) -> dict[str, Any]:
        """``hello`` and ``auth`` with the device's real key; returns the ``welcome``."""
        welcome = await self.try_handshake(creds)
        assert not isinstance(welcome, Closed), welcome
        assert welcome["type"] == "welcome", welcome
        return welcome

    async def try_handshake(self, creds: DeviceCredentials) -> dict[str, Any] | Closed:
        """As :meth:`handshake`, but returns what came instead of the ``welcome`` (an ``error``: a newer
        session of the device may replace this one even before its welcome)."""
        machine = ClientHandshake(creds.key, creds.device_id, creds.server_key)
        await self.send_text(codec.encode_client(machine.hello()))
        challenge = await self.next_frame()
        assert not isinstance(challenge, Closed), challenge
        assert challenge["type"] == "challenge", challenge
        decoded = codec.decode_server(json.dumps(challenge))
        await self.send_text(codec.encode_client(machine.receive_challenge(decoded)))
        return await self.next_frame()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def read_head(stream: trio.SocketStream, limit: int = 1 << 20) -> tuple[bytes, bytes]:
    """The response head (up to the blank line) and what came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
        assert len(data) < limit, "an endless response head"
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def upgrade_request(host: str, port: int, *, target: bytes = b"/v1/ws", extra: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET " + target + b" HTTP/1.1\r\nHost: " + f"{host}:{port}".encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: relay.v1\r\n" + extra + b"\r\n"
    )


async def open_wire(server: LiveServer) -> Wire:
    """A WebSocket connection to ``/v1/ws`` (upgrade done), for raw frames."""
    stream = await trio.open_tcp_stream(server.host, server.port)
    await stream.send_all(upgrade_request(server.host, server.port))
    head, rest = await read_head(stream)
    status = head.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 101"), head
    assert b"sec-websocket-protocol: relay.v1" in head.lower(), head
    return Wire(stream, rest)


@asynccontextmanager
async def wire(server: LiveServer) -> AsyncIterator[Wire]:
    connection = await open_wire(server)
    try:
        yield connection
    finally:
        await connection.aclose()


# --- raw HTTP ----------------------------------------------------------------------------------------


@attrs.frozen
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_http(server: LiveServer, request: bytes) -> RawAnswer | None:
    """Send ``request`` (whole, as bytes) on a new connection and read the answer until the server closes.

    ``None`` when the server closed without answering (which a test may or may not accept).
    """
    stream = await trio.open_tcp_stream(server.host, server.port)
    data = b""

    async def send() -> None:
        # The server may answer (and close) before it has read everything: that is allowed.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(request)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while True:
                try:
                    chunk = await stream.receive_some(1 << 20)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not chunk:
                    break
                data += chunk
                if _complete(data, head_only=request.startswith(b"HEAD ")):
                    break
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if request.startswith(b"HEAD "):
        body = b""
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return RawAnswer(status, headers, body)


def _complete(data: bytes, *, head_only: bool) -> bool:
    """Whether ``data`` holds a whole response with a Content-Length (so we need not wait for EOF)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    if head_only or re.match(rb"HTTP/1\.[01] (1\d\d|204|304)", head):
        return True
    match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    return match is not None and len(body) >= int(match.group(1))


def check_http_answer(answer: RawAnswer) -> None:
    """No 5xx (``/readyz`` aside); an error the app answered is the one error body of §6, safely worded."""
    assert answer.status < 500, answer
    if answer.status >= 400 and "x-request-id" in answer.headers and answer.body:
        error = answer.json()["error"]
        assert error["request_id"] == answer.headers["x-request-id"], answer
        check_error(error)
    for value in answer.headers.values():
        assert not leaks(value), answer


# --- the bystander -----------------------------------------------------------------------------------

#: How often the bystander publishes, and how often it checks ``/healthz`` (seconds).
BYSTANDER_PUBLISH_S = 0.05
BYSTANDER_HEALTH_S = 0.1
#: How long a health check or an event's delivery may take while the server is under attack (seconds).
BYSTANDER_LATENCY_S = 5.0


@attrs.define(eq=False)
class Bystander:
    """A well-behaved user of the attacked server (module docstring). Start with ``nursery.start``."""

    server: LiveServer
    published: int = 0
    received: list[int] = attrs.field(factory=list)
    health_checks: int = 0
    failures: list[str] = attrs.field(factory=list)
    worst_delivery_s: float = 0.0
    worst_health_s: float = 0.0
    _stop: trio.Event = attrs.field(factory=trio.Event)
    _done: trio.Event = attrs.field(factory=trio.Event)
    _sent_at: dict[int, float] = attrs.field(factory=dict)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            publisher, listener = await self.server.devices(2)
            to_listener, live = trio.open_memory_channel[LiveMessage](100_000)
            async with (
                connect(publisher) as pub,
                connect(listener, live=to_listener) as lis,
                httpx.AsyncClient(base_url=self.server.url) as http,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(self._listen, live)
                nursery.start_soon(self._check_health, http)
                task_status.started()
                started = True
                while not self._stop.is_set():
                    n = self.published + 1
                    self._sent_at[n] = trio.current_time()
                    with trio.fail_after(BYSTANDER_LATENCY_S):
                        ack = await pub.publish("canary", {"n": n})
                    if ack.seq != n:
                        self.failures.append(f"publish {n} got seq {ack.seq}")
                    self.published = n
                    with trio.move_on_after(BYSTANDER_PUBLISH_S):
                        await self._stop.wait()
                with trio.fail_after(BYSTANDER_LATENCY_S):  # the last events reach the listener
                    while len(self.received) < self.published and not self.failures:  # noqa: ASYNC110 (no event to wait on)
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
                for conn, who in ((pub, "publisher"), (lis, "listener")):
                    if conn.lost is not None:
                        self.failures.append(f"the {who}'s session ended: {conn.lost}")
        except Exception as exc:
            self.failures.append(f"the bystander failed: {type(exc).__name__}: {exc!r}")
            if not started:
                task_status.started()
        finally:
            self._done.set()

    async def _listen(self, live: trio.MemoryReceiveChannel[LiveMessage]) -> None:
        async for message in live:
            if isinstance(message, messages.Event):
                n = message.event.seq
                expected = len(self.received) + 1
                if n != expected:
                    self.failures.append(f"the listener got seq {n}, expected {expected}")
                self.received.append(n)
                sent = self._sent_at.pop(n, None)
                if sent is not None:
                    self.worst_delivery_s = max(self.worst_delivery_s, trio.current_time() - sent)
            elif isinstance(message, messages.Presence | messages.DeviceNotice):
                pass  # its own devices only; isolation tests check whose
        self.failures.append("the listener's live channel ended")

    async def _check_health(self, http: httpx.AsyncClient) -> None:
        while True:
            started = trio.current_time()
            try:
                with trio.fail_after(BYSTANDER_LATENCY_S):
                    response = await http.get("/healthz")
                if response.status_code != 200 or response.json() != {"status": "ok"}:
                    self.failures.append(f"/healthz answered {response.status_code} {response.text[:200]}")
            except (trio.TooSlowError, httpx.HTTPError) as exc:
                self.failures.append(f"/healthz failed: {type(exc).__name__}: {exc}")
            self.health_checks += 1
            self.worst_health_s = max(self.worst_health_s, trio.current_time() - started)
            await trio.sleep(BYSTANDER_HEALTH_S)

    async def stop(self) -> None:
        self._stop.set()
        with trio.fail_after(STEP_S):
            await self._done.wait()

    async def verify(self) -> None:
        """Stop, and fail unless every event reached the listener in order and every health check passed."""
        await self.stop()
        assert not self.failures, self.failures[:10]
        assert self.published > 0
        assert self.received == list(range(1, self.published + 1))
        assert self.health_checks > 0

    def summary(self) -> str:
        return (
            f"bystander: {self.published} events delivered in order"
            f" (worst {self.worst_delivery_s * 1000:.0f} ms),"
            f" {self.health_checks} health checks (worst {self.worst_health_s * 1000:.0f} ms)"
        )


@asynccontextmanager
async def bystander(server: LiveServer) -> AsyncIterator[Bystander]:
    """A :class:`Bystander` for the block; verified when the block ends without an exception."""
    watcher = Bystander(server)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(STEP_S):
            await nursery.start(watcher.run)
        yield watcher
        await watcher.verify()
        print(watcher.summary())


# --- memory ------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process (the in-process server's), from /proc/self/status."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")
