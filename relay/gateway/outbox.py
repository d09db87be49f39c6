"""A session's outgoing frames: a bounded queue and the one task that sends (STYLE.md rules 5 and 6).

Everything a session sends goes through its :class:`Outbox`: answers and pages with :meth:`Outbox.put`,
which waits for room; live frames (events, presence, notices, heads) with :meth:`Outbox.put_nowait`,
which never waits and reports a full queue so the session can close with ``slow_consumer``.
:meth:`Outbox.run` is the writer: the only code that calls the WebSocket's send methods.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from relay.gateway.asgi import AsgiWebSocket
from relay.gateway.fastpath import send_text

__all__ = ["OUTBOX_FRAMES", "Closing", "Outbox"]

#: Frames a session may have queued for sending. More than ``max_inflight`` acks plus ``max_replays``
#: pages at their defaults (64 + 4), so that answers never crowd out live events in normal use.
OUTBOX_FRAMES = 256
#: Frames the writer sends from a non-empty queue before it yields to the other tasks once.
FAIR_FRAMES = 32


@attrs.frozen
class Closing:
    """How the writer ends: with ``frame`` (an ``error``) then a close, or silently (``frame`` None)."""

    frame: str | None = None
    code: int = 1000
    reason: str = ""
    #: Send what is queued before the final frame (not for a slow consumer: it does not read).
    drain: bool = False
    #: Called by the writer once the close is sent (not when it could not be: the peer is gone).
    sent: Callable[[], None] | None = attrs.field(default=None, eq=False, repr=False)


@attrs.define(eq=False)
class Outbox:
    """The bounded queue of one session and its writer."""

    ws: AsgiWebSocket
    capacity: int = OUTBOX_FRAMES
    #: Send frames through :mod:`relay.gateway.fastpath` (each frame encoded once for all recipients).
    fast: bool = False
    _send: trio.MemorySendChannel[str] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[str] = attrs.field(init=False)
    _closing: Closing | None = attrs.field(default=None, init=False)
    _idle: trio.CancelScope | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[str](self.capacity)

    def put_nowait(self, frame: str) -> bool:
        """Queue a live frame without waiting; False when the queue is full (the caller closes)."""
        if self._closing is not None:
            return True  # the session is ending: nothing more is sent, and that is no overflow
        try:
            self._send.send_nowait(frame)
        except trio.WouldBlock:
            return False
        return True

    async def put(self, frame: str) -> None:
        """Queue an answer, waiting for room. Once the session is ending (not draining) it is dropped."""
        if self._closing is not None and not self._closing.drain:
            await trio.lowlevel.checkpoint()
            return
        await self._send.send(frame)

    def finish(self, closing: Closing) -> None:
        """Tell the writer how to end: it sends what is queued first when ``closing.drain``, else it
        stops after the frame it is sending; then the final frame and the close.

        The first call decides, except that a silent ``Closing()`` (the peer is gone) always wins.
        """
        if self._closing is None or closing.frame is None:
            self._closing = closing
        if self._idle is not None:
            self._idle.cancel()

    def _ending(self) -> Closing:
        assert self._closing is not None, "the writer ends only after finish()"
        return self._closing

    async def run(self) -> None:
        """The writer: send queued frames until :meth:`finish`, then end as it says. Runs in the session."""
        await self._send_queued()
        while self._ending().drain:
            try:
                frame = self._receive.receive_nowait()
            except trio.WouldBlock:
                break
            await self._send_frame(frame)
        closing = self._ending()  # read again: the peer may have gone meanwhile
        if closing.frame is not None:
            await self.ws.send_text(closing.frame)
            await self.ws.close(closing.code, closing.reason)
            if closing.sent is not None:
                closing.sent()

    async def _send_queued(self) -> None:
        """Send frames as they are queued, until :meth:`finish`.

        A frame already queued is taken without waiting (no cancel scope, no scheduler round trip: under
        fan-out that is most frames); only an empty queue is waited on, in a scope :meth:`finish` can
        cancel. Every :data:`FAIR_FRAMES` frames taken without waiting the writer yields once, so one
        busy session cannot hold the event loop for a whole queue's worth of sends.
        """
        unyielded = 0
        while self._closing is None:
            try:
                frame = self._receive.receive_nowait()
            except trio.WouldBlock:
                unyielded = 0
                with trio.CancelScope() as idle:
                    self._idle = idle
                    frame = await self._receive.receive()
                self._idle = None
                if idle.cancelled_caught:
                    return  # finish() came while waiting
            else:
                unyielded += 1
                if unyielded >= FAIR_FRAMES:
                    unyielded = 0
                    await trio.lowlevel.checkpoint()
            if not self._sends_queued():
                return  # finish() came as this frame was taken: it is dropped
            await self._send_frame(frame)

    async def _send_frame(self, frame: str) -> None:
        await send_text(self.ws.asgi_send, frame, enabled=self.fast)

    def _sends_queued(self) -> bool:
        """Whether frames already queued are still to be sent."""
        return self._closing is None or self._closing.drain
