"""This node's live sessions by revocation subject (PROTOCOL.md §5; ARCHITECTURE.md "Bus").

The store's revocation log names what it revokes by keyed hash (:func:`relay.store.base.revocation_subject`
of a device id or a user id), never by id. Each session hashes its two ids once, right after its
device lookup in the handshake (:class:`RevocationSubjects`), and registers here; the watcher
(:mod:`relay.gateway.revocations`) then matches a log entry in one dictionary lookup, whatever the
number of sessions, and hashes nothing per poll.

Nothing here does I/O or yields: :meth:`RevocationIndex.apply` closes the matching sessions
synchronously (``Revocable.revoke`` returns at once).

**The handshake race.** A session's device lookup and its registration here are not one step: an
entry the watcher applies while the lookup runs would miss the session (not registered yet) although
the lookup may have read the store before that entry committed. So every application bumps a
generation, and the handshake takes a :meth:`~RevocationIndex.mark` before its lookup; if
:meth:`~RevocationIndex.moved_since` says the watcher acted in between, it looks the device up once
more, now registered (:func:`revocation_error` judges the answer). An entry applied before the mark
committed before the lookup began, so the lookup saw it; one applied after the registration finds
the session here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeAlias

import attrs

from relay.errors import AccountDeleted, DeviceRevoked
from relay.store.base import DeviceLookup, DeviceRecord, RevocationEntry, revocation_subject

__all__ = [
    "Revocable",
    "Revocation",
    "RevocationIndex",
    "RevocationSubjects",
    "revocation_error",
]

#: The two errors a revocation closes a session with (1008).
Revocation: TypeAlias = DeviceRevoked | AccountDeleted


@attrs.frozen
class RevocationSubjects:
    """The revocation log subjects of one session: of its device id and of its user id."""

    device: bytes = attrs.field(repr=False)
    user: bytes = attrs.field(repr=False)

    @classmethod
    def of(cls, token_secret: bytes, *, user_id: str, device_id: str) -> RevocationSubjects:
        """Hash both ids with the server's ``token_secret``, as the store does for its log."""
        return cls(
            device=revocation_subject(token_secret, device_id), user=revocation_subject(token_secret, user_id)
        )


class Revocable(Protocol):
    """A live session, as the index sees it (the gateway's :class:`~relay.gateway.session.Session`)."""

    @property
    def user_id(self) -> str: ...

    @property
    def device_id(self) -> str: ...

    def revoke(self, error: Revocation) -> None:
        """Remember ``error`` and close with it; returns at once, never raises."""
        ...


def revocation_error(found: DeviceLookup, user_id: str) -> Revocation | None:
    """What a fresh lookup of a live session's device says about it: ``None`` while it may stay.

    A revoked device is :class:`DeviceRevoked`; a device that is gone (a deleted account's, whether
    the store still remembers it or not: ids are never reused) is :class:`AccountDeleted`.
    """
    if isinstance(found, DeviceRecord) and found.user_id == user_id:
        return DeviceRevoked() if found.revoked else None
    return AccountDeleted()


@attrs.define(eq=False)
class RevocationIndex:
    """The live sessions of this node that finished their device lookup, by both subjects.

    A session is added by its handshake (:meth:`add`) and discarded when it ends (:meth:`discard`,
    idempotent). Sizes are those of the live sessions: nothing here grows otherwise.
    """

    _subjects: dict[Revocable, RevocationSubjects] = attrs.field(factory=dict, init=False)
    _by_device: dict[bytes, dict[Revocable, None]] = attrs.field(factory=dict, init=False)
    _by_user: dict[bytes, dict[Revocable, None]] = attrs.field(factory=dict, init=False)
    _generation: int = attrs.field(default=0, init=False)

    def __len__(self) -> int:
        return len(self._subjects)

    def add(self, session: Revocable, subjects: RevocationSubjects) -> None:
        """Register ``session`` under ``subjects`` (once, after its device lookup)."""
        self._subjects[session] = subjects
        self._by_device.setdefault(subjects.device, {})[session] = None
        self._by_user.setdefault(subjects.user, {})[session] = None

    def discard(self, session: Revocable) -> None:
        """Forget ``session`` (it ended); nothing happens when it was never added."""
        subjects = self._subjects.pop(session, None)
        if subjects is not None:
            _remove(self._by_device, subjects.device, session)
            _remove(self._by_user, subjects.user, session)

    def sessions(self) -> list[Revocable]:
        """Every registered session, in the order they registered (for a full re-check)."""
        return list(self._subjects)

    # --- the watcher's side ---------------------------------------------------------------------------

    def mark(self) -> int:
        """A token to pass to :meth:`moved_since` (taken before a handshake's device lookup)."""
        return self._generation

    def moved_since(self, mark: int) -> bool:
        """Whether the watcher acted on the registered sessions since :meth:`mark` returned ``mark``."""
        return self._generation != mark

    def begin_recheck(self) -> list[Revocable]:
        """The sessions a full re-check must look up; counts as acting on them (see :meth:`mark`)."""
        self._generation += 1
        return self.sessions()

    def apply(self, entries: Iterable[RevocationEntry]) -> int:
        """Close every session an entry concerns; how many were told to close.

        ``device_revoked`` closes the sessions of the device with ``device_revoked``, ``user_deleted``
        those of the user with ``account_deleted``. A session told twice closes once (the first wins).
        """
        self._generation += 1
        told = 0
        for entry in entries:
            make: type[Revocation] = DeviceRevoked
            table = self._by_device
            if entry.kind == "user_deleted":
                make, table = AccountDeleted, self._by_user
            targets = table.get(entry.subject)
            for session in list(targets or ()):
                session.revoke(make())
                told += 1
        return told


def _remove(table: dict[bytes, dict[Revocable, None]], subject: bytes, session: Revocable) -> None:
    sessions = table.get(subject)
    if sessions is not None:
        sessions.pop(session, None)
        if not sessions:
            del table[subject]
