"""One WebSocket session: one nursery, its tasks, and how it ends (ARCHITECTURE.md "A session, as tasks").

::

    Session.run                        the session's cancel scope (closing sets its deadline)
    ├── writer      Outbox.run         sole sender; ends with the error frame and the close
    └── work        (cancel scope)     cancelled by a close; a graceful close lets it drain instead
        ├── handshake                  first, inline, under the handshake deadline
        ├── publisher                  commits and answers publishes in order; drains on a graceful close
        ├── reader      (stop scope)   reads frames, answers what is cheap, hands the rest on
        ├── pager       (stop scope)   replay and listing pages, one at a time
        └── watchdog    (stop scope)   heartbeat loss; keeps the work alive until a close is requested

Every end goes through :meth:`Session.close`, which the first caller wins: a task (or the bus) names
the error, and the writer sends its ``error`` frame and closes with its code, the code being the close
reason (§4.6). ``close(None)`` is for a peer that went away: nothing more is sent. An exception that
escapes a task ends the session the same way: a :class:`~relay.errors.RelayError` as itself, anything
else as ``internal`` (1011), logged with a request id (:meth:`GatewayContext.error_frame`).

Revocation (§5) reaches a session through :meth:`Session.revoke`, called by the bus
(:meth:`Session.end` with ``device_revoked`` or ``account_deleted``) or by the node's revocation
watcher (:mod:`relay.gateway.revocations`), which finds the session in the
:class:`~relay.gateway.revocation_index.RevocationIndex` the handshake registered it in.
:attr:`Session.revocation` keeps the error: the publisher and the pager check it before touching
the store (no database round trip per message), and the store's own check in the committing
transaction stays the last line. The session leaves the index when it ends.

Metrics (:mod:`relay.gateway.instruments`): every live ``event`` frame accepted for sending counts as
delivered; the welcome counts as a handshake's ``welcome``; a revocation's close, once the writer has
sent it, is timed from the moment the revocation reached the session (``bus`` through :meth:`end`,
``log`` through :meth:`revoke`). :attr:`end_code` is what the gateway counts the session's end as.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
import trio

from relay.errors import AccountDeleted, DeviceRevoked, InternalError, RelayError, SessionError, SlowConsumer
from relay.gateway.asgi import AsgiWebSocket, Disconnected
from relay.gateway.context import GatewayContext
from relay.gateway.fitting import heads_frames
from relay.gateway.inbound import PeerGone, receive_object
from relay.gateway.instruments import DISCONNECTED, RevocationPath, error_code
from relay.gateway.outbox import Closing, Outbox
from relay.gateway.revocation_index import Revocation
from relay.protocol.codec import AnswerContext
from relay.protocol.handshake import Authenticated
from relay.protocol.messages import JsonValue

__all__ = ["CLOSE_TIMEOUT_S", "LEAVE_TIMEOUT_S", "Session"]

log = logging.getLogger("relay.gateway")

#: Once a session is closing, how long its close may take (a peer that does not read cannot stall it).
CLOSE_TIMEOUT_S = 5.0
#: How long leaving the bus and recording ``last_seen_at`` may take when a session ends.
LEAVE_TIMEOUT_S = 5.0


@attrs.frozen
class _CloseRequest:
    error: BaseException | None
    ctx: AnswerContext | None
    graceful: bool


@attrs.define(eq=False)
class Session:
    """A live WebSocket session; also the :class:`relay.bus.base.Subscriber` the bus delivers to."""

    ctx: GatewayContext
    ws: AsgiWebSocket
    #: trio time of the upgrade: the handshake deadline counts from here.
    opened_at: float
    outbox: Outbox = attrs.field(init=False)
    identity: Authenticated | None = attrs.field(default=None, init=False)
    welcomed: bool = attrs.field(default=False, init=False)
    #: trio time of the last frame received (the watchdog's clock).
    last_heard: float = attrs.field(init=False)
    #: True while the reader does not read on purpose (back-pressure, shutdown): no heartbeat loss then.
    reading_paused: bool = attrs.field(default=False, init=False)
    subscribed: bool = attrs.field(default=False, init=False)
    #: Why the device may no longer be served (revoked, account deleted), once the node knows.
    revocation: Revocation | None = attrs.field(default=None, init=False)
    #: How the revocation came (``bus`` or ``log``) and when (trio time), for its close's timing.
    _revocation_path: RevocationPath = attrs.field(default="log", init=False)
    _revoked_at: float = attrs.field(default=0.0, init=False)
    _request: _CloseRequest | None = attrs.field(default=None, init=False)
    _closing: Closing | None = attrs.field(default=None, init=False)
    _refusal: RelayError | None = attrs.field(default=None, init=False)
    _scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    #: The scopes the tasks run in (see the module docstring); a close cancels them.
    work_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    reader_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    pager_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    watchdog_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    #: Live frames that arrived before ``welcome`` was queued; ``None`` once live.
    _held: list[str] | None = attrs.field(factory=list, init=False)
    #: Streams whose head changed since the last ``heads`` or ``welcome`` (stream → newest seq seen).
    _heads: dict[str, int] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self.outbox = Outbox(self.ws, fast=self.ctx.settings.fast_send)
        self.last_heard = self.opened_at

    # --- identity (the bus's Subscriber protocol) ------------------------------------------------------

    def _identity(self) -> Authenticated:
        if self.identity is None:
            raise RuntimeError("the session is not authenticated yet")
        return self.identity

    @property
    def session_id(self) -> str:
        return self._identity().session_id

    @property
    def user_id(self) -> str:
        return self._identity().user_id

    @property
    def device_id(self) -> str:
        return self._identity().device_id

    @property
    def closing(self) -> bool:
        return self._request is not None

    @property
    def end_code(self) -> str | None:
        """The code the session ends with, once a close was requested: its error's code (``internal``
        for an unexpected exception), or ``disconnected`` when the peer went away first."""
        if self._request is None:
            return None
        error = self._request.error
        return DISCONNECTED if error is None else error_code(error)

    # --- delivery -------------------------------------------------------------------------------------

    def send_live(self, frame: str, *, stream: str | None = None, seq: int | None = None) -> None:
        """Queue a live frame without waiting; a full queue closes the session with ``slow_consumer``."""
        if self._request is not None:
            return
        if stream is not None and seq is not None:  # an event frame
            self.note_head(stream, seq)
            self.ctx.instruments.delivered()  # counted as queued; an overflow closes the session anyway
        if self._held is not None:  # before welcome: keep it, in order, for right after the welcome
            if len(self._held) >= self.outbox.capacity:
                self.close(SlowConsumer())
            else:
                self._held.append(frame)
        elif not self.outbox.put_nowait(frame):
            self.close(SlowConsumer())

    def end(self, error: SessionError) -> None:
        """The bus ends this session (replaced, revoked, account deleted, bus lost)."""
        if isinstance(error, DeviceRevoked | AccountDeleted):
            self.revoke(error, path="bus")
        else:
            self.close(error)

    def revoke(self, error: Revocation, *, path: RevocationPath = "log") -> None:
        """The device was revoked or its account deleted (the bus or the revocation watcher says so).

        Remembers ``error`` in :attr:`revocation` (the first one wins), so that no message path of this
        session reaches the store again, and closes with it (1008). Returns at once, never raises.
        ``path`` says how the node learned of it (``log``: the store's revocation log, or a re-check).
        """
        if self.revocation is None:
            self.revocation = error
            self._revocation_path = path
            self._revoked_at = trio.current_time()
        self.close(error)

    def note_head(self, stream: str, seq: int) -> None:
        """Remember that ``stream`` reached ``seq``, for the next ``heads``."""
        if seq > self._heads.get(stream, 0):
            self._heads[stream] = seq

    def flush_heads(self) -> None:
        """Send ``heads`` for the streams that changed since the last ``heads`` or ``welcome`` (ticker)."""
        if not self.welcomed or self._request is not None or not self._heads:
            return
        heads, self._heads = self._heads, {}
        for frame in heads_frames(heads, self.ctx.settings.max_frame_bytes):
            self.send_live(frame)

    async def go_live(self, welcome: str, streams: dict[str, int]) -> None:
        """Queue ``welcome`` (whose heads are ``streams``), then what arrived while it was being built."""
        await self.outbox.put(welcome)
        self.welcomed = True
        self.ctx.instruments.welcomed()
        for name, seq in list(self._heads.items()):
            if streams.get(name, 0) >= seq:
                del self._heads[name]
        held, self._held = self._held or [], None
        for frame in held:
            self.send_live(frame)

    async def answer(self, frame: str) -> None:
        """Queue an answer (ack, page, error, pong), waiting for room."""
        await self.outbox.put(frame)

    async def answer_error(self, exc: RelayError, ctx: AnswerContext | None) -> None:
        await self.outbox.put(self.ctx.error_frame(exc, ctx))

    # --- receiving ------------------------------------------------------------------------------------

    async def receive_object(self) -> dict[str, JsonValue]:
        """The next frame as a JSON object (see :func:`relay.gateway.inbound.receive_object`)."""
        try:
            return await receive_object(self.ws, max_frame_bytes=self.ctx.settings.max_frame_bytes)
        finally:
            self.last_heard = trio.current_time()

    # --- ending ---------------------------------------------------------------------------------------

    def refuse(self, error: RelayError) -> None:
        """End the session right after the upgrade with ``error`` (before any handshake)."""
        self._refusal = error

    def stop_reading(self) -> None:
        """Stop reading frames and serving pages; publishes already read are still committed and acked."""
        self.reading_paused = True
        self.reader_scope.cancel()
        self.pager_scope.cancel()

    def close(
        self, error: BaseException | None, *, ctx: AnswerContext | None = None, graceful: bool = False
    ) -> None:
        """End the session with ``error`` (``None``: the peer is gone). The first request wins.

        ``graceful`` (shutdown) stops reading, lets accepted publishes commit and their acks go out,
        then closes; a later non-graceful request cuts that short (and a revocation then closes with
        its own error, so the device learns it must not reconnect). Returns at once.
        """
        graceful = graceful and self.welcomed
        if self._request is not None:
            if error is None:  # the peer went away meanwhile: stop sending whatever was planned
                self.work_scope.cancel()
                self.outbox.finish(Closing())
            elif self._request.graceful and not graceful:  # a drain cut short (a revocation says so)
                revoked = isinstance(error, DeviceRevoked | AccountDeleted)
                self._request = (
                    _CloseRequest(error, ctx, False)
                    if revoked
                    else attrs.evolve(self._request, graceful=False)
                )
                self.work_scope.cancel()
                self.outbox.finish(self._final())
            return
        self._request = _CloseRequest(error, ctx, graceful)
        if self._scope is not None:
            self._scope.deadline = min(self._scope.deadline, trio.current_time() + CLOSE_TIMEOUT_S)
        if graceful:
            self.stop_reading()
            self.watchdog_scope.cancel()
        else:
            self.work_scope.cancel()
            self.outbox.finish(self._final())

    def _final(self) -> Closing:
        """How the writer ends, decided once from the close request.

        Frames queued before the close still go out first, except for a slow consumer (it is closed
        because it does not read them) and a peer that is gone (nothing can be sent to it).
        """
        if self._closing is None:
            request = self._request
            if request is None or request.error is None:
                self._closing = Closing()
            else:
                code, reason = _close_code(request.error, in_handshake=not self.welcomed)
                frame = self.ctx.error_frame(request.error, request.ctx)
                drain = not isinstance(request.error, SlowConsumer)
                revoked = self.revocation is not None and request.error is self.revocation
                sent = self._revocation_closed if revoked else None
                self._closing = Closing(frame=frame, code=code, reason=reason, drain=drain, sent=sent)
        return self._closing

    def _revocation_closed(self) -> None:
        """(The writer, once the close of the revocation is sent.) Time it since the node learned."""
        self.ctx.instruments.revocation_closed(self._revocation_path, trio.current_time() - self._revoked_at)

    # --- running --------------------------------------------------------------------------------------

    async def run(self, work: Callable[[Session], Awaitable[None]]) -> None:
        """Serve the session with ``work`` (its tasks) until it has closed; returns whatever its fate."""
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.outbox.run)
                try:
                    await self._contain(work)
                finally:  # also when the server cancels everything: then the writer just stops
                    self.outbox.finish(self._final())
                    await self._leave()
            if self._final().frame is not None:
                await self._drain_until_disconnected()

    async def _drain_until_disconnected(self) -> None:
        """After our close frame: read and drop what the peer still sends until its close arrives.

        A client blocked sending (its publishes queued behind a reader that stopped, during a drain)
        can answer our close only once those bytes are read; without this the connection would linger
        until the server's own shutdown bound. Bounded by the session's close deadline (set by
        :meth:`close`).
        """
        with contextlib.suppress(Exception):
            while not isinstance(await self.ws.receive(), Disconnected):
                pass

    async def _contain(self, work: Callable[[Session], Awaitable[None]]) -> None:
        """Run ``work`` in the work scope; whatever ends it becomes the close request."""
        try:
            with self.work_scope:
                if self._refusal is not None:
                    raise self._refusal
                await work(self)
        except* PeerGone:
            self.close(None)
        except* RelayError as group:
            self.close(_first(group))
        except* Exception as group:
            self.close(_first(group))
        if self._request is None:  # work returned on its own: a bug, since only a close ends it
            self.close(InternalError(detail="the session's tasks ended without a reason"))

    async def _leave(self) -> None:
        """Leave the revocation index and the bus (presence), and record ``last_seen_at``; bounded, and
        done even when cancelled."""
        self.ctx.revocations.discard(self)
        with trio.CancelScope(shield=True), trio.move_on_after(LEAVE_TIMEOUT_S):
            now = self.ctx.clock.now_ms()
            if self.subscribed:
                self.subscribed = False
                try:
                    await self.ctx.bus.unsubscribe(self, at=now)
                except RelayError as exc:
                    log.warning("leaving the bus failed for session %s: %s", self.session_id, exc)
            if self.identity is not None:
                try:
                    await self.ctx.store.touch_device(self.identity.device_id, now_ms=now)
                except RelayError as exc:
                    log.warning("recording last_seen_at failed for session %s: %s", self.session_id, exc)


def _close_code(error: BaseException, *, in_handshake: bool) -> tuple[int, str]:
    """The close code and reason (the error's code) for a session ending with ``error``."""
    if isinstance(error, RelayError) and not isinstance(error, InternalError):
        code = error.close_code_for(in_handshake=in_handshake)
        if code is not None:
            return code, error.code
    return InternalError.close_code or 1011, InternalError.code


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


if TYPE_CHECKING:
    from relay.bus.base import Subscriber

    def _conforms(session: Session) -> Subscriber:
        return session
