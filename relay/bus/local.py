"""The in-process bus: one node, no other process involved.

:class:`Fanout` is the node-local half of any bus: the table of this node's live sessions and the
delivery rules of :mod:`relay.bus.base` applied to one :data:`~relay.bus.base.Note`. :class:`LocalBus`
hands every note straight to its :class:`Fanout`; a bus between processes would carry the notes
(:func:`~relay.bus.base.note_to_json`) and hand what it receives to a :class:`Fanout` of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
)
from relay.bus.tracing import current_traceparent, deliver
from relay.errors import AccountDeleted, DeviceRevoked, SessionReplaced
from relay.protocol.codec import encode_server
from relay.protocol.messages import DeviceChange, DeviceNotice, Event, Presence, StoredEvent

if TYPE_CHECKING:
    from relay.bus.base import Bus

__all__ = ["Fanout", "LocalBus"]

log = logging.getLogger("relay.bus")


@attrs.define(eq=False)
class Fanout:
    """This node's live sessions by user, and who among them hears a note.

    One failing subscriber never keeps a note from the others: its exception is logged and skipped.
    """

    #: user id → session id → subscriber, in the order they joined.
    _users: dict[str, dict[str, Subscriber]] = attrs.field(factory=dict, init=False)

    def add(self, subscriber: Subscriber) -> bool:
        """Register ``subscriber``; True when no other session of its device was registered here."""
        sessions = self._users.setdefault(subscriber.user_id, {})
        first = not any(s.device_id == subscriber.device_id for s in sessions.values())
        sessions[subscriber.session_id] = subscriber
        return first

    def remove(self, subscriber: Subscriber) -> bool:
        """Unregister (idempotent); True when it was registered and was its device's last session here."""
        sessions = self._users.get(subscriber.user_id)
        if sessions is None or sessions.get(subscriber.session_id) is not subscriber:
            return False
        del sessions[subscriber.session_id]
        if not sessions:
            del self._users[subscriber.user_id]
        return not any(s.device_id == subscriber.device_id for s in sessions.values())

    def has_user(self, user_id: str) -> bool:
        return user_id in self._users

    def devices(self, user_id: str) -> list[str]:
        """The user's devices with a session here, in the order their first session joined."""
        return list(dict.fromkeys(s.device_id for s in self._users.get(user_id, {}).values()))

    def subscribers(self) -> list[Subscriber]:
        """Every registered session (for ending them all when the bus is lost)."""
        return [s for sessions in self._users.values() for s in sessions.values()]

    def apply(self, note: Note) -> None:
        """Deliver ``note`` to the sessions of its user that must hear it (module docstring of base)."""
        for subscriber in list(self._users.get(note.user_id, {}).values()):
            action = _action(note, subscriber)
            if action is None:
                continue
            try:
                action()
            except Exception:
                log.exception("a session failed to take a bus note (session %s)", subscriber.session_id)


def _action(note: Note, sub: Subscriber) -> Callable[[], None] | None:
    """What ``sub`` must do about ``note``, or ``None`` when the note is not for it."""
    match note:
        case EventNote():
            if sub.session_id == note.origin_session_id:
                return None
            return lambda: sub.send_live(note.frame, stream=note.stream, seq=note.seq)
        case PresenceNote():
            if sub.device_id == note.device_id:
                return None
            return lambda: sub.send_live(note.frame)
        case DeviceNote():
            if sub.device_id != note.device_id:
                return lambda: sub.send_live(note.frame)
            if note.change == "revoked":
                return lambda: sub.end(DeviceRevoked())
            if note.change == "renamed":
                return lambda: sub.send_live(note.frame)
            return None
        case ReplaceNote():
            if sub.device_id != note.device_id or sub.session_id == note.session_id:
                return None
            return lambda: sub.end(SessionReplaced())
        case UserDeletedNote():
            return lambda: sub.end(AccountDeleted())


@attrs.define(eq=False)
class LocalBus:
    """The bus of a single process (see :class:`relay.bus.base.Bus` for the contract)."""

    _fanout: Fanout = attrs.field(factory=Fanout, init=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def subscribe(self, subscriber: Subscriber, *, at: int) -> None:
        await trio.lowlevel.checkpoint()
        if self._fanout.add(subscriber):
            self._presence(subscriber, online=True, at=at)
        self._fanout.apply(
            ReplaceNote(
                user_id=subscriber.user_id, device_id=subscriber.device_id, session_id=subscriber.session_id
            )
        )

    async def unsubscribe(self, subscriber: Subscriber, *, at: int) -> None:
        if self._fanout.remove(subscriber):
            self._presence(subscriber, online=False, at=at)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _presence(self, subscriber: Subscriber, *, online: bool, at: int) -> None:
        frame = encode_server(Presence(device_id=subscriber.device_id, online=online, at=at))
        self._fanout.apply(
            PresenceNote(
                user_id=subscriber.user_id, device_id=subscriber.device_id, online=online, frame=frame
            )
        )

    async def publish(self, user_id: str, event: StoredEvent, *, origin_session_id: str) -> None:
        # Delivered before yielding: a committed event is never lost to a cancellation here.
        if self._fanout.has_user(user_id):  # else nobody of this user is connected: nothing to encode
            frame = encode_server(Event(event=event))
            note = EventNote(
                user_id=user_id,
                origin_session_id=origin_session_id,
                stream=event.stream,
                seq=event.seq,
                frame=frame,
                trace=current_traceparent(),
            )
            deliver(self._fanout, note)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def announce_device(
        self, user_id: str, change: DeviceChange, device_id: str, name: str, at: int
    ) -> None:
        await trio.lowlevel.checkpoint()
        frame = encode_server(DeviceNotice(change=change, device_id=device_id, name=name, at=at))
        self._fanout.apply(DeviceNote(user_id=user_id, device_id=device_id, change=change, frame=frame))

    async def announce_user_deleted(self, user_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self._fanout.apply(UserDeletedNote(user_id=user_id))

    async def online_devices(self, user_id: str) -> list[str]:
        await trio.lowlevel.checkpoint()
        return self._fanout.devices(user_id)

    async def canary(self) -> None:
        # In one process a note cannot get lost on the way: the loop-back is immediate.
        await trio.lowlevel.checkpoint()


if TYPE_CHECKING:

    def _conforms(bus: LocalBus) -> Bus:
        return bus
