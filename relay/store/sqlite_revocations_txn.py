"""The SQL of what the SQLite store remembers of revoked devices and deleted accounts (migration 002).

The revocation log (``revocation_log``) and the keyed hashes of deleted devices (``deleted_devices``):
neither ever holds an id, only :func:`relay.store.base.revocation_subject` and
:func:`relay.store._common.deleted_device_hash` of it. Write helpers (``*_txn`` on the writer
connection) run inside the caller's savepoint; reads are one statement each on a reader connection,
as in :mod:`relay.store.sqlite_txn`.
"""

from __future__ import annotations

import sqlite3

from relay.store._common import deleted_device_hash
from relay.store.base import RevocationEntry, RevocationKind

_KINDS: dict[str, RevocationKind] = {"device_revoked": "device_revoked", "user_deleted": "user_deleted"}


# --- writes (inside a savepoint of the writer) -----------------------------------------------------


def append_revocation_txn(conn: sqlite3.Connection, *, kind: RevocationKind, subject: bytes, at: int) -> None:
    conn.execute("INSERT INTO revocation_log (kind, subject, at) VALUES (?, ?, ?)", (kind, subject, at))


def remember_deleted_devices_txn(
    conn: sqlite3.Connection, *, token_secret: bytes, device_ids: list[str], expires_at: int
) -> None:
    conn.executemany(
        "INSERT INTO deleted_devices (device_hash, expires_at) VALUES (?, ?)"
        " ON CONFLICT (device_hash) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
        [(deleted_device_hash(token_secret, d), expires_at) for d in device_ids],
    )


# --- reads -----------------------------------------------------------------------------------------


def deleted_device_txn(
    conn: sqlite3.Connection, *, token_secret: bytes, device_id: str, now_ms: int | None
) -> bool:
    """Whether ``device_id`` is remembered as a deleted account's device (until ``now_ms``, if given)."""
    row = conn.execute(
        "SELECT expires_at FROM deleted_devices WHERE device_hash = ?",
        (deleted_device_hash(token_secret, device_id),),
    ).fetchone()
    return row is not None and (now_ms is None or now_ms <= row[0])


def latest_revocation_txn(conn: sqlite3.Connection) -> int:
    # max() of the rowid is answered from the last page of the table's b-tree: no scan.
    (latest,) = conn.execute("SELECT COALESCE(max(id), 0) FROM revocation_log").fetchone()
    return int(latest)


def revocations_since_txn(conn: sqlite3.Connection, *, after: int, limit: int) -> list[RevocationEntry]:
    rows = conn.execute(
        "SELECT id, kind, subject, at FROM revocation_log WHERE id > ? ORDER BY id LIMIT ?",
        (after, max(limit, 0)),
    )
    return [
        RevocationEntry(id=entry_id, kind=_KINDS[kind], subject=subject, at=at)
        for entry_id, kind, subject, at in rows
    ]
