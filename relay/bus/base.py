"""The bus contract: how committed events, presence and device notices reach every live session.

The gateway knows the bus only through :class:`Bus`; ``relay.app`` picks the implementation
(:class:`relay.bus.local.LocalBus` in one process; a Redis bus for several nodes). Each node's gateway
registers its live sessions as :class:`Subscriber` objects; the bus decides, by the rules of
PROTOCOL.md §4.1, §4.3 and §4.5, which of them hear what:

- an event goes to every session of its user except the one that published it;
- ``presence`` goes to the sessions of the user's *other* devices, when a device's first session opens
  or its last one closes (a replaced session closes after its replacement opened, so no change);
- a ``device`` notice goes to every other session of the user; a revoked device's own sessions are
  ended with ``device_revoked`` instead, and a renamed device's own sessions get the notice too;
- a new session of a device ends its older ones with ``session_replaced``, on any node.

Everything that crosses the bus is a :data:`Note`: a frozen value of strings, integers and booleans
with a JSON form (:func:`note_to_json`, :func:`note_from_json`), so that a bus between processes
carries exactly what the in-process bus hands around. Frames are encoded once, where a note is made,
and the same text is handed to every recipient.

An :class:`EventNote` also carries the trace context of the publish that made it (``trace``, a W3C
``traceparent``, empty when that publish was not traced: :mod:`relay.bus.tracing`). Its JSON form
leaves the member out when it is empty, so that nodes of the previous version, which refuse members
they do not know, still read the notes of a node that does not trace.
"""

from __future__ import annotations

from typing import Literal, Protocol, TypeAlias

import attrs
import orjson
import trio

from relay.errors import SessionError
from relay.protocol.messages import DeviceChange, StoredEvent

__all__ = [
    "Bus",
    "DeviceNote",
    "EventNote",
    "Note",
    "PresenceNote",
    "ReplaceNote",
    "Subscriber",
    "UserDeletedNote",
    "note_from_json",
    "note_to_json",
]


class Subscriber(Protocol):
    """One live session, as the bus sees it. Implemented by the gateway's session.

    The bus calls these methods synchronously, from whatever task delivers a note; they never block
    and never raise. ``send_live`` queues a frame without waiting (a full queue ends the session with
    ``slow_consumer``); ``end`` asks the session to close with ``error`` and returns at once.
    """

    @property
    def session_id(self) -> str: ...

    @property
    def user_id(self) -> str: ...

    @property
    def device_id(self) -> str: ...

    def send_live(self, frame: str, *, stream: str | None = None, seq: int | None = None) -> None:
        """Queue ``frame``; ``stream`` and ``seq`` are given for events (the session tracks heads)."""
        ...

    def end(self, error: SessionError) -> None:
        """Close the session with ``error`` (its ``error`` frame, then its close code)."""
        ...


# --- notes: what travels on the bus ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class EventNote:
    """A committed event. ``frame`` is its ``event`` frame, encoded once by the publishing node.

    ``trace`` is the W3C ``traceparent`` of the span that handed the event to the bus, or ``""`` when
    none was recording; the receiving node makes its ``ws.deliver`` span a child of it.
    """

    kind: Literal["event"] = "event"
    user_id: str
    origin_session_id: str
    stream: str
    seq: int
    frame: str
    trace: str = ""


@attrs.frozen(kw_only=True)
class PresenceNote:
    """A device's first session opened (``online``) or its last one closed. ``frame``: ``presence``."""

    kind: Literal["presence"] = "presence"
    user_id: str
    device_id: str
    online: bool
    frame: str


@attrs.frozen(kw_only=True)
class DeviceNote:
    """A device of the user was enrolled, renamed or revoked. ``frame``: the ``device`` notice."""

    kind: Literal["device"] = "device"
    user_id: str
    device_id: str
    change: DeviceChange
    frame: str


@attrs.frozen(kw_only=True)
class ReplaceNote:
    """Session ``session_id`` of the device opened: every older session of the device must end."""

    kind: Literal["replace"] = "replace"
    user_id: str
    device_id: str
    session_id: str


