"""One WebSocket session of a device (PROTOCOL.md §4), over trio-websocket.

:func:`connect` opens the socket, runs the handshake with the pinned server key
(:class:`relay.protocol.client_handshake.ClientHandshake`) and yields a :class:`Connection` whose
background tasks, in the connection's own nursery, are:

- the reader: answers (``ack``, ``error``, ``replay.page``, ``streams.page``, ``pong``) resolve the
  request with the same ``ref``; live frames (``event``, ``heads``, ``presence``, ``device``) go to the
  ``live`` channel the caller gave (waiting for room: back-pressure reaches the server, which closes a
  consumer that falls too far behind with 4008), or are dropped when it gave none; an ``error`` with no
  request of ours is the one that precedes the server's close, kept for :class:`ConnectionLost`;
- the heartbeat (§4.5): a ``ping`` whenever nothing was sent for ``heartbeat_ms``, and the connection is
  given up as dead after 2 × ``heartbeat_ms`` without any frame from the server.

Requests wait for their answer; an ``error`` answer raises the matching
:class:`relay.errors.RelayError`, and a session that ends first raises :class:`ConnectionLost`. At most
``max_inflight`` publishes and ``max_replays`` replay requests are outstanding at once (the client waits
for a slot rather than make the server stop reading or answer ``busy``). Leaving the ``async with``
closes the socket (1000) and cancels the tasks.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

from relay.client.credentials import DeviceCredentials
from relay.client.errors import ClientError, ConnectionLost, error_from_message
from relay.clock import Clock, SystemClock
from relay.errors import RelayError, Unauthorized, UnknownType
from relay.protocol import messages
from relay.protocol.client_handshake import ClientHandshake
from relay.protocol.codec import decode_server, encode_client
from relay.protocol.messages import JsonValue

__all__ = [
    "CONNECT_TIMEOUT_S",
    "HANDSHAKE_TIMEOUT_S",
    "LIVE_TYPES",
    "Connection",
    "LiveMessage",
    "connect",
    "new_event_id",
]

log = logging.getLogger("relay.client")

#: How long the client waits for the handshake to complete before it gives up.
HANDSHAKE_TIMEOUT_S = 30.0
#: How long the WebSocket opening handshake (TCP, TLS, the HTTP upgrade) may take. Kept apart from
#: :data:`HANDSHAKE_TIMEOUT_S` and short because trio-websocket 0.12 does not notice a connection closed
#: before the server's 101 (a server that died mid-upgrade, a TCP proxy without a backend): it waits for
#: this timeout, so a reconnecting client would wait that long before its next attempt.
CONNECT_TIMEOUT_S = 10.0
#: How long the client waits for the server's close after an ``error``, or for its own close.
CLOSE_WAIT_S = 5.0
#: The longest frame the client accepts, in characters (4 × the default ``max_frame_bytes``).
MAX_MESSAGE_CHARS = 4 * 131_072
#: Frames trio-websocket may hold for the reader (its own queue; the reader drains it at once).
SOCKET_QUEUE_FRAMES = 64

LiveMessage = messages.Event | messages.Heads | messages.Presence | messages.DeviceNotice
LIVE_TYPES = (messages.Event, messages.Heads, messages.Presence, messages.DeviceNotice)

T = TypeVar("T")


def new_event_id() -> str:
    """A fresh event id with 128 random bits (§1 asks for at least 96)."""
    return secrets.token_hex(16)


@attrs.define(eq=False)
class _Pending:
    """One request waiting for its answer."""

    done: trio.Event = attrs.field(factory=trio.Event)
    answer: messages.ServerMessage | None = None
    failure: BaseException | None = None
    #: The slot the request holds (publishes: an in-flight slot), given back once it is answered.
    slot: trio.Semaphore | None = None

    def resolve(self, answer: messages.ServerMessage) -> None:
        if not self.done.is_set():
            self.answer = answer
            self._finish()

    def fail(self, failure: BaseException) -> None:
        if not self.done.is_set():
            self.failure = failure
            self._finish()

    def _finish(self) -> None:
        self.done.set()
        if self.slot is not None:
            self.slot.release()
            self.slot = None


class Connection:
    """A live, authenticated session. Made by :func:`connect`; see the module docstring."""

    def __init__(
        self,
        ws: WebSocketConnection,
        welcome: messages.Welcome,
        *,
        live: trio.MemorySendChannel[LiveMessage] | None,
        clock: Clock,
    ) -> None:
        self.ws = ws
        self.welcome = welcome
        self._live = live
        self._clock = clock
        self._refs = (f"r{n}" for n in itertools.count(1))
        self._pending: dict[str, _Pending] = {}
        self._inflight = trio.Semaphore(welcome.limits.max_inflight)
        self._replays = trio.Semaphore(welcome.limits.max_replays)
        self._last_sent = trio.current_time()
        self._last_heard = trio.current_time()
        self._close_error: RelayError | None = None
        self._lost: ConnectionLost | None = None
        self.closed = trio.Event()

    @property
    def session_id(self) -> str:
        return self.welcome.session_id

    @property
    def lost(self) -> ConnectionLost | None:
        """Why the session ended, once it has."""
        return self._lost

    # --- requests -------------------------------------------------------------------------------------

    async def publish(
        self,
        stream: str,
        body: JsonValue,
        *,
        id: str | None = None,
        ts: int | None = None,
        ttl: int | None = None,
        expect_seq: int | None = None,
    ) -> messages.Ack:
        """Publish one event and wait for its ``ack``; an ``error`` answer raises."""
        return await (await self.send_publish(stream, body, id=id, ts=ts, ttl=ttl, expect_seq=expect_seq))()

    async def send_publish(
        self,
        stream: str,
        body: JsonValue,
        *,
        id: str | None = None,
        ts: int | None = None,
        ttl: int | None = None,
        expect_seq: int | None = None,
    ) -> _AckWaiter:
        """Send one ``publish`` now (after waiting for an in-flight slot); return what awaits its answer.

        For callers that must send several publishes in order before waiting for any answer.
        """
        await self._inflight.acquire()  # given back when the answer arrives (or the session ends)
        try:
            msg = messages.Publish(
                id=id if id is not None else new_event_id(),
                stream=stream,
                ts=ts if ts is not None else self._clock.now_ms(),
                body=body,
                ttl=ttl,
                expect_seq=expect_seq,
                ref=next(self._refs),
            )
            pending = await self._send_request(msg, slot=self._inflight)
        except BaseException:
            self._inflight.release()
            raise
        return _AckWaiter(self, pending)

    async def replay(self, stream: str, *, after: int = 0, limit: int | None = None) -> messages.ReplayPage:
        """The first page of a replay of ``stream`` after ``after``."""
        async with self._replays:
            msg = messages.Replay(stream=stream, after=after, limit=limit, ref=next(self._refs))
            return await self._request(msg, messages.ReplayPage)

    async def replay_next(self, token: str) -> messages.ReplayPage:
        """The page a continuation token points at."""
        async with self._replays:
            msg = messages.ReplayNext(token=token, ref=next(self._refs))
            return await self._request(msg, messages.ReplayPage)

    async def replay_to_head(self, stream: str, *, after: int = 0) -> AsyncIterator[messages.ReplayPage]:
        """Every page of a replay of ``stream`` after ``after``, up to the head it began at."""
        page = await self.replay(stream, after=after)
        yield page
        while page.next is not None:
            page = await self.replay_next(page.next)
            yield page

    async def streams(self, *, after: str | None = None, limit: int | None = None) -> messages.StreamsPage:
        """One page of the user's streams with their heads."""
        async with self._replays:
            return await self._request(
                messages.Streams(after=after, limit=limit, ref=next(self._refs)), messages.StreamsPage
            )

    async def all_streams(self) -> dict[str, int]:
        """Every stream of the user holding unexpired events, with its head (all pages)."""
        found: dict[str, int] = {}
        after: str | None = None
        while True:
            page = await self.streams(after=after)
            found.update(page.streams)
            if page.next is None:
                return found
            after = page.next

    async def ping(self) -> messages.Pong:
        return await self._request(messages.Ping(ref=next(self._refs)), messages.Pong)

    async def send_raw(self, text: str) -> None:
        """Send a frame as it is (for tests of the server's refusals)."""
        await self._send_text(text)

    # --- machinery ------------------------------------------------------------------------------------

    async def _request(self, msg: messages.ClientMessage, expected: type[T]) -> T:
        pending = await self._send_request(msg)
        return await self._wait(pending, expected)

    async def _send_request(
        self, msg: messages.ClientMessage, *, slot: trio.Semaphore | None = None
    ) -> _Pending:
        """Send ``msg`` and register it for its answer. ``slot``, already taken, is given back when the
        answer arrives; if sending fails it is the caller's to give back."""
        if self._lost is not None:
            raise self._lost
        ref = msg.ref
        assert ref is not None
        pending = _Pending()
        self._pending[ref] = pending
        try:
            await self._send_text(encode_client(msg))
        except BaseException:
            self._pending.pop(ref, None)
            raise
        pending.slot = slot
        if pending.done.is_set() and slot is not None:  # answered (or failed) while being sent
            pending.slot = None
            slot.release()
        return pending

    async def _wait(self, pending: _Pending, expected: type[T]) -> T:
        await pending.done.wait()
        if pending.failure is not None:
            raise pending.failure
        answer = pending.answer
        if isinstance(answer, messages.Error):
            raise error_from_message(answer)
        if not isinstance(answer, expected):
            raise ClientError(f"expected {expected.__name__}, the server answered {type(answer).__name__}")
        return answer

    async def _send_text(self, text: str) -> None:
        try:
            await self.ws.send_message(text)
        except ConnectionClosed as closed:
            raise self._end(closed) from None
        self._last_sent = trio.current_time()

    def _end(self, closed: ConnectionClosed | None) -> ConnectionLost:
        """Record how the session ended (once) and fail every waiting request with it."""
        if self._lost is None:
            reason = closed.reason if closed is not None else None
            code = reason.code if reason is not None else None
            text = reason.reason if reason is not None else None
            self._lost = ConnectionLost(code, text, self._close_error)
            for pending in self._pending.values():
                pending.fail(self._lost)
            self._pending.clear()
            self.closed.set()
        return self._lost

    async def run_reader(self) -> None:
        """Read frames until the session ends; then fail what waits, and return."""
        try:
            while True:
                try:
                    frame = await self.ws.get_message()
                except ConnectionClosed as closed:
                    self._end(closed)
                    return
                self._last_heard = trio.current_time()
                await self._dispatch(frame)
        finally:
            self._end(None)

    async def _dispatch(self, frame: str | bytes) -> None:
        try:
            msg = decode_server(frame)
        except UnknownType:
            return  # §1: clients ignore message types they do not know
        except RelayError as exc:
            log.warning("ignoring a malformed frame from the server: %s", exc)
            return
        ref = getattr(msg, "ref", None)
        if ref is not None and (pending := self._pending.pop(ref, None)) is not None:
            pending.resolve(msg)
        elif isinstance(msg, messages.Error):
            self._close_error = error_from_message(msg)
        elif isinstance(msg, LIVE_TYPES) and self._live is not None:
            try:
                await self._live.send(msg)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._live = None  # nobody listens any more
        # anything else (an answer whose request was abandoned) is dropped

    async def run_heartbeat(self) -> None:
        """Ping when idle; give the connection up after 2 × heartbeat_ms of silence from the server."""
        interval = self.welcome.heartbeat_ms / 1000
        while True:
            now = trio.current_time()
            if now - self._last_heard >= 2 * interval:
                log.info(
                    "no frame from the server for %.1f s: giving the connection up", now - self._last_heard
                )
                await self.ws.aclose(code=1001, reason="heartbeat_timeout")
                self._end(None)
                return
            if now - self._last_sent >= interval:
                msg = messages.Ping(ref=next(self._refs))
                try:
                    await self._send_text(encode_client(msg))
                except ConnectionLost:
                    return
            await trio.sleep_until(min(self._last_sent + interval, self._last_heard + 2 * interval))


