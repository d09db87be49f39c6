"""The SQL of devices after their enrolment and of accounts, on PostgreSQL: lookups, renames, revocation,
deletion, the HTTP nonce cache, and the housekeeping that forgets what is kept only for a while.

The twin of :mod:`relay.store.sqlite_accounts_txn`, under the rules of :mod:`relay.store.postgres_txn`
(write functions run in a transaction of their own; reads are one statement each, in autocommit mode;
locks are taken in one order: the user's row, device rows, then the rest). Functions that log or
remember a deleted device take the server's ``token_secret``, because the database only ever holds
keyed hashes of those ids (:mod:`relay.store.postgres_revocations_txn`).
"""

from __future__ import annotations

from psycopg import errors as pg_errors

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
from relay.store.postgres_migrations import ADVISORY_KEYS, HOUSEKEEPING_LOCK
from relay.store.postgres_pool import PgConnection
from relay.store.postgres_revocations_txn import (
    append_revocation_txn,
    deleted_device_txn,
    remember_deleted_devices_txn,
)
from relay.store.postgres_txn import lock_user_txn

_DEVICE_COLUMNS = "device_id, user_id, public_key, name, created_at, last_seen_at, revoked_at"


def _device(row: tuple[str, str, bytes, str, int, int | None, int | None]) -> DeviceRecord:
    device_id, user_id, public_key, name, created_at, last_seen_at, revoked_at = row
    return DeviceRecord(
        device_id=device_id,
        user_id=user_id,
        public_key=bytes(public_key),
        name=name,
        created_at=created_at,
        last_seen_at=last_seen_at,
        revoked_at=revoked_at,
    )


def _device_row_txn(conn: PgConnection, device_id: str, *, lock: bool = False) -> DeviceRecord | None:
    sql = f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = %s"  # noqa: S608
    row = conn.execute(sql + (" FOR UPDATE" if lock else ""), (device_id,)).fetchone()
    return None if row is None else _device(row)


# --- devices (writes) ------------------------------------------------------------------------------


def touch_device_txn(conn: PgConnection, *, device_id: str, now_ms: int) -> None:
    conn.execute(
        "UPDATE devices SET last_seen_at = %s"
        " WHERE device_id = %s AND (last_seen_at IS NULL OR last_seen_at < %s)",
        (now_ms, device_id, now_ms),
    )


def revoke_device_txn(
    conn: PgConnection, *, device_id: str, now_ms: int, user_id: str | None, token_secret: bytes
) -> DeviceRecord:
    device = _device_row_txn(conn, device_id)
    if device is None or (user_id is not None and device.user_id != user_id):
        raise NotFound("No such device")
    # The user's lock first: an append group of the user holding it commits before this revocation,
    # and every later one reads the device as revoked. Then the device's own row, read afresh.
    locked = (
        None if lock_user_txn(conn, device.user_id) is None else _device_row_txn(conn, device_id, lock=True)
    )
    if locked is None:  # deleted with its account meanwhile
        raise NotFound("No such device")
    device = locked
    if device.revoked:
        return device
    conn.execute("UPDATE devices SET revoked_at = %s WHERE device_id = %s", (now_ms, device_id))
    conn.execute(
        "UPDATE enrollment_tokens SET voided_at = %s"
        " WHERE issued_by = %s AND used_at IS NULL AND voided_at IS NULL",
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
    conn: PgConnection, *, device_id: str, name: str, name_key: str, user_id: str | None
) -> DeviceRecord:
    # The device's row lock orders this rename and a revocation: whichever locks it second sees the
    # other's commit.
    device = _device_row_txn(conn, device_id, lock=True)
    if device is None or (user_id is not None and device.user_id != user_id) or device.revoked:
        raise NotFound("No such device")
    try:
        conn.execute(
            "UPDATE devices SET name = %s, name_key = %s WHERE device_id = %s", (name, name_key, device_id)
        )
    except pg_errors.UniqueViolation as exc:
        # The unique index devices_live_name decides, not a read before the write: whoever commits
        # second is refused here, however the renames were scheduled and on whichever node.
        if exc.diag.constraint_name == "devices_live_name":
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
    conn: PgConnection, *, user_id: str, now_ms: int, remember_ms: int, token_secret: bytes
) -> DeletedCounts:
    if conn.execute("SELECT 1 FROM users WHERE user_id = %s FOR UPDATE", (user_id,)).fetchone() is None:
        raise NotFound("No such user")
    # Then every device row, in id order, before anything else: a revocation or rename holding one
    # finishes first, and nothing can add a nonce or a token for them any more.
    device_ids = [
        d
        for (d,) in conn.execute(
            "SELECT device_id FROM devices WHERE user_id = %s ORDER BY device_id FOR UPDATE", (user_id,)
        )
    ]
    # Children before parents, each explicitly: nothing is left to ON DELETE CASCADE, so the counts are
    # of the rows deleted.
    events = conn.execute("DELETE FROM events WHERE user_id = %s", (user_id,)).rowcount
    streams = conn.execute("DELETE FROM streams WHERE user_id = %s", (user_id,)).rowcount
    conn.execute("DELETE FROM nonces WHERE device_id = ANY(%s)", (device_ids,))
    conn.execute(
        "DELETE FROM enrollment_tokens WHERE user_id = %s OR issued_by = ANY(%s)", (user_id, device_ids)
    )
    devices = conn.execute("DELETE FROM devices WHERE user_id = %s", (user_id,)).rowcount
    conn.execute("DELETE FROM users WHERE user_id = %s", (user_id,))
    remember_deleted_devices_txn(
        conn, token_secret=token_secret, device_ids=device_ids, expires_at=now_ms + remember_ms
    )
    subject = revocation_subject(token_secret, user_id)
    append_revocation_txn(conn, kind="user_deleted", subject=subject, at=now_ms)
    return DeletedCounts(devices=devices, streams=streams, events=events)


