"""The subscription side of the Redis bus: one pub/sub connection per generation, owned by one thread.

Channels are wanted or not by a count of holders (:meth:`Subscription.join`, :meth:`Subscription.leave`);
the permanent ones (the control channel, the node's own) are always wanted. A writer task brings the
connection's subscriptions to what is wanted, level-triggered: it sends ``SUBSCRIBE`` for channels
wanted but not requested and ``UNSUBSCRIBE`` for channels requested but no longer wanted, so a join
and a leave between two of its rounds cost nothing and no queue of commands can grow (at most one
round is handed to the thread at a time). Redis answers the commands of one connection in order, so
each ``subscribe`` reply confirms the oldest unconfirmed ``SUBSCRIBE`` of its channel;
:meth:`Subscription.join` returns the :class:`Signal` of that confirmation, after which every message
published on the channel reaches this node.

The connection
    One thread owns it (:mod:`relay.bus.redis_connection`): it sends the writer's rounds, reads and
    parses every reply (``parse``, off the trio loop) into a bounded inbox, and a pump task hands the
    inbox, in order, to ``on_message`` and to the bookkeeping of confirmations and PINGs.

Generations
    :meth:`Subscription.run_generation` connects, subscribes to every wanted channel, reports
    ``started`` once the permanent channels are confirmed, and then delivers until the connection
    fails, a ``PING`` sent every ``ping_interval_s`` is not answered within :attr:`pong_timeout_s`
    (a silently dead peer), or it is cancelled. It raises :class:`~relay.errors.BusUnavailable` when
    the connection is lost; every unconfirmed :class:`Signal` fails then. The caller decides what a
    loss means (the bus ends its sessions) and when to start the next generation.

Cancellation
    A cancelled generation tells its thread to stop (a flag and a wake-up), waits for it to return
    (at once, or after the socket operation it is in, at most ``COMMAND_TIMEOUT_S``) and only then
    closes the connection: no thread is left holding it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar, cast

import attrs
import redis
import trio

from relay.bus.redis_commands import COMMAND_TIMEOUT_S, bus_unavailable, connection_options
from relay.bus.redis_connection import Connection, Generation, Signal
from relay.errors import BusUnavailable

__all__ = ["PONG_TIMEOUT_MIN_S", "Subscription"]

log = logging.getLogger("relay.bus")

T = TypeVar("T")

#: A ``PING`` on the subscription is answered within max(this, the ping interval) or it is lost (seconds).
PONG_TIMEOUT_MIN_S = 1.0


@attrs.define(eq=False)
class _Channel:
    holders: int = 0
    #: The last command sent for the channel on this generation's connection was SUBSCRIBE.
    on_wire: bool = False
    #: Set when Redis confirms the SUBSCRIBE that made (or will make) the channel live.
    confirmed: Signal = attrs.Factory(Signal)


@attrs.define(eq=False)
class Subscription(Generic[T]):
    """The pub/sub connection of one node (see the module docstring).

    ``parse(channel, data)`` runs in the connection's thread and returns what ``on_message(channel,
    value)`` gets in a trio task, in the order Redis sent them; ``parse`` returns ``None`` to drop a
    message. ``on_message`` must not raise (what it raises is logged and the message skipped).
    """

    _url: str
    _permanent: tuple[bytes, ...]
    _parse: Callable[[bytes, bytes], T | None]
    _on_message: Callable[[bytes, T], None]
    ping_interval_s: float
    client_name: str
    _pool: redis.ConnectionPool = attrs.field(init=False)
    _channels: dict[bytes, _Channel] = attrs.field(factory=dict, init=False)
    #: Per channel, the confirmations of the SUBSCRIBEs sent and not yet answered, oldest first.
    _pending: dict[bytes, deque[Signal]] = attrs.field(factory=dict, init=False)
    _touched: set[bytes] = attrs.field(factory=set, init=False)
    _dirty: trio.Event = attrs.field(factory=trio.Event, init=False)
    _generation: Generation[T] | None = attrs.field(default=None, init=False)
    _limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1), init=False)
    #: Generations that reached delivery, since the start (for ``statistics``).
    generations: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._pool = redis.ConnectionPool.from_url(
            self._url, **connection_options(socket_timeout=COMMAND_TIMEOUT_S, client_name=self.client_name)
        )
        for channel in self._permanent:
            self._channels[channel] = _Channel(holders=1)

    @property
    def pong_timeout_s(self) -> float:
        return max(self.ping_interval_s, PONG_TIMEOUT_MIN_S)

    @property
    def delivering(self) -> bool:
        """True while a generation is up and its permanent channels are confirmed."""
        return self._generation is not None and self._generation.delivering

    def channel_count(self) -> int:
        """Channels currently wanted (the permanent ones included)."""
        return sum(1 for state in self._channels.values() if state.holders > 0)

    def join(self, channel: bytes) -> Signal:
        """Hold ``channel``; the returned signal is set once Redis confirmed the subscription.

        Synchronous, so that every join is matched by exactly one :meth:`leave` whatever becomes of
        the caller's wait for the signal (which fails when the generation is lost).
        """
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        state.holders += 1
        if not state.on_wire:
            self._touch(channel)
        return state.confirmed

    def leave(self, channel: bytes) -> None:
        """Release one hold of ``channel``; the last one unsubscribes (without waiting for Redis)."""
        state = self._channels.get(channel)
        if state is None or state.holders == 0:
            return
        state.holders -= 1
        if state.holders == 0:
            self._touch(channel)

    def _touch(self, channel: bytes) -> None:
        self._touched.add(channel)
        self._dirty.set()

    async def run_generation(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and deliver until the connection is lost (module docstring); never returns normally.

        Raises :class:`BusUnavailable` (possibly inside an exception group) when it cannot connect or
        loses the connection.
        """
        gen: Generation[T] = Generation.open(cast(Connection, self._pool.make_connection()))
        try:
            await trio.to_thread.run_sync(self._connect, gen, limiter=self._limiter)
            self._restart(gen)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_thread, gen)
                nursery.start_soon(self._pump, gen)
                nursery.start_soon(self._write, gen)
                nursery.start_soon(self._watch, gen)
                for channel in self._permanent:
                    await self._channels[channel].confirmed.wait()
                gen.delivering = True
                self.generations += 1
                task_status.started()
        finally:
            self._lose(gen)
            gen.close()  # the thread has returned: nobody else touches the connection now

    @staticmethod
    def _connect(gen: Generation[T]) -> None:
        try:
            gen.conn.connect()
        except (redis.RedisError, OSError) as exc:
            raise bus_unavailable("connecting the subscription", exc) from exc

    def _restart(self, gen: Generation[T]) -> None:
        """A new connection has no subscription: every wanted channel is to be subscribed again."""
        for state in self._channels.values():
            state.on_wire = False
            if state.confirmed.is_done():
                state.confirmed = Signal()
        self._pending.clear()
        self._touched = set(self._channels)
        self._dirty.set()
        self._generation = gen

    def _lose(self, gen: Generation[T]) -> None:
        gen.stop()
        gen.delivering = False
        if self._generation is gen:
            self._generation = None
        detail = "the bus lost its subscription"
        for state in self._channels.values():
            state.confirmed.fail(detail)
        for waiting in self._pending.values():
            for signal in waiting:
                signal.fail(detail)
        self._pending.clear()

    async def _run_thread(self, gen: Generation[T]) -> None:
        await trio.to_thread.run_sync(gen.run_thread, self._parse, limiter=self._limiter)

    async def _pump(self, gen: Generation[T]) -> None:
        while True:
            await gen.ready.wait()
            gen.ready = trio.Event()  # replaced before taking: a later put() wakes us again
            for push in gen.take():
                if push.kind == b"message" and push.value is not None:
                    try:
                        self._on_message(push.channel, push.value)
                    except Exception:
                        log.exception("the bus failed to handle a message")
                elif push.kind == b"subscribe":
                    waiting = self._pending.get(push.channel)
                    if waiting:
                        waiting.popleft().set()
                        if not waiting:
                            del self._pending[push.channel]
                elif push.kind == b"pong":
                    gen.ping_sent_at = None

    async def _write(self, gen: Generation[T]) -> None:
        """Hand the thread the commands that bring the subscriptions to what is wanted, and PINGs."""
        next_ping = trio.current_time()  # the first round also checks that the connection answers
        while True:
            with trio.move_on_at(next_ping):
                await self._dirty.wait()
            self._dirty = trio.Event()  # replaced before reading the state: a later change wakes us
            commands = self._changes()
            now = trio.current_time()
            if now >= next_ping:
                next_ping = now + self.ping_interval_s
                if gen.ping_sent_at is None:
                    gen.ping_sent_at = now
                    commands.append(("PING",))
            if commands:
                gen.sent = trio.Event()
                gen.submit([chunk for command in commands for chunk in gen.conn.pack_command(*command)])
                await gen.sent.wait()  # one round at a time: nothing piles up if the thread is stuck

    def _changes(self) -> list[tuple[str | bytes, ...]]:
        """The commands that bring the connection to the wanted channels; updates the bookkeeping."""
        subscribe: list[bytes] = []
        unsubscribe: list[bytes] = []
        for channel in self._touched:
            state = self._channels.get(channel)
            if state is None:
                continue
            if state.holders > 0 and not state.on_wire:
                state.on_wire = True
                subscribe.append(channel)
                self._pending.setdefault(channel, deque()).append(state.confirmed)
            elif state.holders == 0:
                if state.on_wire:
                    unsubscribe.append(channel)
                del self._channels[channel]  # a later join starts afresh, with a new signal
        self._touched.clear()
        commands: list[tuple[str | bytes, ...]] = []
        if subscribe:
            commands.append(("SUBSCRIBE", *subscribe))
        if unsubscribe:
            commands.append(("UNSUBSCRIBE", *unsubscribe))
        return commands

    async def _watch(self, gen: Generation[T]) -> None:
        """Fail the generation when a PING goes unanswered; on the way out, stop the thread."""
        try:
            while True:
                await trio.sleep(self.pong_timeout_s / 4)
                sent = gen.ping_sent_at
                if sent is not None and trio.current_time() - sent > self.pong_timeout_s:
                    raise BusUnavailable(detail="the subscription did not answer PING in time")
        finally:
            gen.stop()