@attrs.define(eq=False)
class _AckWaiter:
    """Awaits the answer of a publish already sent (its in-flight slot comes back when it arrives)."""

    connection: Connection
    pending: _Pending

    async def __call__(self) -> messages.Ack:
        return await self.connection._wait(self.pending, messages.Ack)


async def _handshake(ws: WebSocketConnection, creds: DeviceCredentials) -> messages.Welcome:
    machine = ClientHandshake(creds.key, creds.device_id, creds.server_key)

    async def next_message() -> messages.ServerMessage:
        while True:
            try:
                frame = await ws.get_message()
            except ConnectionClosed as closed:
                raise _lost(closed, None) from None
            try:
                msg = decode_server(frame)
            except UnknownType:
                continue
            if isinstance(msg, messages.Error):  # a refusal: the close follows it (§4.6)
                error = error_from_message(msg)
                with trio.move_on_after(CLOSE_WAIT_S):
                    try:
                        while True:
                            await ws.get_message()
                    except ConnectionClosed as closed:
                        raise _lost(closed, error) from None
                raise ConnectionLost(None, None, error)
            return msg

    await _send(ws, encode_client(machine.hello()))
    try:
        auth = machine.receive_challenge(await next_message())
    except Unauthorized:  # the challenge does not verify against the pinned key: 1008, and no auth
        await ws.aclose(code=1008, reason="unauthorized")
        raise
    await _send(ws, encode_client(auth))
    return machine.receive_welcome(await next_message())


