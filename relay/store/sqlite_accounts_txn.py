"""The SQL of devices after their enrolment and of accounts: lookups, renames, revocation, deletion,
the HTTP nonce cache, and the housekeeping that forgets what is kept only for a while.

The same rules as :mod:`relay.store.sqlite_txn` (write functions run in a savepoint of the writer's
group transaction; reads are one statement each on a reader connection), plus: functions that log or
remember a deleted device take the server's ``token_secret``, because the database only ever holds
keyed hashes of those ids (:mod:`relay.store.sqlite_revocations_txn`).
"""

from __future__ import annotations

import sqlite3

from relay.errors import AccountDeleted, NameTaken, NotFound
from relay.store import _common
from relay.store.base import (
    EXPIRED_TOKEN_RETENTION_MS,
    REVOCATION_LOG_RETENTION_MS,
    DeletedCounts,
    DeletedDevice,
    DeviceLookup,
    DeviceRecord,
    UnknownDevice,
    UserSummary,
    revocation_subject,
)
from relay.store.sqlite_revocations_txn import (
    append_revocation_txn,
    deleted_device_txn,
    remember_deleted_devices_txn,
)

_DEVICE_COLUMNS = "device_id, user_id, public_key, name, created_at, last_seen_at, revoked_at"


def _device(row: tuple[str, str, bytes, str, int, int | None, int | None]) -> DeviceRecord:
    device_id, user_id, public_key, name, created_at, last_seen_at, revoked_at = row
    return DeviceRecord(
        device_id=device_id,
        user_id=user_id,
        public_key=public_key,
        name=name,
        created_at=created_at,
        last_seen_at=last_seen_at,
        revoked_at=revoked_at,
    )


def _device_row_txn(conn: sqlite3.Connection, device_id: str) -> DeviceRecord | None:
    row = conn.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = ?", (device_id,)).fetchone()  # noqa: S608
    return None if row is None else _device(row)


# --- devices (writes) ------------------------------------------------------------------------------


def touch_device_txn(conn: sqlite3.Connection, *, device_id: str, now_ms: int) -> None:
    conn.execute(
        "UPDATE devices SET last_seen_at = ?"
        " WHERE device_id = ? AND (last_seen_at IS NULL OR last_seen_at < ?)",
        (now_ms, device_id, now_ms),
    )


def revoke_device_txn(
    conn: sqlite3.Connection, *, device_id: str, now_ms: int, user_id: str | None, token_secret: bytes
) -> DeviceRecord:
    device = _device_row_txn(conn, device_id)
    if device is None or (user_id is not None and device.user_id != user_id):
        raise NotFound("No such device")
    if device.revoked:
        return device
    conn.execute("UPDATE devices SET revoked_at = ? WHERE device_id = ?", (now_ms, device_id))
    conn.execute(
        "UPDATE enrollment_tokens SET voided_at = ?"
        " WHERE issued_by = ? AND used_at IS NULL AND voided_at IS NULL",
        (now_ms, device_id),
    )
    subject = revocation_subject(token_secret, device_id)
    append_revocation_txn(conn, kind="device_revoked", subject=subject, at=now_ms)
    return DeviceRecord(
        device_id=device.device_id,
        user_id=device.user_id,
        public_key=device.public_key,
        name=device.name,
        created_at=device.created_at,
        last_seen_at=device.last_seen_at,
        revoked_at=now_ms,
    )


def rename_device_txn(
    conn: sqlite3.Connection, *, device_id: str, name: str, name_key: str, user_id: str | None
) -> DeviceRecord:
    device = _device_row_txn(conn, device_id)
    if device is None or (user_id is not None and device.user_id != user_id) or device.revoked:
        raise NotFound("No such device")
    try:
        conn.execute(
            "UPDATE devices SET name = ?, name_key = ? WHERE device_id = ?", (name, name_key, device_id)
        )
    except sqlite3.IntegrityError as exc:
        # The unique index devices_live_name decides, not a read before the write: whoever commits
        # second is refused here, however the renames were scheduled.
        if conn.execute(
            "SELECT 1 FROM devices"
            " WHERE user_id = ? AND name_key = ? AND revoked_at IS NULL AND device_id != ?",
            (device.user_id, name_key, device_id),
        ).fetchone():
            raise NameTaken() from exc
        raise
    return DeviceRecord(
        device_id=device.device_id,
        user_id=device.user_id,
        public_key=device.public_key,
        name=name,
        created_at=device.created_at,
        last_seen_at=device.last_seen_at,
        revoked_at=device.revoked_at,
    )


# --- accounts (writes) -----------------------------------------------------------------------------


def delete_user_txn(
    conn: sqlite3.Connection, *, user_id: str, now_ms: int, remember_ms: int, token_secret: bytes
) -> DeletedCounts:
    if conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is None:
        raise NotFound("No such user")
    device_ids = [d for (d,) in conn.execute("SELECT device_id FROM devices WHERE user_id = ?", (user_id,))]
    # Children before parents, each explicitly: nothing is left to ON DELETE CASCADE, so the counts are
    # of the rows deleted, and nothing depends on foreign_keys being on.
    events = conn.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
    streams = conn.execute("DELETE FROM streams WHERE user_id = ?", (user_id,)).rowcount
    conn.execute(
        "DELETE FROM nonces WHERE device_id IN (SELECT device_id FROM devices WHERE user_id = ?)", (user_id,)
    )
    conn.execute(
        "DELETE FROM enrollment_tokens WHERE user_id = ?"
        " OR issued_by IN (SELECT device_id FROM devices WHERE user_id = ?)",
        (user_id, user_id),
    )
    devices = conn.execute("DELETE FROM devices WHERE user_id = ?", (user_id,)).rowcount
    conn.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
    remember_deleted_devices_txn(
        conn, token_secret=token_secret, device_ids=device_ids, expires_at=now_ms + remember_ms
    )
    subject = revocation_subject(token_secret, user_id)
    append_revocation_txn(conn, kind="user_deleted", subject=subject, at=now_ms)
    return DeletedCounts(devices=devices, streams=streams, events=events)


