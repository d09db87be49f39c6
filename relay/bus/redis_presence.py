"""Presence of the Redis bus: which sessions are live, kept as Redis state that expires.

The scripts named here (``JOIN``, ``LEAVE``, ``BEAT``, ``ANNOUNCE_OFFLINE``, ``ONLINE``) are in
:mod:`relay.bus.redis_scripts`; :class:`Presence` calls them.

Layout (``P`` is the bus's prefix, ``relay:`` by default)
    ``P presence:{user_id}`` is a sorted set with one member per live session of the user,
    ``{device_id}/{session_id}``, scored with the Redis time (ms) after which the entry is dead. The
    node holding the session renews its score every ``heartbeat_ms`` (``BEAT``); the key itself
    expires a lifetime after its last write, so a user nobody holds a session of leaves nothing behind.

Lifetime and the bound of PROTOCOL.md §4.5
    An entry lives :func:`entry_lifetime_ms` = 1.9 × ``heartbeat_ms`` after its last renewal, and
    renewals come every ``heartbeat_ms``, so a renewal late by up to 0.9 × ``heartbeat_ms`` is
    tolerated. When a node dies, its entries are dead at most 1.9 × ``heartbeat_ms`` after their last
    renewal: from then on ``ONLINE`` (``online_devices``) no longer lists them. Every live node holding
    a session of the user sweeps the dead entries of that user at each of its heartbeats (``BEAT``,
    atomic, so exactly one node finds each dead entry) and announces ``offline`` for every device left
    without a live entry (``ANNOUNCE_OFFLINE``). So the devices of a dead node show online for at most
    1.9 + 1 = 2.9 × ``heartbeat_ms`` plus one Redis round trip: within the 3 × of §4.5. When no node
    holds a session of the user, nobody is there to be told; the entries just expire.

Presence changes (all in Lua, atomic, so two nodes never both announce the same change)
    ``JOIN`` adds a session and publishes ``online`` when its device had no live entry, together with
    the session's :class:`~relay.bus.base.ReplaceNote` on the control channel (every node orders
    replacements by the order of these notes, see :mod:`relay.bus.redis`). ``LEAVE`` removes one and
    publishes ``offline`` when it was its device's last live entry. A replaced session leaves after its
    replacement joined, so neither announces anything. Dead entries of the device are dropped on the
    way (their node is gone; the device is online or offline by the live ones alone).

The node encodes every note (the frame included) before calling a script; a script only decides
whether to publish it. Only the offline notes of a sweep cannot be known in advance: ``BEAT`` returns
the devices, and the node publishes each through ``ANNOUNCE_OFFLINE``, which checks again that the
device is still without a live entry (so a device that came back in between is not announced offline
after its ``online``; at worst its watchers hear ``online`` twice).
"""

from __future__ import annotations

import attrs
import redis

from relay.bus.base import PresenceNote, ReplaceNote, note_to_json
from relay.bus.redis_commands import Commands
from relay.bus.redis_scripts import PresenceScripts
from relay.clock import Clock
from relay.errors import BusUnavailable
from relay.protocol.codec import encode_server
from relay.protocol.messages import Presence as PresenceFrame

__all__ = ["HEARTBEAT_MAX_USERS", "Names", "Presence", "entry_lifetime_ms", "member"]

#: Users renewed by one pipeline of a heartbeat at most; more take several round trips (users).
HEARTBEAT_MAX_USERS = 1000

#: An entry lives this many tenths of ``heartbeat_ms`` after its last renewal (tenths of heartbeat).
ENTRY_LIFETIME_TENTHS = 19


