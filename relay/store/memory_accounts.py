"""The :class:`~relay.store.memory.MemoryStore`'s devices after enrolment, accounts, revocation log and
nonces: the twin of :mod:`relay.store.sqlite_accounts_txn` and :mod:`relay.store.sqlite_revocations_txn`.

Plain functions on :class:`~relay.store.memory_tables.Tables`, called by the store's methods after
their one checkpoint; none of them yields, so each runs whole, like one transaction. Refusals are the
errors of :mod:`relay.errors`, raised before anything is changed.
"""

from __future__ import annotations

import operator
from typing import TypeVar

import attrs

from relay.errors import AccountDeleted, NameTaken, NotFound
from relay.protocol.validation import is_expired
from relay.store import _common
from relay.store.base import (
    EXPIRED_TOKEN_RETENTION_MS,
    REVOCATION_LOG_RETENTION_MS,
    DeletedCounts,
    DeletedDevice,
    DeviceLookup,
    DeviceRecord,
    RevocationEntry,
    RevocationKind,
    UnknownDevice,
    UserSummary,
    revocation_subject,
)
from relay.store.memory_tables import Tables

K = TypeVar("K")
V = TypeVar("V")

# --- devices ---------------------------------------------------------------------------------------


def lookup_device(t: Tables, device_id: str, *, token_secret: bytes, now_ms: int | None) -> DeviceLookup:
    device = t.devices.get(device_id)
    if device is not None:
        return device
    until = t.deleted_devices.get(_common.deleted_device_hash(token_secret, device_id))
    if until is not None and (now_ms is None or now_ms <= until):
        return DeletedDevice()
    return UnknownDevice()


def revoke_device(
    t: Tables, device_id: str, *, now_ms: int, user_id: str | None, token_secret: bytes
) -> DeviceRecord:
    device = t.devices.get(device_id)
    if device is None or (user_id is not None and device.user_id != user_id):
        raise NotFound("No such device")
    if device.revoked:
        return device
    device = attrs.evolve(device, revoked_at=now_ms)
    t.devices[device_id] = device
    for token in t.tokens.values():
        if token.issued_by == device_id and token.used_at is None and token.voided_at is None:
            token.voided_at = now_ms
    _log(t, kind="device_revoked", subject=revocation_subject(token_secret, device_id), at=now_ms)
    return device


def rename_device(
    t: Tables, device_id: str, *, name: str, name_key: str, user_id: str | None
) -> DeviceRecord:
    device = t.devices.get(device_id)
    if device is None or (user_id is not None and device.user_id != user_id) or device.revoked:
        raise NotFound("No such device")
    for other_id in t.users[device.user_id].device_ids:
        other = t.devices[other_id]
        if other_id != device_id and not other.revoked and t.name_keys[other_id] == name_key:
            raise NameTaken()
    device = attrs.evolve(device, name=name)
    t.devices[device_id] = device
    t.name_keys[device_id] = name_key
    return device


# --- accounts --------------------------------------------------------------------------------------


def get_user(t: Tables, user_id: str, *, now_ms: int, clock_skew_ms: int) -> UserSummary:
    user = t.users.get(user_id)
    if user is None:
        raise NotFound("No such user")

    def unexpired(expires_at: int) -> bool:
        return not is_expired(expires_at, now_ms=now_ms, clock_skew_ms=clock_skew_ms)

    streams = [s for (uid, _), s in t.streams.items() if uid == user_id]
    events = [e for s in streams for e in s.events.values() if unexpired(e.expires_at)]
    revoked = sum(1 for d in user.device_ids if t.devices[d].revoked)
    return UserSummary(
        user_id=user_id,
        created_at=user.created_at,
        devices=len(user.device_ids) - revoked,
        revoked_devices=revoked,
        streams=sum(1 for s in streams if unexpired(s.max_expires_at)),
        events=len(events),
        stored_bytes=sum(len(e.body.encode("utf-8")) for e in events),
    )


def delete_user(
    t: Tables, user_id: str, *, now_ms: int, remember_ms: int, token_secret: bytes
) -> DeletedCounts:
    user = t.users.pop(user_id, None)
    if user is None:
        raise NotFound("No such user")
    devices = set(user.device_ids)
    streams = [key for key in t.streams if key[0] == user_id]
    events = 0
    for key in streams:
        stream = t.streams.pop(key)
        events += len(stream.events)
        for event in stream.events.values():
            del t.ids[event.device_id, event.id]
    for token_hash in [
        h for h, tok in t.tokens.items() if tok.user_id == user_id or tok.issued_by in devices
    ]:
        del t.tokens[token_hash]
    for pair in [pair for pair in t.nonces if pair[0] in devices]:
        del t.nonces[pair]
    until = now_ms + remember_ms
    for device_id in user.device_ids:
        device = t.devices.pop(device_id)
        del t.keys[device.public_key]
        del t.name_keys[device_id]
        remembered = _common.deleted_device_hash(token_secret, device_id)
        t.deleted_devices[remembered] = max(until, t.deleted_devices.get(remembered, until))
    _log(t, kind="user_deleted", subject=revocation_subject(token_secret, user_id), at=now_ms)
    return DeletedCounts(devices=len(devices), streams=len(streams), events=events)


# --- revocation log and nonces ---------------------------------------------------------------------


def _log(t: Tables, *, kind: RevocationKind, subject: bytes, at: int) -> None:
    t.last_revocation_id += 1
    t.revocations[t.last_revocation_id] = RevocationEntry(
        id=t.last_revocation_id, kind=kind, subject=subject, at=at
    )


def latest_revocation(t: Tables) -> int:
    return next(reversed(t.revocations), 0)


def revocations_since(t: Tables, after: int, *, limit: int) -> list[RevocationEntry]:
    return [entry for entry_id, entry in t.revocations.items() if entry_id > after][: max(limit, 0)]


def remember_nonce(t: Tables, device_id: str, nonce: str, *, expires_at: int, now_ms: int) -> bool:
    if device_id not in t.devices:
        raise AccountDeleted()
    until = t.nonces.get((device_id, nonce))
    if until is not None and until >= now_ms:
        return False
    t.nonces[device_id, nonce] = expires_at
    return True


def purge_housekeeping(t: Tables, *, now_ms: int, batch: int) -> int:
    """In the order and with the bounds of :func:`relay.store.sqlite_accounts_txn.purge_housekeeping_txn`."""
    left = budget = max(batch, 0)
    newest = latest_revocation(t)
    log_floor = now_ms - REVOCATION_LOG_RETENTION_MS
    token_floor = now_ms - EXPIRED_TOKEN_RETENTION_MS
    left -= _forget(t.nonces, [(until, k) for k, until in t.nonces.items() if until < now_ms], left)
    left -= _forget(t.deleted_devices, [(u, k) for k, u in t.deleted_devices.items() if u < now_ms], left)
    old = [(i, i) for i, e in t.revocations.items() if e.at < log_floor and i < newest]
    left -= _forget(t.revocations, old, left)
    expired = [(tok.expires_at, k) for k, tok in t.tokens.items() if tok.expires_at < token_floor]
    left -= _forget(t.tokens, expired, left)
    return budget - left


def _forget(table: dict[K, V], candidates: list[tuple[int, K]], left: int) -> int:
    """Delete the ``left`` candidates of ``table`` that come first by their order key; how many went."""
    chosen = sorted(candidates, key=operator.itemgetter(0))[:left]
    for _, key in chosen:
        del table[key]
    return len(chosen)
