"""The Redis bus: fan-out, presence and revocations between nodes (see :class:`relay.bus.base.Bus`).

Every node runs one :class:`RedisBus` against the same Redis (and the same ``prefix``). What crosses
Redis is the JSON form of :data:`~relay.bus.base.Note` values (:func:`~relay.bus.base.note_to_json`),
frames included, encoded once by the node that makes the note; a receiving node hands each note to
its :class:`~relay.bus.local.Fanout`, which applies the delivery rules to its own sessions (a traced
event inside a ``ws.deliver`` span that continues the publisher's trace: :mod:`relay.bus.tracing`).

Channels (``P`` is the prefix)
    - ``P user:{user_id}``: events, presence and device notices (enrolled, renamed) of one user. A
      node listens there only while it holds a session of the user: :meth:`RedisBus.subscribe`
      returns after Redis confirmed the subscription, so nothing published afterwards is missed, and
      the node unsubscribes when its last session of the user leaves.
    - ``P control``: :class:`~relay.bus.base.ReplaceNote`, revocations (``DeviceNote`` with
      ``change="revoked"``) and :class:`~relay.bus.base.UserDeletedNote`. Every node always listens, so
      they reach the node holding the session whatever its per-user subscriptions are doing, also
      when they come from a process that holds no session (``relay admin``).
    - ``P node:{node_id}``: the node's own channel, for :meth:`RedisBus.canary`.

Presence lives in Redis with expiry (:mod:`relay.bus.redis_presence` has the keys, the scripts and the
bound of PROTOCOL.md §4.5: a dead node's devices show online for at most 2.9 × ``heartbeat_ms`` plus
a round trip). :meth:`RedisBus.run` renews this node's entries every ``heartbeat_ms`` in one pipeline
and sweeps the dead entries of every user it holds a session of, announcing their ``offline``.
A session whose own entry was found gone (this node stalled past the lifetime and another node swept
it) is ended with ``bus_lost``: it reconnects and joins presence afresh.

Replacement ("the newest session of a device wins", §4.1)
    :data:`~relay.bus.redis_scripts.JOIN` publishes the session's ``ReplaceNote`` on the control
    channel in the same atomic step that registers it, so the order of the ReplaceNotes on the
    control channel, which every node receives identically, is the order of the sessions' ages. A
    ReplaceNote for session S ends the local sessions of S's device whose own ReplaceNote this node
    has already received (they are older than S), and no other: a session whose ReplaceNote is still
    on its way is newer, and will end S when it arrives. Two sessions of one device opening at once on
    two nodes thus end exactly the older one, on both. No presence change is announced: the device
    has a live entry throughout.

Losing the subscription (Redis restarted, the connection dropped, PING unanswered): every local
session is ended with ``bus_lost`` (4008: reconnect and replay) and :meth:`RedisBus.run` subscribes
again by itself, with jittered exponential back-off from ``reconnect_min_s`` to ``reconnect_max_s``.
While it is not delivering, :meth:`RedisBus.subscribe` and :meth:`RedisBus.canary` raise
:class:`~relay.errors.BusUnavailable`; publishing needs only Redis, not the subscription.
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from typing import TYPE_CHECKING

import attrs
import trio

from relay.bus.base import (
    DeviceNote,
    EventNote,
    Note,
    PresenceNote,
    ReplaceNote,
    Subscriber,
    UserDeletedNote,
    note_from_json,
    note_to_json,
)
from relay.bus.local import Fanout
from relay.bus.redis_commands import COMMAND_TIMEOUT_S, Commands, Publisher
from relay.bus.redis_connection import Signal
from relay.bus.redis_presence import Names, Presence
from relay.bus.redis_subscription import Subscription
from relay.bus.tracing import current_traceparent, deliver
from relay.clock import Clock, SystemClock
from relay.errors import BusLost, BusUnavailable, SessionError, SessionReplaced
from relay.protocol.codec import encode_server
from relay.protocol.messages import DeviceChange, DeviceNotice, Event, StoredEvent

__all__ = ["MAX_CANARIES", "RedisBus", "RedisBusStatistics"]

log = logging.getLogger("relay.bus")

#: Canaries waiting for their loop-back at once; more are refused with BusUnavailable (canaries).
MAX_CANARIES = 64
#: Longest an unsubscribe waits for Redis (its local effect is immediate); past it the entry expires.
LEAVE_TIMEOUT_S = COMMAND_TIMEOUT_S


@attrs.frozen
class _Canary:
    """A canary's token, come back on the node's own channel."""

    token: str


@attrs.define(eq=False)
class _Local:
    """A session of this node, as the bus tracks it."""

    subscriber: Subscriber
    #: The JOIN script was sent (it may have run): leaving must run LEAVE.
    join_sent: bool = False
    #: The JOIN script ran: the heartbeat renews the entry.
    joined: bool = False
    #: This node has received the session's own ReplaceNote (see the module docstring).
    echoed: bool = False


@attrs.frozen
class RedisBusStatistics:
    """A snapshot of :meth:`RedisBus.statistics`."""

    delivering: bool
    #: Subscription generations that reached delivery (1 + reconnections).
    generations: int
    #: Attempts to connect the subscription, successful or not.
    connect_attempts: int
    sessions: int
    #: Channels subscribed or wanted, the control and node channels included.
    channels: int
    publish_batches: int
    published: int
    publish_queued: int


@attrs.define(eq=False)
class RedisBus:
    """The bus between nodes, over Redis (module docstring; :class:`relay.bus.base.Bus` for the contract).

    ``url`` is a ``redis://`` or ``rediss://`` URL; ``node_id`` names this node's own channel;
    ``heartbeat_ms`` paces presence renewal and the subscription's PING; ``prefix`` starts every key
    and channel (nodes that share it see each other; tests use their own); ``clock`` gives the ``at``
    of the offline notices a sweep announces. The bus delivers while :meth:`run` runs; publishing and
    the announcements also work without it (one call each), for processes such as ``relay admin``.
    """

    url: str
    node_id: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    heartbeat_ms: int = 20_000
    prefix: str = "relay:"
    clock: Clock = attrs.field(factory=SystemClock)
    reconnect_min_s: float = 0.05
    reconnect_max_s: float = 5.0
    _names: Names = attrs.field(init=False)
    _commands: Commands = attrs.field(init=False)
    _presence: Presence = attrs.field(init=False)
    _publisher: Publisher = attrs.field(init=False)
    _subscription: Subscription[Note | _Canary] = attrs.field(init=False)
    _fanout: Fanout = attrs.field(factory=Fanout, init=False)
    _sessions: dict[str, _Local] = attrs.field(factory=dict, init=False)
    _users: dict[str, dict[str, _Local]] = attrs.field(factory=dict, init=False)
    _canaries: dict[str, Signal] = attrs.field(factory=dict, init=False)
    _connect_attempts: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_ms <= 0:
            raise ValueError("heartbeat_ms must be positive")
        self._names = Names(self.prefix)
        self._commands = Commands.from_url(self.url, client_name=self.client_name)
        self._presence = Presence(self._commands, self._names, self.heartbeat_ms, self.clock)
        self._publisher = Publisher(self._commands)
        self._subscription = Subscription(
            self.url,
            (self._names.control_channel, self._names.node_channel(self.node_id)),
            self._parse,
            self._on_message,
            ping_interval_s=self.heartbeat_ms / 1000,
            client_name=self.client_name,
        )

    def close(self) -> None:
        """Close the pooled command connections (for a bus used without :meth:`run`; ``run`` does it)."""
        self._commands.close()

    @property
    def client_name(self) -> str:
        """The name of this node's connections in ``CLIENT LIST``."""
        return f"relay-bus:{self.node_id}"

    # --- running --------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish, stay subscribed and renew presence until cancelled; ``started`` once delivering.

        Does not report ``started`` while Redis cannot be reached (it keeps trying). Cancelling it
        stops the node's part of the bus, as a crash would for the other nodes (its presence expires).
        """
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._publisher.run)
                await nursery.start(self._stay_subscribed)
                nursery.start_soon(self._heartbeat)
                task_status.started()
        finally:
            self._commands.close()

    async def _stay_subscribed(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        backoff = self.reconnect_min_s
        reported = False
        while True:
            delivered = False
            self._connect_attempts += 1
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._subscription.run_generation)
                    delivered = True
                    backoff = self.reconnect_min_s
                    log.info("the bus is delivering (node %s)", self.node_id)
                    if not reported:
                        reported = True
                        task_status.started()
            except* BusUnavailable as group:
                what = "lost its subscription" if delivered else "cannot subscribe"
                log.warning("the bus %s: %s", what, _first(group))
            self._lost()
            await trio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311 (jitter, not secrecy)
            backoff = min(backoff * 2, self.reconnect_max_s)

    def _lost(self) -> None:
        """The subscription is gone: nothing sent meanwhile reaches this node's sessions."""
        for canary in self._canaries.values():
            canary.fail("the bus lost its subscription")
        for local in list(self._sessions.values()):
            _end(local.subscriber, BusLost(detail="the bus lost its subscription"))

    async def _heartbeat(self) -> None:
        period = self.heartbeat_ms / 1000
        deadline = trio.current_time()
        while True:
            deadline = max(deadline + period, trio.current_time())  # fixed rate, no burst after a stall
            await trio.sleep_until(deadline)
            try:
                await self._beat()
            except BusUnavailable as exc:
                log.warning("renewing presence failed: %s", exc)

    async def _beat(self) -> None:
        """Renew this node's presence entries and sweep the dead ones of its users."""
        held: dict[str, list[tuple[str, str]]] = {}
        for local in self._sessions.values():
            if local.joined:
                sub = local.subscriber
                held.setdefault(sub.user_id, []).append((sub.device_id, sub.session_id))
        if not held:
            return
        for session_id in await self._presence.beat(held):
            expired = self._sessions.get(session_id)
            if expired is not None and expired.joined:
                _end(expired.subscriber, BusLost(detail="this node's presence entry had expired"))

    # --- receiving ------------------------------------------------------------------------------------

    def _parse(self, channel: bytes, data: bytes) -> Note | _Canary | None:
        """(The subscription's thread.) What a message says; ``None`` (logged) for anything malformed."""
        if channel == self._names.node_channel(self.node_id):
            return _Canary(data.decode(errors="replace"))
        try:
            return note_from_json(data)
        except ValueError:
            log.warning("dropped a malformed bus message (%d bytes)", len(data))
            return None

    def _on_message(self, channel: bytes, value: Note | _Canary) -> None:
        if isinstance(value, _Canary):
            waiting = self._canaries.get(value.token)
            if waiting is not None:
                waiting.set()
        elif channel == self._names.control_channel:
            if isinstance(value, ReplaceNote):
                self._replace(value)
            elif isinstance(value, DeviceNote | UserDeletedNote):
                self._fanout.apply(value)
        elif self._names.user_of_channel(channel) == value.user_id and isinstance(
            value, EventNote | PresenceNote | DeviceNote
        ):
            deliver(self._fanout, value)  # a traced event inside its ws.deliver span

    def _replace(self, note: ReplaceNote) -> None:
        sessions = self._users.get(note.user_id, {})
        own = sessions.get(note.session_id)
        for local in list(sessions.values()):
            sub = local.subscriber
            if local.echoed and sub.device_id == note.device_id and local is not own:
                _end(sub, SessionReplaced())
        if own is not None:
            own.echoed = True

    # --- the Bus protocol -----------------------------------------------------------------------------

    async def subscribe(self, subscriber: Subscriber, *, at: int) -> None:
        """Join live delivery and presence (see :class:`relay.bus.base.Bus`).

        Raises :class:`BusUnavailable` when the bus is not delivering or Redis fails. Whatever it
        raises (or if it is cancelled), the caller must still :meth:`unsubscribe` the subscriber.
        """
        if not self._subscription.delivering:
            await trio.lowlevel.checkpoint()
            raise BusUnavailable(detail="the bus is not delivering")
        local = _Local(subscriber)
        user_id, device_id, session_id = subscriber.user_id, subscriber.device_id, subscriber.session_id
        self._sessions[session_id] = local
        self._users.setdefault(user_id, {})[session_id] = local
        self._fanout.add(subscriber)
        await self._subscription.join(self._names.user_channel(user_id)).wait()
        local.join_sent = True
        await self._presence.join(user_id, device_id, session_id, at=at)
        local.joined = True

    async def unsubscribe(self, subscriber: Subscriber, *, at: int) -> None:
        """Leave (see :class:`relay.bus.base.Bus`). The local effect is immediate. Redis is told even
        when the caller is cancelled, within the caller's deadline if it has one and at most
        ``LEAVE_TIMEOUT_S``; if that fails (:class:`BusUnavailable`), the entry is no longer renewed
        and expires, and the sweep announces the device offline within the §4.5 bound."""
        local = self._sessions.get(subscriber.session_id)
        if local is None or local.subscriber is not subscriber:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        user_id, device_id = subscriber.user_id, subscriber.device_id
        del self._sessions[subscriber.session_id]
        sessions = self._users[user_id]
        del sessions[subscriber.session_id]
        if not sessions:
            del self._users[user_id]
        self._fanout.remove(subscriber)
        self._subscription.leave(self._names.user_channel(user_id))
        if not local.join_sent:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        # Shielded, so that a caller cancelled without a shield still takes its entry out of Redis; an
        # unexpired deadline of the caller still bounds the wait (its thread is never abandoned).
        deadline = trio.current_effective_deadline()
        if deadline == -math.inf:  # already cancelled: our own bound
            deadline = math.inf
        with trio.CancelScope(
            shield=True, deadline=min(deadline, trio.current_time() + LEAVE_TIMEOUT_S)
        ) as scope:
            await self._presence.leave(user_id, device_id, subscriber.session_id, at=at)
        if scope.cancelled_caught:
            raise BusUnavailable(detail="leaving presence timed out")

    async def publish(self, user_id: str, event: StoredEvent, *, origin_session_id: str) -> None:
        frame = encode_server(Event(event=event))
        note = EventNote(
            user_id=user_id,
            origin_session_id=origin_session_id,
            stream=event.stream,
            seq=event.seq,
            frame=frame,
            trace=current_traceparent(),  # the caller's span (the gateway's fanout), if recording
        )
        await self._publisher.publish(self._names.user_channel(user_id), note_to_json(note))

    async def announce_device(
        self, user_id: str, change: DeviceChange, device_id: str, name: str, at: int
    ) -> None:
        frame = encode_server(DeviceNotice(change=change, device_id=device_id, name=name, at=at))
        note = DeviceNote(user_id=user_id, device_id=device_id, change=change, frame=frame)
        # A revocation must reach the device's sessions whatever the node's user subscriptions do.
        channel = self._names.control_channel if change == "revoked" else self._names.user_channel(user_id)
        await self._publisher.publish(channel, note_to_json(note))

    async def announce_user_deleted(self, user_id: str) -> None:
        await self._publisher.publish(
            self._names.control_channel, note_to_json(UserDeletedNote(user_id=user_id))
        )

    async def online_devices(self, user_id: str) -> list[str]:
        """The user's devices with a live presence entry, on any node, in the order of their entries."""
        return await self._presence.online(user_id)

    async def canary(self) -> None:
        """Publish on this node's own channel and return once it came back (bound it with a scope)."""
        if not self._subscription.delivering:
            await trio.lowlevel.checkpoint()
            raise BusUnavailable(detail="the bus is not delivering")
        if len(self._canaries) >= MAX_CANARIES:
            await trio.lowlevel.checkpoint()
            raise BusUnavailable(detail="too many canaries in flight")
        token = uuid.uuid4().hex
        returned = self._canaries[token] = Signal()
        try:
            await self._publisher.publish(self._names.node_channel(self.node_id), token.encode())
            await returned.wait()
        finally:
            del self._canaries[token]

    # --- helpers --------------------------------------------------------------------------------------

    def statistics(self) -> RedisBusStatistics:
        return RedisBusStatistics(
            delivering=self._subscription.delivering,
            generations=self._subscription.generations,
            connect_attempts=self._connect_attempts,
            sessions=len(self._sessions),
            channels=self._subscription.channel_count(),
            publish_batches=self._publisher.batches,
            published=self._publisher.messages,
            publish_queued=self._publisher.queued(),
        )


def _end(subscriber: Subscriber, error: SessionError) -> None:
    try:
        subscriber.end(error)
    except Exception:
        log.exception("a session failed to take its end (session %s)", subscriber.session_id)


def _first(group: BaseExceptionGroup[BusUnavailable]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


if TYPE_CHECKING:
    from relay.bus.base import Bus

    def _conforms(bus: RedisBus) -> Bus:
        return bus