def entry_lifetime_ms(heartbeat_ms: int) -> int:
    """How long a presence entry lives after its last renewal (ms); see the module docstring."""
    return max(1, heartbeat_ms * ENTRY_LIFETIME_TENTHS // 10)


@attrs.frozen
class Names:
    """The keys and channels of one bus prefix (keys and channel names are bytes, as Redis has them)."""

    prefix: str

    @property
    def control_channel(self) -> bytes:
        """Replacements, revocations and deletions: every node always listens here."""
        return f"{self.prefix}control".encode()

    def user_channel(self, user_id: str) -> bytes:
        """Events, presence and device notices of one user: nodes holding a session of it listen."""
        return f"{self.prefix}user:{user_id}".encode()

    def node_channel(self, node_id: str) -> bytes:
        """One node's own channel, for its loop-back canary."""
        return f"{self.prefix}node:{node_id}".encode()

    def presence_key(self, user_id: str) -> bytes:
        return f"{self.prefix}presence:{user_id}".encode()

    def user_of_channel(self, channel: bytes) -> str | None:
        """The user id of a user channel of this prefix, else ``None``."""
        head = f"{self.prefix}user:".encode()
        return channel[len(head) :].decode() if channel.startswith(head) else None


def member(device_id: str, session_id: str) -> bytes:
    """The presence member of a session (UUIDs hold no ``/``)."""
    return f"{device_id}/{session_id}".encode()


def device_of_member(value: bytes) -> str:
    return value.split(b"/", 1)[0].decode()


@attrs.define(eq=False)
class Presence:
    """This node's side of presence: the scripts, called through :class:`Commands` (module docstring).

    Every method raises :class:`BusUnavailable` when Redis fails. ``clock`` gives the ``at`` of the
    offline notices a sweep announces; the other notices carry the caller's ``at``.
    """

    _commands: Commands
    _names: Names
    heartbeat_ms: int
    _clock: Clock
    _scripts: PresenceScripts = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._scripts = PresenceScripts.register(self._commands.client)

    @property
    def lifetime_ms(self) -> int:
        return entry_lifetime_ms(self.heartbeat_ms)

    def _note(self, user_id: str, device_id: str, online: bool, at: int) -> bytes:
        frame = encode_server(PresenceFrame(device_id=device_id, online=online, at=at))
        return note_to_json(PresenceNote(user_id=user_id, device_id=device_id, online=online, frame=frame))

    async def join(self, user_id: str, device_id: str, session_id: str, *, at: int) -> bool:
        """Register the session and publish its ReplaceNote; True when it announced ``online``.

        Not abandoned when cancelled: it has run (or failed) by the time the caller goes on.
        """
        keys = [self._names.presence_key(user_id)]
        args: list[bytes | int] = [
            member(device_id, session_id),
            device_id.encode(),
            self.lifetime_ms,
            self._names.control_channel,
            note_to_json(ReplaceNote(user_id=user_id, device_id=device_id, session_id=session_id)),
            self._names.user_channel(user_id),
            self._note(user_id, device_id, True, at),
        ]
        result = await self._commands.call("joining presence", lambda _: self._scripts.join(keys, args))
        return result == 1

    async def leave(self, user_id: str, device_id: str, session_id: str, *, at: int) -> bool:
        """Remove the session's entry; True when it announced ``offline``. Not abandoned either."""
        keys = [self._names.presence_key(user_id)]
        args: list[bytes | int] = [
            member(device_id, session_id),
            device_id.encode(),
            self._names.user_channel(user_id),
            self._note(user_id, device_id, False, at),
        ]
        result = await self._commands.call("leaving presence", lambda _: self._scripts.leave(keys, args))
        return result == 1

    async def online(self, user_id: str) -> list[str]:
        """The user's devices with a live entry, in the order of their entries (abandoned if cancelled:
        it only reads)."""
        key = self._names.presence_key(user_id)
        members = await self._commands.call(
            "reading presence", lambda _: self._scripts.online([key], []), abandon_on_cancel=True
        )
        if not isinstance(members, list):
            raise BusUnavailable(detail="reading presence: unexpected answer")
        return list(dict.fromkeys(device_of_member(m) for m in members if isinstance(m, bytes)))

    async def beat(self, held: dict[str, list[tuple[str, str]]]) -> list[str]:
        """Renew ``held`` (user id → its (device id, session id) here), sweep those users' dead entries
        and announce the devices the sweep left offline. Returns the sessions whose entry was gone."""
        users = list(held)
        lifetime = self.lifetime_ms
        missing: list[str] = []
        gone: list[tuple[str, str]] = []
        for start in range(0, len(users), HEARTBEAT_MAX_USERS):
            chunk = users[start : start + HEARTBEAT_MAX_USERS]

            def renew(client: redis.Redis, chunk: list[str] = chunk) -> list[object]:
                pipe = client.pipeline(transaction=False)
                for user_id in chunk:
                    members = [member(device_id, session_id) for device_id, session_id in held[user_id]]
                    self._scripts.beat([self._names.presence_key(user_id)], [lifetime, *members], pipe)
                return list(pipe.execute())

            for user_id, result in zip(chunk, await self._commands.call("heartbeat", renew), strict=True):
                lost, devices = _beat_result(result)
                missing.extend(value.split(b"/", 1)[-1].decode() for value in lost)
                gone.extend((user_id, device_id) for device_id in devices)
        if gone:
            await self._announce_offline(gone)
        return missing

    async def _announce_offline(self, gone: list[tuple[str, str]]) -> None:
        at = self._clock.now_ms()
        calls = [
            (
                [self._names.presence_key(user_id)],
                [
                    device_id.encode(),
                    self._names.user_channel(user_id),
                    self._note(user_id, device_id, False, at),
                ],
            )
            for user_id, device_id in gone
        ]

        def announce(client: redis.Redis) -> None:
            pipe = client.pipeline(transaction=False)
            for keys, args in calls:
                self._scripts.announce_offline(keys, args, pipe)
            pipe.execute()

        await self._commands.call("announcing offline devices", announce)


def _beat_result(result: object) -> tuple[list[bytes], list[str]]:
    """The ``{missing, gone}`` of one BEAT answer."""
    if not (isinstance(result, list) and len(result) == 2 and all(isinstance(r, list) for r in result)):
        raise BusUnavailable(detail="heartbeat: unexpected answer")
    missing, gone = result
    return [m for m in missing if isinstance(m, bytes)], [g.decode() for g in gone if isinstance(g, bytes)]
