"""The thread that owns the Redis bus's pub/sub connection, for one generation of it.

A :class:`Generation` is one connection's lifetime. Its thread (:meth:`Generation.run_thread`) is the
only code that touches the connection: it sends the rounds of commands the trio side hands it
(:meth:`Generation.submit`), reads every reply, parses it (off the trio loop) and appends it to an
inbox of :data:`INBOX_MAX_MESSAGES` that the trio side drains (:meth:`Generation.take`, after
``ready`` is set). When nothing is to be read it waits in ``select`` on the socket and on a wake-up
socket pair the trio side writes to, so a command leaves at once. Keeping the connection to one thread
keeps it safe over TLS too (an SSL object must not be read and written by two threads at once).

When the inbox is full the thread waits: Redis then buffers for us and, past its
``client-output-buffer-limit pubsub``, drops the connection, which is a lost subscription like any
other. :meth:`Generation.stop` makes the thread return (at once, or after the socket operation it is
in, which the connection's ``socket_timeout`` bounds); :meth:`Generation.close` comes after that.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import attrs
import redis
import trio

from relay.bus.redis_commands import bus_unavailable
from relay.errors import BusUnavailable

__all__ = ["INBOX_MAX_MESSAGES", "Connection", "Generation", "Push", "Signal"]

T = TypeVar("T")

#: Replies read from the subscription but not yet handed to the bus; then the thread waits (messages).
INBOX_MAX_MESSAGES = 4096
#: Longest wait of the thread in one ``select`` before it looks whether it should stop (seconds).
READ_POLL_S = 1.0


class Connection(Protocol):
    """What the bus uses of redis-py's sync connection (whose own annotations are partial)."""

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...

    def can_read(self, timeout: float | None = 0) -> bool: ...

    def read_response(self, *, disconnect_on_error: bool = True) -> object: ...

    def pack_command(self, *args: str | bytes) -> list[bytes]: ...

    def send_packed_command(self, command: list[bytes], check_health: bool = True) -> None: ...