def remember_nonce_txn(
    conn: PgConnection, *, device_id: str, nonce: str, expires_at: int, now_ms: int
) -> bool:
    # FOR KEY SHARE: the device cannot be deleted before this commits (a deletion holding it first
    # has committed when this returns, and then there is no row).
    device = conn.execute("SELECT 1 FROM devices WHERE device_id = %s FOR KEY SHARE", (device_id,))
    if device.fetchone() is None:
        raise AccountDeleted()
    # One statement decides: a new pair is inserted, an expired memory of it renewed (both return a
    # row); an unexpired one is left as it is and returns none. A concurrent insert of the same pair
    # makes this one wait for its commit, then take the DO UPDATE branch.
    rows = conn.execute(
        "INSERT INTO nonces (device_id, nonce, expires_at) VALUES (%s, %s, %s)"
        " ON CONFLICT (device_id, nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at"
        " WHERE nonces.expires_at < %s"
        " RETURNING 1",
        (device_id, nonce, expires_at, now_ms),
    ).fetchall()
    return bool(rows)


#: What :func:`purge_housekeeping_txn` forgets, in order: each statement takes the expiry bound and the
#: rows it may still delete. The newest revocation log entry is always kept (latest_revocation). Rows
#: another transaction holds are skipped (SKIP LOCKED) and left for the next call: housekeeping never
#: waits for a row, so it can never be part of a deadlock.
_HOUSEKEEPING = (
    "DELETE FROM nonces WHERE (device_id, nonce) IN (SELECT device_id, nonce FROM nonces"
    " WHERE expires_at < %s ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED)",
    "DELETE FROM deleted_devices WHERE device_hash IN (SELECT device_hash FROM deleted_devices"
    " WHERE expires_at < %s ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED)",
    "DELETE FROM revocation_log WHERE id IN (SELECT id FROM revocation_log"
    " WHERE at < %s AND id < (SELECT max(id) FROM revocation_log) ORDER BY id LIMIT %s"
    " FOR UPDATE SKIP LOCKED)",
    "DELETE FROM enrollment_tokens WHERE token_hash IN (SELECT token_hash FROM enrollment_tokens"
    " WHERE expires_at < %s ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED)",
)


def purge_housekeeping_txn(conn: PgConnection, *, now_ms: int, batch: int) -> int:
    # One node at a time, like the purge of events; the others skip their turn.
    (mine,) = conn.execute(
        f"SELECT pg_try_advisory_xact_lock({ADVISORY_KEYS})", (HOUSEKEEPING_LOCK,)
    ).fetchone() or (False,)
    if not mine:
        return 0
    bounds = (now_ms, now_ms, now_ms - REVOCATION_LOG_RETENTION_MS, now_ms - EXPIRED_TOKEN_RETENTION_MS)
    budget = left = max(batch, 0)
    for sql, bound in zip(_HOUSEKEEPING, bounds, strict=True):
        if left == 0:
            break
        left -= conn.execute(sql, (bound, left)).rowcount
    return budget - left


# --- reads -----------------------------------------------------------------------------------------


def lookup_device_txn(
    conn: PgConnection, device_id: str, *, token_secret: bytes, now_ms: int | None
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


def list_users_txn(conn: PgConnection) -> list[str]:
    return [u for (u,) in conn.execute("SELECT user_id FROM users ORDER BY created_at, ordinal")]


def list_devices_txn(conn: PgConnection, user_id: str) -> list[DeviceRecord]:
    rows = conn.execute(
        f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE user_id = %s ORDER BY created_at, ordinal",  # noqa: S608
        (user_id,),
    ).fetchall()
    return [_device(row) for row in rows]


def get_user_txn(conn: PgConnection, user_id: str, *, now_ms: int, clock_skew_ms: int) -> UserSummary:
    floor = _common.unexpired_floor(now_ms=now_ms, clock_skew_ms=clock_skew_ms)
    # One statement, so every count is of one snapshot.
    row = conn.execute(
        "SELECT u.created_at,"
        " (SELECT COUNT(*) FROM devices WHERE user_id = u.user_id AND revoked_at IS NULL),"
        " (SELECT COUNT(*) FROM devices WHERE user_id = u.user_id AND revoked_at IS NOT NULL),"
        " (SELECT COUNT(*) FROM streams WHERE user_id = u.user_id AND max_expires_at >= %(floor)s),"
        " (SELECT COUNT(*) FROM events WHERE user_id = u.user_id AND expires_at >= %(floor)s),"
        " (SELECT COALESCE(SUM(body_size), 0)::bigint FROM events"
        " WHERE user_id = u.user_id AND expires_at >= %(floor)s)"
        " FROM users AS u WHERE u.user_id = %(user_id)s",
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
        stored_bytes=int(stored_bytes),
    )