@attrs.frozen(kw_only=True)
class UserDeletedNote:
    """The user was deleted: every session of the user ends with ``account_deleted``."""

    kind: Literal["user_deleted"] = "user_deleted"
    user_id: str


Note: TypeAlias = EventNote | PresenceNote | DeviceNote | ReplaceNote | UserDeletedNote
_NOTES: dict[str, type[Note]] = {
    "event": EventNote,
    "presence": PresenceNote,
    "device": DeviceNote,
    "replace": ReplaceNote,
    "user_deleted": UserDeletedNote,
}


#: The member types of notes other than ``str`` (``bool`` is checked exactly: it is not an ``int``).
_MEMBER_TYPES: dict[str, type] = {"int": int, "bool": bool}
_CHANGES = frozenset({"enrolled", "renamed", "revoked"})


def note_to_json(note: Note) -> bytes:
    """The JSON form of ``note`` (for a bus between processes); an empty ``trace`` is left out."""
    obj = attrs.asdict(note)
    if isinstance(note, EventNote) and not note.trace:
        del obj["trace"]
    return orjson.dumps(obj)


def note_from_json(data: bytes | str) -> Note:
    """The note ``data`` holds; :class:`ValueError` for anything :func:`note_to_json` did not write.

    Members with a default (an event's ``trace``) may be absent, as a node of the previous version
    writes them.
    """
    try:
        obj = orjson.loads(data)
        cls = _NOTES[obj["kind"]]
        note = cls(**obj)
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError("not a bus note") from exc
    for field in attrs.fields(cls):
        if type(getattr(note, field.name)) is not _MEMBER_TYPES.get(str(field.type), str):
            raise ValueError(f"bus note member {field.name} has the wrong type")
    if isinstance(note, DeviceNote) and note.change not in _CHANGES:
        raise ValueError("bus note member change is not a device change")
    return note


# --- the contract ---------------------------------------------------------------------------------------


class Bus(Protocol):
    """Fan-out between the live sessions of a user, on every node (see the module docstring).

    Methods that talk to another process raise :class:`relay.errors.BusUnavailable` when they cannot.
    Timeouts are the caller's: wrap calls in a cancel scope. A cancelled call may or may not have
    taken effect, except :meth:`unsubscribe`, which always does.
    """

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work (a subscription to another process); reports ``started`` once delivering.

        Runs until cancelled. When it loses its subscription it ends every local session with
        ``bus_lost``. The in-process bus needs no background work; running it is harmless.
        """
        ...

    async def subscribe(self, subscriber: Subscriber, *, at: int) -> None:
        """Join ``subscriber`` to live delivery and presence (before ``welcome`` is built).

        Announces ``presence online`` (``at``) when it is its device's first live session, and ends
        every older session of the same device, on any node, with ``session_replaced``.
        """
        ...

    async def unsubscribe(self, subscriber: Subscriber, *, at: int) -> None:
        """Leave: announces ``presence offline`` (``at``) when it was its device's last live session.

        Idempotent; takes effect even when cancelled (call it shielded when the bus is remote).
        """
        ...

    async def publish(self, user_id: str, event: StoredEvent, *, origin_session_id: str) -> None:
        """Deliver a committed event to every session of ``user_id`` but ``origin_session_id``."""
        ...

    async def announce_device(
        self, user_id: str, change: DeviceChange, device_id: str, name: str, at: int
    ) -> None:
        """A device of ``user_id`` was enrolled, renamed or revoked (called by the HTTP layer and admin)."""
        ...

    async def announce_user_deleted(self, user_id: str) -> None:
        """The user was deleted: end every session of it with ``account_deleted``."""
        ...

    async def online_devices(self, user_id: str) -> list[str]:
        """The user's devices that have a live session, on any node (for ``welcome.online``)."""
        ...

    async def canary(self) -> None:
        """Send a message through the bus and return once it has come back to this node.

        For ``/readyz``: bound it with a cancel scope; :class:`BusUnavailable` when the bus is down.
        """
        ...
