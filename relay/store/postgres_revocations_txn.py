"""The SQL of what the PostgreSQL store remembers of revoked devices and deleted accounts (migration 002).

The twin of :mod:`relay.store.sqlite_revocations_txn`: the revocation log (``revocation_log``) and the
keyed hashes of deleted devices (``deleted_devices``), neither ever holding an id. Write helpers
(``*_txn``) run inside the caller's transaction; reads are one statement each, in autocommit mode.

Log ids come in commit order and without gaps: :func:`append_revocation_txn` takes the table's EXCLUSIVE
lock, then gives its entry ``max(id) + 1``, so a later entry cannot commit before an earlier one
(readers, which take ACCESS SHARE, never wait for it), and a rolled back one leaves no hole. The lock is
held to the end of the writer's transaction, which is why revocations and deletions append to the log
as their last step.
"""

from __future__ import annotations

from relay.store._common import deleted_device_hash
from relay.store.base import RevocationEntry, RevocationKind
from relay.store.postgres_pool import PgConnection

_KINDS: dict[str, RevocationKind] = {"device_revoked": "device_revoked", "user_deleted": "user_deleted"}


# --- writes (inside the caller's transaction) -----------------------------------------------------


def append_revocation_txn(conn: PgConnection, *, kind: RevocationKind, subject: bytes, at: int) -> None:
    conn.execute("LOCK TABLE revocation_log IN EXCLUSIVE MODE")
    conn.execute(
        "INSERT INTO revocation_log (id, kind, subject, at)"
        " SELECT COALESCE(max(id), 0) + 1, %s, %s, %s FROM revocation_log",
        (kind, subject, at),
    )


def remember_deleted_devices_txn(
    conn: PgConnection, *, token_secret: bytes, device_ids: list[str], expires_at: int
) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO deleted_devices (device_hash, expires_at) VALUES (%s, %s)"
            " ON CONFLICT (device_hash)"
            " DO UPDATE SET expires_at = GREATEST(deleted_devices.expires_at, EXCLUDED.expires_at)",
            [(deleted_device_hash(token_secret, d), expires_at) for d in device_ids],
        )


# --- reads -----------------------------------------------------------------------------------------


def deleted_device_txn(
    conn: PgConnection, *, token_secret: bytes, device_id: str, now_ms: int | None
) -> bool:
    """Whether ``device_id`` is remembered as a deleted account's device (until ``now_ms``, if given)."""
    row = conn.execute(
        "SELECT expires_at FROM deleted_devices WHERE device_hash = %s",
        (deleted_device_hash(token_secret, device_id),),
    ).fetchone()
    return row is not None and (now_ms is None or now_ms <= row[0])


def latest_revocation_txn(conn: PgConnection) -> int:
    # max() of the primary key is read from the end of its index: no scan.
    row = conn.execute("SELECT COALESCE(max(id), 0) FROM revocation_log").fetchone()
    return 0 if row is None else int(row[0])


def revocations_since_txn(conn: PgConnection, *, after: int, limit: int) -> list[RevocationEntry]:
    rows = conn.execute(
        "SELECT id, kind, subject, at FROM revocation_log WHERE id > %s ORDER BY id LIMIT %s",
        (after, max(limit, 0)),
    ).fetchall()
    return [
        RevocationEntry(id=entry_id, kind=_KINDS[kind], subject=bytes(subject), at=at)
        for entry_id, kind, subject, at in rows
    ]