def remember_nonce_txn(
    conn: sqlite3.Connection, *, device_id: str, nonce: str, expires_at: int, now_ms: int
) -> bool:
    if conn.execute("SELECT 1 FROM devices WHERE device_id = ?", (device_id,)).fetchone() is None:
        raise AccountDeleted()
    # One statement decides: a new pair is inserted, an expired memory of it renewed (both return a
    # row); an unexpired one is left as it is and returns none.
    rows = conn.execute(
        "INSERT INTO nonces (device_id, nonce, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (device_id, nonce) DO UPDATE SET expires_at = excluded.expires_at"
        " WHERE nonces.expires_at < ?"
        " RETURNING 1",
        (device_id, nonce, expires_at, now_ms),
    ).fetchall()
    return bool(rows)


#: What :func:`purge_housekeeping_txn` forgets, in order: each statement takes the expiry bound and the
#: rows it may still delete. The newest revocation log entry is always kept (latest_revocation).
_HOUSEKEEPING = (
    "DELETE FROM nonces WHERE (device_id, nonce) IN"
    " (SELECT device_id, nonce FROM nonces WHERE expires_at < ? ORDER BY expires_at LIMIT ?)",
    "DELETE FROM deleted_devices WHERE device_hash IN"
    " (SELECT device_hash FROM deleted_devices WHERE expires_at < ? ORDER BY expires_at LIMIT ?)",
    "DELETE FROM revocation_log WHERE id IN (SELECT id FROM revocation_log"
    " WHERE at < ? AND id < (SELECT max(id) FROM revocation_log) ORDER BY id LIMIT ?)",
    "DELETE FROM enrollment_tokens WHERE token_hash IN"
    " (SELECT token_hash FROM enrollment_tokens WHERE expires_at < ? ORDER BY expires_at LIMIT ?)",
)


def purge_housekeeping_txn(conn: sqlite3.Connection, *, now_ms: int, batch: int) -> int:
    bounds = (now_ms, now_ms, now_ms - REVOCATION_LOG_RETENTION_MS, now_ms - EXPIRED_TOKEN_RETENTION_MS)
    budget = left = max(batch, 0)
    for sql, bound in zip(_HOUSEKEEPING, bounds, strict=True):
        if left == 0:
            break
        left -= conn.execute(sql, (bound, left)).rowcount
    return budget - left


# --- reads -----------------------------------------------------------------------------------------


def lookup_device_txn(
    conn: sqlite3.Connection, device_id: str, *, token_secret: bytes, now_ms: int | None
) -> DeviceLookup:
    device = _device_row_txn(conn, device_id)
    if device is not None:
        return device
    # A second statement, and still consistent: a device leaves devices only in the transaction that
    # remembers its hash, so one the first statement missed is either unknown or remembered here
    # (until pruned, which only happens after its memory expired).
    if deleted_device_txn(conn, token_secret=token_secret, device_id=device_id, now_ms=now_ms):
        return DeletedDevice()
    return UnknownDevice()


def list_users_txn(conn: sqlite3.Connection) -> list[str]:
    return [u for (u,) in conn.execute("SELECT user_id FROM users ORDER BY created_at, rowid")]


def list_devices_txn(conn: sqlite3.Connection, user_id: str) -> list[DeviceRecord]:
    rows = conn.execute(
        f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE user_id = ? ORDER BY created_at, rowid",  # noqa: S608
        (user_id,),
    )
    return [_device(row) for row in rows]


def get_user_txn(conn: sqlite3.Connection, user_id: str, *, now_ms: int, clock_skew_ms: int) -> UserSummary:
    floor = _common.unexpired_floor(now_ms=now_ms, clock_skew_ms=clock_skew_ms)
    # One statement, so every count is of one snapshot.
    row = conn.execute(
        "SELECT u.created_at,"
        " (SELECT COUNT(*) FROM devices WHERE user_id = u.user_id AND revoked_at IS NULL),"
        " (SELECT COUNT(*) FROM devices WHERE user_id = u.user_id AND revoked_at IS NOT NULL),"
        " (SELECT COUNT(*) FROM streams WHERE user_id = u.user_id AND max_expires_at >= :floor),"
        " (SELECT COUNT(*) FROM events WHERE user_id = u.user_id AND expires_at >= :floor),"
        " (SELECT COALESCE(SUM(body_size), 0) FROM events WHERE user_id = u.user_id AND expires_at >= :floor)"
        " FROM users AS u WHERE u.user_id = :user_id",
        {"floor": floor, "user_id": user_id},
    ).fetchone()
    if row is None:
        raise NotFound("No such user")
    created_at, devices, revoked, streams, events, stored_bytes = row
    return UserSummary(
        user_id=user_id,
        created_at=created_at,
        devices=devices,
        revoked_devices=revoked,
        streams=streams,
        events=events,
        stored_bytes=stored_bytes,
    )
