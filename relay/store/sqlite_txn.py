"""The SQL of the SQLite store: one blocking function per store method, each taking a connection.

This module holds users, enrolment tokens, enrolment and events; devices after their enrolment and
accounts are :mod:`relay.store.sqlite_accounts_txn`, the revocation log and the memory of deleted
devices :mod:`relay.store.sqlite_revocations_txn`.

Write functions (``*_txn`` taking the writer connection) run inside a savepoint of a group transaction
opened by :mod:`relay.store.sqlite_writer`; they read and write through ``conn`` only and raise the
errors of :mod:`relay.errors` for refusals (the savepoint is then rolled back). Read functions run on a
reader connection in autocommit mode, one statement each (so each sees one snapshot). Checks are made
by reading before writing, in the order of the contract (:mod:`relay.store.base`); with one writer per
database file (``BEGIN IMMEDIATE`` across processes) nothing can change between the check and the write.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict

from relay.errors import (
    AccountDeleted,
    DeviceRevoked,
    IdConflict,
    InvalidToken,
    KeyInUse,
    NameTaken,
    NotFound,
    QuotaExceeded,
    SeqConflict,
    TooManyDevices,
)
from relay.protocol.messages import StoredEvent
from relay.store import _common
from relay.store.base import (
    Appended,
    AppendRequest,
    DeviceRecord,
    Enrollment,
    IssuedToken,
    NewUser,
)

_EVENT_COLUMNS = "stream, seq, id, device_id, ts, received_at, expires_at, body"


def _event(row: tuple[str, int, str, str, int, int, int, str]) -> StoredEvent:
    stream, seq, event_id, device_id, ts, received_at, expires_at, body = row
    return StoredEvent(
        stream=stream,
        seq=seq,
        id=event_id,
        device_id=device_id,
        ts=ts,
        received_at=received_at,
        expires_at=expires_at,
        body=body,
    )


# --- users, tokens and enrolment (writes) ----------------------------------------------------------


def _insert_token_txn(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    now_ms: int,
    token_ttl_ms: int,
    issued_by: str | None,
    bound_key: bytes | None,
) -> IssuedToken:
    issued, token_hash = _common.new_token(now_ms=now_ms, token_ttl_ms=token_ttl_ms)
    conn.execute(
        "INSERT INTO enrollment_tokens (token_hash, user_id, issued_by, bound_key, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (token_hash, user_id, issued_by, bound_key, now_ms, issued.expires_at),
    )
    return issued


def create_user_txn(conn: sqlite3.Connection, *, now_ms: int, token_ttl_ms: int) -> NewUser:
    user_id = _common.new_id()
    conn.execute("INSERT INTO users (user_id, created_at) VALUES (?, ?)", (user_id, now_ms))
    token = _insert_token_txn(
        conn, user_id=user_id, now_ms=now_ms, token_ttl_ms=token_ttl_ms, issued_by=None, bound_key=None
    )
    return NewUser(user_id=user_id, token=token)


def create_token_txn(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    now_ms: int,
    token_ttl_ms: int,
    issued_by: str | None,
    bound_key: bytes | None,
) -> IssuedToken:
    if conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is None:
        raise NotFound("No such user")
    if issued_by is not None:
        row = conn.execute(
            "SELECT user_id, revoked_at FROM devices WHERE device_id = ?", (issued_by,)
        ).fetchone()
        if row is None or row[0] != user_id:
            raise NotFound("No such device")
        if row[1] is not None:
            raise DeviceRevoked()
    return _insert_token_txn(
        conn,
        user_id=user_id,
        now_ms=now_ms,
        token_ttl_ms=token_ttl_ms,
        issued_by=issued_by,
        bound_key=bound_key,
    )


def enroll_txn(conn: sqlite3.Connection, e: Enrollment) -> DeviceRecord:
    token = conn.execute(
        "SELECT t.user_id, t.bound_key, t.expires_at, t.used_at, t.voided_at, t.issued_by, d.revoked_at"
        " FROM enrollment_tokens AS t LEFT JOIN devices AS d ON d.device_id = t.issued_by"
        " WHERE t.token_hash = ?",
        (e.token_hash,),
    ).fetchone()
    if token is None:
        raise InvalidToken()
    user_id, bound_key, expires_at, used_at, voided_at, issued_by, issuer_revoked_at = token
    if (
        used_at is not None
        or voided_at is not None
        or _common.token_expired(expires_at, now_ms=e.now_ms)
        or (bound_key is not None and bound_key != e.public_key)
        or (issued_by is not None and issuer_revoked_at is not None)
    ):
        raise InvalidToken()
    if conn.execute(
        "SELECT 1 FROM devices WHERE user_id = ? AND name_key = ? AND revoked_at IS NULL",
        (user_id, e.name_key),
    ).fetchone():
        raise NameTaken()
    if conn.execute("SELECT 1 FROM devices WHERE public_key = ?", (e.public_key,)).fetchone():
        raise KeyInUse()
    (live,) = conn.execute(
        "SELECT COUNT(*) FROM devices WHERE user_id = ? AND revoked_at IS NULL", (user_id,)
    ).fetchone()
    if live >= e.max_devices:
        raise TooManyDevices()
    device = DeviceRecord(
        device_id=_common.new_id(), user_id=user_id, public_key=e.public_key, name=e.name, created_at=e.now_ms
    )
    conn.execute(
        "INSERT INTO devices (device_id, user_id, public_key, name, name_key, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (device.device_id, user_id, e.public_key, e.name, e.name_key, e.now_ms),
    )
    conn.execute("UPDATE enrollment_tokens SET used_at = ? WHERE token_hash = ?", (e.now_ms, e.token_hash))
    return device


# --- events (writes) -------------------------------------------------------------------------------


def append_txn(conn: sqlite3.Connection, r: AppendRequest) -> Appended:
    device = conn.execute(
        "SELECT user_id, revoked_at FROM devices WHERE device_id = ?", (r.device_id,)
    ).fetchone()
    if device is None or device[0] != r.user_id:
        raise AccountDeleted()
    body = r.body.decode("utf-8")
    held = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE device_id = ? AND id = ?",  # noqa: S608
        (r.device_id, r.id),
    ).fetchone()
    if held is not None:
        original = _event(held)
        if original.stream == r.stream and original.body == body:
            return Appended(event=original, duplicate=True)
    stream = conn.execute(
        "SELECT head, max_expires_at FROM streams WHERE user_id = ? AND name = ?", (r.user_id, r.stream)
    ).fetchone()
    _check_quota_txn(conn, r, None if stream is None else stream[1])
    if held is not None:
        raise IdConflict()
    head: int = 0 if stream is None else stream[0]
    if r.expect_seq is not None and r.expect_seq != head:
        raise SeqConflict(head=head)
    if device[1] is not None:
        raise DeviceRevoked()
    event = StoredEvent(
        stream=r.stream,
        seq=head + 1,
        id=r.id,
        device_id=r.device_id,
        ts=r.ts,
        received_at=r.received_at,
        expires_at=r.expires_at,
        body=body,
    )
    conn.execute(
        "INSERT INTO streams (user_id, name, head, last_written_at, max_expires_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (user_id, name) DO UPDATE SET head = excluded.head,"
        " last_written_at = excluded.last_written_at,"
        " max_expires_at = max(max_expires_at, excluded.max_expires_at)",
        (r.user_id, r.stream, event.seq, r.received_at, r.expires_at),
    )
    conn.execute(
        "INSERT INTO events"
        " (user_id, stream, seq, id, device_id, ts, received_at, expires_at, body, body_size)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            r.user_id,
            r.stream,
            event.seq,
            r.id,
            r.device_id,
            r.ts,
            r.received_at,
            r.expires_at,
            body,
            len(r.body),
        ),
    )
    conn.execute("UPDATE users SET held_bytes = held_bytes + ? WHERE user_id = ?", (len(r.body), r.user_id))
    return Appended(event=event, duplicate=False)


def _check_quota_txn(conn: sqlite3.Connection, r: AppendRequest, stream_max_expires_at: int | None) -> None:
    floor = _common.unexpired_floor(now_ms=r.received_at, clock_skew_ms=r.clock_skew_ms)
    if stream_max_expires_at is None or stream_max_expires_at < floor:
        (live,) = conn.execute(
            "SELECT COUNT(*) FROM streams WHERE user_id = ? AND max_expires_at >= ?", (r.user_id, floor)
        ).fetchone()
        if live >= r.max_streams:
            raise QuotaExceeded("Too many streams hold unexpired events")
    size = len(r.body)
    (held_bytes,) = conn.execute("SELECT held_bytes FROM users WHERE user_id = ?", (r.user_id,)).fetchone()
    if held_bytes + size > r.max_stored_bytes:
        # Near the quota only: held_bytes still counts expired events that are not purged yet.
        (unexpired,) = conn.execute(
            "SELECT COALESCE(SUM(body_size), 0) FROM events WHERE user_id = ? AND expires_at >= ?",
            (r.user_id, floor),
        ).fetchone()
        if unexpired + size > r.max_stored_bytes:
            raise QuotaExceeded("Too many bytes of unexpired events are stored")


def purge_expired_txn(conn: sqlite3.Connection, *, now_ms: int, clock_skew_ms: int, batch: int) -> int:
    floor = _common.unexpired_floor(now_ms=now_ms, clock_skew_ms=clock_skew_ms)
    rows = conn.execute(
        "DELETE FROM events WHERE rowid IN"
        " (SELECT rowid FROM events WHERE expires_at < ? ORDER BY expires_at LIMIT ?)"
        " RETURNING user_id, body_size",
        (floor, max(batch, 0)),
    ).fetchall()
    freed: defaultdict[str, int] = defaultdict(int)
    for user_id, size in rows:
        freed[user_id] += size
    conn.executemany(
        "UPDATE users SET held_bytes = held_bytes - ? WHERE user_id = ?", [(n, u) for u, n in freed.items()]
    )
    return len(rows)


# --- reads -----------------------------------------------------------------------------------------


def stream_head_txn(conn: sqlite3.Connection, user_id: str, stream: str) -> int:
    row = conn.execute(
        "SELECT head FROM streams WHERE user_id = ? AND name = ?", (user_id, stream)
    ).fetchone()
    return 0 if row is None else int(row[0])


def read_events_txn(
    conn: sqlite3.Connection,
    user_id: str,
    stream: str,
    *,
    after: int,
    head: int,
    limit: int,
    now_ms: int,
    clock_skew_ms: int,
) -> list[StoredEvent]:
    floor = _common.unexpired_floor(now_ms=now_ms, clock_skew_ms=clock_skew_ms)
    rows = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events"  # noqa: S608
        " WHERE user_id = ? AND stream = ? AND seq > ? AND seq <= ? AND expires_at >= ?"
        " ORDER BY seq LIMIT ?",
        (user_id, stream, after, head, floor, max(limit, 0)),
    )
    return [_event(row) for row in rows]


def list_streams_txn(
    conn: sqlite3.Connection, user_id: str, *, after: str | None, limit: int, now_ms: int, clock_skew_ms: int
) -> list[tuple[str, int]]:
    floor = _common.unexpired_floor(now_ms=now_ms, clock_skew_ms=clock_skew_ms)
    # BINARY collation compares UTF-8 bytes: byte order of name, as §4.4 asks.
    rows = conn.execute(
        "SELECT name, head FROM streams WHERE user_id = ? AND name > ? AND max_expires_at >= ?"
        " ORDER BY name LIMIT ?",
        (user_id, "" if after is None else after, floor, max(limit, 0)),
    )
    return [(name, head) for name, head in rows]


def recent_streams_txn(
    conn: sqlite3.Connection, user_id: str, *, limit: int, now_ms: int, clock_skew_ms: int
) -> tuple[dict[str, int], bool]:
    floor = _common.unexpired_floor(now_ms=now_ms, clock_skew_ms=clock_skew_ms)
    limit = max(limit, 0)
    rows = conn.execute(
        "SELECT name, head FROM streams WHERE user_id = ? AND max_expires_at >= ?"
        " ORDER BY last_written_at DESC, name LIMIT ?",
        (user_id, floor, limit + 1),
    ).fetchall()
    return {name: head for name, head in rows[:limit]}, len(rows) > limit