@attrs.define(eq=False)
class Signal:
    """Something this node waits for from Redis (a subscription's confirmation, a canary's return)."""

    _event: trio.Event = attrs.field(factory=trio.Event, init=False)
    _failure: str | None = attrs.field(default=None, init=False)

    def set(self) -> None:
        self._event.set()

    def fail(self, detail: str) -> None:
        """Wake the waiters with :class:`BusUnavailable` (no effect once set)."""
        if not self._event.is_set():
            self._failure = detail
            self._event.set()

    def is_done(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        """Return once set; raise :class:`BusUnavailable` if it failed instead."""
        await self._event.wait()
        if self._failure is not None:
            raise BusUnavailable(detail=self._failure)


@attrs.frozen
class Push(Generic[T]):
    """One reply read from the subscription connection."""

    kind: bytes
    channel: bytes
    value: T | None


def _wake(gen: Generation[T]) -> None:
    gen.ready.set()


def _sent(gen: Generation[T]) -> None:
    gen.sent.set()


@attrs.define(eq=False)
class Generation(Generic[T]):
    """One connection's lifetime, and what its thread shares with the trio side.

    ``cond`` guards ``inbox``, ``outgoing`` and ``stopping``, the only members both sides touch.
    """

    conn: Connection
    token: trio.lowlevel.TrioToken
    wake_r: socket.socket
    wake_w: socket.socket
    ready: trio.Event = attrs.Factory(trio.Event)
    sent: trio.Event = attrs.Factory(trio.Event)
    cond: threading.Condition = attrs.Factory(threading.Condition)
    inbox: deque[Push[T]] = attrs.Factory(deque)
    outgoing: list[bytes] | None = None
    #: A wake-up of the pump is scheduled and the pump has not taken the inbox since.
    woken: bool = False
    stopping: bool = False
    delivering: bool = False
    #: trio time of the unanswered PING, if one is out.
    ping_sent_at: float | None = None

    @classmethod
    def open(cls, conn: Connection) -> Generation[T]:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        return cls(conn, trio.lowlevel.current_trio_token(), wake_r, wake_w)

    def close(self) -> None:
        """Once the thread has returned: close the connection and the wake-up pair."""
        self.conn.disconnect()
        self.wake_r.close()
        self.wake_w.close()

    def wake_thread(self) -> None:
        # Full: a wake-up is pending anyway. Closed: the thread is gone.
        with contextlib.suppress(OSError):
            self.wake_w.send(b"\0")

    def submit(self, packed: list[bytes]) -> None:
        """(trio.) Hand the thread a round of commands; ``sent`` is set once they are written."""
        with self.cond:
            self.outgoing = packed
        self.wake_thread()

    def stop(self) -> None:
        """(trio.) Make the thread return."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.wake_thread()

    # --- the thread's side -------------------------------------------------------------------------

    def take_outgoing(self) -> list[bytes] | None:
        with self.cond:
            packed, self.outgoing = self.outgoing, None
        return packed

    def put(self, push: Push[T]) -> bool:
        """Queue ``push``, waiting while the inbox is full; False when stopping."""
        with self.cond:
            while len(self.inbox) >= INBOX_MAX_MESSAGES and not self.stopping:
                self.cond.wait(READ_POLL_S)
            if self.stopping:
                return False
            self.inbox.append(push)
            wake, self.woken = not self.woken, True
        if wake:  # one wake-up per batch the pump takes, not one per reply
            self.token.run_sync_soon(_wake, self)
        return True

    def take(self) -> list[Push[T]]:
        """(trio.) Everything in the inbox, oldest first."""
        with self.cond:
            batch = list(self.inbox)
            self.inbox.clear()
            self.woken = False
            self.cond.notify_all()
        return batch

    def run_thread(self, parse: Callable[[bytes, bytes], T | None]) -> None:
        """(The thread.) Send what is handed over, read, parse and queue every reply until stopped.

        ``parse(channel, data)`` turns a message into what the inbox holds (``None`` drops it).
        Raises :class:`BusUnavailable` when the connection fails (not when stopped).
        """
        conn = self.conn
        try:
            while not self.stopping:
                packed = self.take_outgoing()
                if packed is not None:
                    conn.send_packed_command(packed, check_health=False)
                    self.token.run_sync_soon(_sent, self)
                if conn.can_read(timeout=0):
                    push = _push(conn.read_response(disconnect_on_error=False), parse)
                    if push is not None and not self.put(push):
                        return
                else:
                    self._wait_readable()
        except trio.RunFinishedError:
            return
        except (redis.RedisError, OSError, ValueError) as exc:  # ValueError: a buffer closed under us
            if self.stopping:
                return
            raise bus_unavailable("the subscription connection", exc) from exc

    def _wait_readable(self) -> None:
        """Block until the socket or the wake-up pair is readable (or the poll ends)."""
        # redis-py exposes no file number of its socket; only select() needs it, the reads are its own.
        sock = getattr(self.conn, "_sock", None)
        if not isinstance(sock, socket.socket):
            raise redis.ConnectionError("the subscription connection is closed")
        select.select([sock, self.wake_r], [], [], READ_POLL_S)
        with contextlib.suppress(BlockingIOError):
            while self.wake_r.recv(4096):
                pass


def _push(reply: object, parse: Callable[[bytes, bytes], T | None]) -> Push[T] | None:
    """(The thread.) The reply as a push, parsed; ``None`` for a message ``parse`` dropped."""
    if reply == b"PONG":  # a PING answered outside subscribed mode (not expected, but harmless)
        return Push(b"pong", b"", None)
    if not isinstance(reply, list) or len(reply) < 2 or not isinstance(reply[0], bytes):
        raise redis.ResponseError("unexpected reply on the subscription connection")
    kind, channel = reply[0], reply[1]
    channel = channel if isinstance(channel, bytes) else b""
    if kind == b"message" and len(reply) == 3 and isinstance(reply[2], bytes):
        value = parse(channel, reply[2])
        return None if value is None else Push(kind, channel, value)
    return Push(kind, channel, None)
