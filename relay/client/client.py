"""The reconnecting device client: publish with retry by id, and every event of the user, in order.

::

    async with open_client(creds) as client:
        ack = await client.publish("notes", {"text": "hello"})
        async for item in client:          # StoredEvent (per stream in seq order), Presence, DeviceNotice
            ...

What it does for the application (PROTOCOL.md §4, §7):

- **Reconnects** with jittered exponential back-off after every close but 1002, 1003, 1007, 1008, 1009
  and 4001 (§4.6); after one of those, or when the pinned server key does not verify, the client
  fails: :meth:`RelayClient.publish` and :meth:`RelayClient.receive` raise the
  :class:`~relay.client.errors.ConnectionLost` (or :class:`~relay.errors.Unauthorized`).
- **Retries un-acked publishes** with the same ``id`` and ``ts`` on the next session, in the order they
  were first sent, so an event is stored once whatever happens to the connection (§4.2, §7.4). A
  ``rate_limited`` or ``unavailable`` answer is retried after its ``retry_after_ms``; any other refusal
  is raised to the caller of :meth:`RelayClient.publish`.
- **Delivers each stream in seq order, without gaps or duplicates** (:mod:`relay.client.ordering`):
  live events and replays are merged; a seq missing from live delivery for ``gap_wait_s`` (a second,
  §4.3), a ``heads`` frame ahead of what was delivered, or a ``welcome`` listing a head ahead, triggers a
  replay of the missing range. A seq a replay skips has expired and is passed over.

``receive=False`` makes a client that only publishes (live frames are dropped, nothing is replayed);
``fail_fast=True`` makes the first connection attempt's failure raise instead of being retried.

``positions`` (stream → last seq the application has) says where to resume; with ``None`` the client
starts at the heads of its first ``welcome`` (it shows what happens from now on), and a stream it has
never seen starts at 0. :attr:`RelayClient.positions` is what has been delivered so far.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import trio

from relay.client.connection import Connection, LiveMessage, connect, new_event_id
from relay.client.credentials import DeviceCredentials
from relay.client.errors import ClientError, ConnectionLost
from relay.client.ordering import StreamOrder
from relay.clock import Clock, SystemClock
from relay.errors import RateLimited, RelayError, SessionError, Unauthorized, Unavailable
from relay.protocol import messages
from relay.protocol.messages import JsonValue

__all__ = ["Backoff", "Delivery", "RelayClient", "open_client"]

log = logging.getLogger("relay.client")

Delivery = messages.StoredEvent | messages.Presence | messages.DeviceNotice

#: Items (events, notices) the client holds for the application before it stops reading the socket.
DELIVERY_BUFFER = 10_000
#: Live frames between the connection's reader and the client's router.
LIVE_BUFFER = 1_000
#: Publishes waiting for the sender, beyond which :meth:`RelayClient.publish` waits for room.
PUBLISH_QUEUE = 1_024
#: §4.3: how long a missing seq may be late before the client replays it.
GAP_WAIT_S = 1.0
#: The wait before retrying a publish answered ``rate_limited`` or ``unavailable`` without a hint.
DEFAULT_RETRY_S = 1.0

Connector = Callable[..., AbstractAsyncContextManager[Connection]]


@attrs.frozen
class Backoff:
    """Full-jitter exponential back-off: attempt ``n`` waits uniformly in ``[0, min(max, first * 2**n)]``."""

    first_s: float = 0.1
    max_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_s, self.first_s * 2 ** min(attempt, 32)))


@attrs.define(eq=False)
class _Outgoing:
    """A publish the application is waiting for."""

    id: str
    stream: str
    body: JsonValue
    ts: int
    ttl: int | None
    expect_seq: int | None
    #: The connection generation it was last sent on (None: not sent on the current one).
    generation: int | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    ack: messages.Ack | None = None
    failure: BaseException | None = None

    def finish(self, ack: messages.Ack | None = None, failure: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.ack, self.failure = ack, failure
            self.done.set()


class RelayClient:
    """See the module docstring. Build with :func:`open_client`."""

    def __init__(
        self,
        creds: DeviceCredentials,
        *,
        positions: Mapping[str, int] | None = None,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        gap_wait_s: float = GAP_WAIT_S,
        rng: random.Random | None = None,
        connector: Connector = connect,
        connect_options: Mapping[str, Any] | None = None,
        receive: bool = True,
        fail_fast: bool = False,
    ) -> None:
        self.creds = creds
        self._receive = receive
        self._fail_fast = fail_fast
        self._clock = clock if clock is not None else SystemClock()
        self._backoff = backoff if backoff is not None else Backoff()
        self._gap_wait_s = gap_wait_s
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 (jitter, not secrets)
        self._connector = connector
        self._connect_options = dict(connect_options or {})
        self._start_at_heads = positions is None
        self._orders = {s: StreamOrder(s, delivered=p) for s, p in (positions or {}).items()}
        self._consumed = dict(positions or {})
        self._out_send, self._out_receive = trio.open_memory_channel[Delivery](DELIVERY_BUFFER)
        self._new_send, self._new_receive = trio.open_memory_channel[_Outgoing](PUBLISH_QUEUE)
        self._unacked: dict[str, _Outgoing] = {}
        self._conn: Connection | None = None
        self._generation = 0
        self._connected = trio.Event()
        self._failure: BaseException | None = None
        #: Held from taking events in until they are queued for the application, so that the router
        #: and the replays (separate tasks) never interleave what they release.
        self._delivering = trio.StrictFIFOLock()
        #: Released by the ordering, not yet in the application's channel (see :meth:`_release`).
        self._undelivered: collections.deque[Delivery] = collections.deque()
        self._replaying: set[str] = set()
        self._again: set[str] = set()
        #: Sessions opened so far (1 after the first welcome).
        self.sessions = 0

    # --- the application's side ------------------------------------------------------------------------

    @property
    def positions(self) -> dict[str, int]:
        """Stream → the last seq the application has received (or where it started): where to resume."""
        return dict(self._consumed)

    @property
    def connection(self) -> Connection | None:
        """The current session, if one is open."""
        return self._conn

    async def wait_connected(self) -> Connection:
        """The current session, once one is open; raises if the client has failed."""
        while True:
            if self._failure is not None:
                raise self._failure
            conn = self._conn
            if conn is not None and conn.lost is None:
                return conn
            await self._connected.wait()

    async def publish(
        self,
        stream: str,
        body: JsonValue,
        *,
        id: str | None = None,
        ttl: int | None = None,
        expect_seq: int | None = None,
        ts: int | None = None,
    ) -> messages.Ack:
        """Publish one event; returns its ack, retrying across reconnects (module docstring).

        Bound it with a cancel scope: cancelling gives the event up (it may or may not be stored; a
        later publish with the same ``id`` finds out).
        """
        if self._failure is not None:
            raise self._failure
        out = _Outgoing(
            id=id if id is not None else new_event_id(),
            stream=stream,
            body=body,
            ts=ts if ts is not None else self._clock.now_ms(),
            ttl=ttl,
            expect_seq=expect_seq,
        )
        if out.id in self._unacked:
            raise ClientError(f"an event with id {out.id!r} is already being published")
        self._unacked[out.id] = out
        try:
            await self._new_send.send(out)
            await out.done.wait()
        finally:
            self._unacked.pop(out.id, None)
        if out.failure is not None:
            raise out.failure
        assert out.ack is not None
        return out.ack

    async def receive(self) -> Delivery:
        """The next event (in order within its stream) or notice; raises once the client has failed."""
        try:
            item = await self._out_receive.receive()
        except trio.EndOfChannel:
            raise self._failure or ClientError("the client is closed") from None
        if isinstance(item, messages.StoredEvent) and item.seq > self._consumed.get(item.stream, 0):
            self._consumed[item.stream] = item.seq
        return item

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery]:
        while True:
            yield await self.receive()

    async def catch_up(self, stream: str) -> int:
        """Replay ``stream`` up to its current head now; return the position reached."""
        conn = await self.wait_connected()
        await self._replay(conn, stream)
        return self._order(stream).delivered

    # --- the connection loop ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a session open until cancelled or until a close that forbids reconnecting.

        Reports ``started`` once the first session is open, or once the first attempt failed (then it
        keeps trying).
        """
        started = False

        def opened() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        attempt = 0
        try:
            while True:
                sessions = self.sessions
                try:
                    await self._session(opened)
                except ConnectionLost as lost:
                    if not lost.retryable or (self._fail_fast and not started):
                        self._fail(lost)
                        opened()
                        return
                    log.info("session ended (%s); reconnecting", lost)
                except Unauthorized as exc:  # the pinned server key does not verify
                    self._fail(exc)
                    opened()
                    return
                except ClientError as exc:
                    if self._fail_fast and not started:
                        raise
                    log.info("%s; retrying", exc)
                opened()
                attempt = 0 if self.sessions > sessions else attempt + 1
                await trio.sleep(self._backoff.delay(attempt, self._rng))
        finally:
            self._conn = None

    async def _session(self, opened: Callable[[], None]) -> None:
        live_send, live_receive = trio.open_memory_channel[LiveMessage](LIVE_BUFFER)
        live = live_send if self._receive else None
        async with self._connector(self.creds, live=live, clock=self._clock, **self._connect_options) as conn:
            self._generation += 1
            self.sessions += 1
            self._conn = conn
            self._connected.set()
            self._connected = trio.Event()
            try:
                async with trio.open_nursery() as nursery:
                    if self._undelivered:
                        nursery.start_soon(self._flush)
                    nursery.start_soon(self._route, conn, live_receive, nursery)
                    nursery.start_soon(self._send_publishes, conn, self._generation, nursery)
                    if self._receive:
                        self._welcome(conn, nursery)
                    opened()
                    await conn.closed.wait()
                    nursery.cancel_scope.cancel()
            finally:
                self._conn = None
                self._replaying.clear()
                self._again.clear()
        if conn.lost is not None:
            raise conn.lost

    def _fail(self, failure: BaseException) -> None:
        self._failure = failure
        self._out_send.close()
        for out in list(self._unacked.values()):
            out.finish(failure=failure)
        self._connected.set()

    # --- receiving -------------------------------------------------------------------------------------

    def _order(self, stream: str, *, start: int = 0) -> StreamOrder:
        order = self._orders.get(stream)
        if order is None:
            order = self._orders[stream] = StreamOrder(stream, delivered=start)
            if start:
                self._consumed.setdefault(stream, start)
        return order

    def _welcome(self, conn: Connection, nursery: trio.Nursery) -> None:
        heads = conn.welcome.streams
        first = self._start_at_heads
        self._start_at_heads = False
        for stream, head in heads.items():
            order = self._order(stream, start=head if first else 0)
            order.note_head(head)
            if order.gap:
                self._schedule_replay(conn, nursery, stream)
        if conn.welcome.streams_truncated:
            nursery.start_soon(self._list_and_catch_up, conn, nursery, first)

    async def _list_and_catch_up(self, conn: Connection, nursery: trio.Nursery, first: bool) -> None:
        try:
            heads = await conn.all_streams()
        except (ConnectionLost, RelayError) as exc:
            log.info("listing streams failed: %s", exc)
            return
        for stream, head in heads.items():
            order = self._order(stream, start=head if first else 0)
            order.note_head(head)
            if order.gap:
                self._schedule_replay(conn, nursery, stream)

    async def _route(
        self, conn: Connection, live: trio.MemoryReceiveChannel[LiveMessage], nursery: trio.Nursery
    ) -> None:
        async for msg in live:
            if isinstance(msg, messages.Event):
                order = self._order(msg.event.stream)
                await self._offer(order, msg.event)
                if order.gap:
                    self._schedule_replay(conn, nursery, order.stream, delay=self._gap_wait_s)
            elif isinstance(msg, messages.Heads):
                for stream, head in msg.streams.items():
                    order = self._order(stream)
                    order.note_head(head)
                    if order.gap:
                        self._schedule_replay(conn, nursery, stream, delay=self._gap_wait_s)
            else:
                async with self._delivering:
                    await self._release([msg])

    async def _offer(self, order: StreamOrder, event: messages.StoredEvent) -> None:
        async with self._delivering:
            await self._release(order.offer(event))

    async def _cover(self, order: StreamOrder, upto: int) -> None:
        async with self._delivering:
            await self._release(order.covered(upto))

    async def _release(self, items: Sequence[Delivery]) -> None:
        """Queue ``items`` for the application, after any released earlier and not yet queued.

        Called holding :attr:`_delivering`. The ordering state has already moved past what
        :class:`StreamOrder` released, so a released event must never be dropped: it is first put in
        :attr:`_undelivered` (no await), and taken out only once the channel has it. A cancellation
        while waiting for room in the channel (the session ending) leaves the rest there, for the next
        release, or the next session's first task, to queue.
        """
        self._undelivered.extend(items)
        while self._undelivered:
            try:
                await self._out_send.send(self._undelivered[0])
            except trio.ClosedResourceError:  # the client has failed: nobody will read them
                self._undelivered.clear()
                return
            self._undelivered.popleft()

    async def _flush(self) -> None:
        """Queue what an ended session released but could not queue (see :meth:`_release`)."""
        async with self._delivering:
            await self._release([])

    def _schedule_replay(
        self, conn: Connection, nursery: trio.Nursery, stream: str, *, delay: float = 0
    ) -> None:
        if stream in self._replaying:
            self._again.add(stream)
            return
        self._replaying.add(stream)

        async def replay() -> None:
            try:
                await trio.sleep(delay)
                while True:
                    self._again.discard(stream)
                    if self._order(stream).gap:
                        await self._replay(conn, stream)
                    if stream not in self._again:
                        return
            except (ConnectionLost, RelayError) as exc:
                log.info("replay of a stream failed: %s", exc)
            finally:
                self._replaying.discard(stream)

        nursery.start_soon(replay)

    async def _replay(self, conn: Connection, stream: str) -> None:
        """Replay ``stream`` from what was delivered up to the head at the start of the replay."""
        order = self._order(stream)
        async for page in conn.replay_to_head(stream, after=order.delivered):
            order.note_head(page.head)
            for event in page.events:
                await self._offer(order, event)
            if page.next is None:
                await self._cover(order, page.head)
            elif page.events:
                await self._cover(order, page.events[-1].seq)

    # --- publishing ------------------------------------------------------------------------------------

    async def _send_publishes(self, conn: Connection, generation: int, nursery: trio.Nursery) -> None:
        """Send the un-acked publishes first, in order, then new ones as they come."""
        try:
            for out in list(self._unacked.values()):
                await self._send_one(conn, out, generation, nursery)
            async for out in self._new_receive:
                await self._send_one(conn, out, generation, nursery)
        except ConnectionLost:
            return

    async def _send_one(
        self, conn: Connection, out: _Outgoing, generation: int, nursery: trio.Nursery
    ) -> None:
        if out.done.is_set() or out.generation == generation or out.id not in self._unacked:
            return
        out.generation = generation
        waiter = await conn.send_publish(
            out.stream, out.body, id=out.id, ts=out.ts, ttl=out.ttl, expect_seq=out.expect_seq
        )

        async def answer() -> None:
            try:
                out.finish(ack=await waiter())
            except (ConnectionLost, SessionError):
                # The session ended (its closing error may name this publish: bus_lost after the
                # commit, going_away...): the event may or may not be stored, so the next session sends
                # it again with the same id; a close that forbids reconnecting fails it instead.
                out.generation = None
            except (RateLimited, Unavailable) as exc:
                retry_ms = exc.fields.get("retry_after_ms")
                await trio.sleep(retry_ms / 1000 if isinstance(retry_ms, int) else DEFAULT_RETRY_S)
                out.generation = None
                if out.id in self._unacked:
                    await self._new_send.send(out)
            except RelayError as exc:
                out.finish(failure=exc)

        nursery.start_soon(answer)


@asynccontextmanager
async def open_client(creds: DeviceCredentials, **options: Any) -> AsyncIterator[RelayClient]:
    """A :class:`RelayClient` running in the background for the duration of the block.

    Returns once the first session is open, or once the first attempt failed (it keeps trying in the
    background; :meth:`RelayClient.wait_connected` waits for it).
    """
    client = RelayClient(creds, **options)
    user_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        try:
            yield client
        except BaseException as exc:  # re-raised below, outside the nursery: never wrapped in a group
            user_error = exc
        finally:
            nursery.cancel_scope.cancel()
    if user_error is not None:
        raise user_error