async def _send(ws: WebSocketConnection, text: str) -> None:
    try:
        await ws.send_message(text)
    except ConnectionClosed as closed:
        raise _lost(closed, None) from None


def _lost(closed: ConnectionClosed, error: RelayError | None) -> ConnectionLost:
    reason = closed.reason
    return ConnectionLost(reason.code if reason else None, reason.reason if reason else None, error)


@asynccontextmanager
async def connect(
    creds: DeviceCredentials,
    *,
    live: trio.MemorySendChannel[LiveMessage] | None = None,
    clock: Clock | None = None,
    heartbeat: bool = True,
    url: str | None = None,
    **websocket_options: Any,
) -> AsyncIterator[Connection]:
    """Open a session of ``creds``' device; see the module docstring.

    Raises :class:`ConnectionLost` when the server refuses the handshake (its ``error`` in
    ``exc.error``), :class:`relay.errors.Unauthorized` when the server's challenge does not verify
    against the pinned key, :class:`ClientError` when the server cannot be reached.
    """
    target = url if url is not None else creds.ws_url
    options: dict[str, Any] = {
        "subprotocols": ["relay.v1"],
        "message_queue_size": SOCKET_QUEUE_FRAMES,
        "max_message_size": MAX_MESSAGE_CHARS,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "disconnect_timeout": CLOSE_WAIT_S,
    }
    options.update(websocket_options)
    user_error: BaseException | None = None
    try:
        async with open_websocket_url(target, **options) as ws:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                welcome = await _handshake(ws, creds)
            connection = Connection(ws, welcome, live=live, clock=clock or SystemClock())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.run_reader)
                if heartbeat:
                    nursery.start_soon(connection.run_heartbeat)
                try:
                    yield connection
                except BaseException as exc:  # re-raised below, outside the nursery: never wrapped
                    user_error = exc
                finally:
                    nursery.cancel_scope.cancel()
            if user_error is not None:
                raise user_error
    except (OSError, HandshakeError) as exc:
        if exc is user_error:
            raise
        raise ClientError(f"cannot connect to {target}: {exc}") from exc
