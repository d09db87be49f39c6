"""The SQL of the PostgreSQL store: one blocking function per store method, each taking a connection.

The twin of :mod:`relay.store.sqlite_txn` (users, enrolment tokens, enrolment, events, and here the
server's secrets too); appends are :mod:`relay.store.postgres_append_txn`, devices after their
enrolment and accounts :mod:`relay.store.postgres_accounts_txn`, the revocation log and the memory of
deleted devices :mod:`relay.store.postgres_revocations_txn`.

Write functions (``*_txn``) run inside a transaction opened by :mod:`relay.store.postgres_pool` (appends:
inside the group transaction of :mod:`relay.store.postgres_writer`) and raise the errors of
:mod:`relay.errors` for refusals; read functions run in autocommit mode, one statement each (so each
sees one snapshot). Several nodes write at once, so where SQLite relies on its single writer this
code takes row locks, always in one order, so that transactions may wait for each other but never in
a circle (no deadlock, on one node or several):

1. the user's row (:func:`lock_user_txn`; several users' in id order): it is the lock of the account,
   taken first by append groups, enrolment, revocation, deletion and the purge, which makes quotas,
   device counts and "no append commits after the revocation" exact;
2. device rows (revocation, renaming, deletion: by id);
3. stream rows, by name (appends: ``SELECT … FOR UPDATE``, or the upsert that increments the head);
4. the rest (tokens, events, nonces), and the revocation log's table lock last.

Reads made after taking a lock are fresh statements, so under READ COMMITTED they see every commit
that came before the lock was granted: a check then a write under the lock cannot be overtaken.
"""

from __future__ import annotations

import secrets

from psycopg import errors as pg_errors

from relay import crypto
from relay.errors import (
    DeviceRevoked,
    InvalidToken,
    KeyInUse,
    NameTaken,
    NotFound,
    StoreUnavailable,
    TooManyDevices,
)
from relay.protocol.messages import StoredEvent
from relay.store import _common
from relay.store.base import (
    DeviceRecord,
    Enrollment,
    IssuedToken,
    NewUser,
    ServerSecrets,
)
from relay.store.postgres_migrations import ADVISORY_KEYS, PURGE_LOCK
from relay.store.postgres_pool import PgConnection

EVENT_COLUMNS = "stream, seq, id, device_id, ts, received_at, expires_at, body"

#: The secrets of migration 003, by row name, and their sizes.
_SECRETS = {"server_key": crypto.SEED_BYTES, "token_secret": crypto.SECRET_BYTES}


def event_from_row(row: tuple[str, int, str, str, int, int, int, str]) -> StoredEvent:
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


def lock_user_txn(conn: PgConnection, user_id: str) -> int | None:
    """Lock the user's row until the end of the transaction (see the module docstring).

    Returns its ``held_bytes``, or None when there is no such user. ``FOR NO KEY UPDATE``: other account
    writers of the user wait, while inserting rows that refer to the user (``FOR KEY SHARE`` through
    their foreign key) does not.
    """
    row = conn.execute(
        "SELECT held_bytes FROM users WHERE user_id = %s FOR NO KEY UPDATE", (user_id,)
    ).fetchone()
    return None if row is None else int(row[0])


# --- the server's secrets (migration 003) ----------------------------------------------------------


def load_or_create_secrets_txn(conn: PgConnection) -> ServerSecrets:
    # Every node offers secrets of its own; whichever committed first stays, and all read it back.
    conn.execute(
        "INSERT INTO server_secrets (name, secret) VALUES (%s, %s), (%s, %s) ON CONFLICT (name) DO NOTHING",
        [part for name, size in _SECRETS.items() for part in (name, secrets.token_bytes(size))],
    )
    held = {name: bytes(secret) for name, secret in conn.execute("SELECT name, secret FROM server_secrets")}
    for name, size in _SECRETS.items():
        if len(held.get(name, b"")) != size:
            raise StoreUnavailable(
                detail=f"the server secret {name!r} in the database is not {size} bytes: refusing to start "
                "with a damaged secret (restore it from a backup)"
            )
    return ServerSecrets(signing_seed=held["server_key"], token_secret=held["token_secret"])


# --- users, tokens and enrolment (writes) ----------------------------------------------------------


def _insert_token_txn(
    conn: PgConnection,
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
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (token_hash, user_id, issued_by, bound_key, now_ms, issued.expires_at),
    )
    return issued


def create_user_txn(conn: PgConnection, *, now_ms: int, token_ttl_ms: int) -> NewUser:
    user_id = _common.new_id()
    conn.execute("INSERT INTO users (user_id, created_at) VALUES (%s, %s)", (user_id, now_ms))
    token = _insert_token_txn(
        conn, user_id=user_id, now_ms=now_ms, token_ttl_ms=token_ttl_ms, issued_by=None, bound_key=None
    )
    return NewUser(user_id=user_id, token=token)


def create_token_txn(
    conn: PgConnection,
    *,
    user_id: str,
    now_ms: int,
    token_ttl_ms: int,
    issued_by: str | None,
    bound_key: bytes | None,
) -> IssuedToken:
    # Share locks, so that neither the user's deletion nor the issuer's revocation (which voids the
    # tokens it issued) can pass this one by before it commits.
    if conn.execute("SELECT 1 FROM users WHERE user_id = %s FOR KEY SHARE", (user_id,)).fetchone() is None:
        raise NotFound("No such user")
    if issued_by is not None:
        row = conn.execute(
            "SELECT user_id, revoked_at FROM devices WHERE device_id = %s FOR SHARE", (issued_by,)
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


def enroll_txn(conn: PgConnection, e: Enrollment) -> DeviceRecord:
    owner = conn.execute(
        "SELECT user_id FROM enrollment_tokens WHERE token_hash = %s", (e.token_hash,)
    ).fetchone()
    # Under the user's lock: the token's use, the device count and the issuer's revocation are decided
    # by one enrolment at a time (a user deleted meanwhile took its tokens with it).
    if owner is None or lock_user_txn(conn, owner[0]) is None:
        raise InvalidToken()
    token = conn.execute(
        "SELECT t.user_id, t.bound_key, t.expires_at, t.used_at, t.voided_at, t.issued_by, d.revoked_at"
        " FROM enrollment_tokens AS t LEFT JOIN devices AS d ON d.device_id = t.issued_by"
        " WHERE t.token_hash = %s",
        (e.token_hash,),
    ).fetchone()
    if token is None:
        raise InvalidToken()
    user_id, bound_key, expires_at, used_at, voided_at, issued_by, issuer_revoked_at = token
    if (
        used_at is not None
        or voided_at is not None
        or _common.token_expired(expires_at, now_ms=e.now_ms)
        or (bound_key is not None and bytes(bound_key) != e.public_key)
        or (issued_by is not None and issuer_revoked_at is not None)
    ):
        raise InvalidToken()
    if conn.execute(
        "SELECT 1 FROM devices WHERE user_id = %s AND name_key = %s AND revoked_at IS NULL",
        (user_id, e.name_key),
    ).fetchone():
        raise NameTaken()
    if conn.execute("SELECT 1 FROM devices WHERE public_key = %s", (e.public_key,)).fetchone():
        raise KeyInUse()
    (live,) = conn.execute(
        "SELECT COUNT(*) FROM devices WHERE user_id = %s AND revoked_at IS NULL", (user_id,)
    ).fetchone() or (0,)
    if live >= e.max_devices:
        raise TooManyDevices()
    device = DeviceRecord(
        device_id=_common.new_id(), user_id=user_id, public_key=e.public_key, name=e.name, created_at=e.now_ms
    )
    try:
        conn.execute(
            "INSERT INTO devices (device_id, user_id, public_key, name, name_key, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (device.device_id, user_id, e.public_key, e.name, e.name_key, e.now_ms),
        )
    except pg_errors.UniqueViolation as exc:
        # What the reads above cannot see: a rename to this name, or an enrolment of this key for
        # another user, committed (or still running) in another transaction. The index decides.
        if exc.diag.constraint_name == "devices_live_name":
            raise NameTaken() from exc
        if exc.diag.constraint_name == "devices_public_key":
            raise KeyInUse() from exc
        raise
    conn.execute("UPDATE enrollment_tokens SET used_at = %s WHERE token_hash = %s", (e.now_ms, e.token_hash))
    return device


# --- events (writes) -------------------------------------------------------------------------------

#: The purge, in one statement: the expired events of the users locked, soonest expired first, and
#: what they free of each user's held_bytes; returns one row per user with how many went.
_PURGE = (
    "WITH doomed AS ("
    " SELECT user_id, stream, seq FROM events WHERE expires_at < %(floor)s AND user_id = ANY(%(users)s)"
    " ORDER BY expires_at LIMIT %(batch)s"
    "), gone AS ("
    " DELETE FROM events AS e USING doomed AS d"
    " WHERE e.user_id = d.user_id AND e.stream = d.stream AND e.seq = d.seq"
    " RETURNING e.user_id, e.body_size"
    "), freed AS ("
    " SELECT user_id, SUM(body_size)::bigint AS size, COUNT(*) AS events FROM gone GROUP BY user_id"
    ")"
    " UPDATE users AS u SET held_bytes = u.held_bytes - freed.size FROM freed"
    " WHERE u.user_id = freed.user_id RETURNING freed.events"
)


def purge_expired_txn(conn: PgConnection, *, now_ms: int, clock_skew_ms: int, batch: int) -> int:
    # One node at a time; the others skip their turn (returning 0 ends their loop until the next one).
    (mine,) = conn.execute(
        f"SELECT pg_try_advisory_xact_lock({ADVISORY_KEYS})", (PURGE_LOCK,)
    ).fetchone() or (False,)
    if not mine or batch <= 0:
        return 0
    floor = _common.unexpired_floor(now_ms=now_ms, clock_skew_ms=clock_skew_ms)
    candidates = [
        u
        for (u,) in conn.execute(
            "SELECT DISTINCT user_id FROM"
            " (SELECT user_id FROM events WHERE expires_at < %s ORDER BY expires_at LIMIT %s) AS e",
            (floor, batch),
        )
    ]
    if not candidates:
        return 0
    # The users' rows first, in id order, like every other writer (held_bytes is theirs); a user
    # deleted meanwhile took its events with it.
    users = [
        u
        for (u,) in conn.execute(
            "SELECT user_id FROM users WHERE user_id = ANY(%s) ORDER BY user_id FOR NO KEY UPDATE",
            (candidates,),
        )
    ]
    rows = conn.execute(_PURGE, {"floor": floor, "users": users, "batch": batch}).fetchall()
    return sum(int(n) for (n,) in rows)


# --- reads -----------------------------------------------------------------------------------------


def stream_head_txn(conn: PgConnection, user_id: str, stream: str) -> int:
    row = conn.execute(
        "SELECT head FROM streams WHERE user_id = %s AND name = %s", (user_id, stream)
    ).fetchone()
    return 0 if row is None else int(row[0])


def read_events_txn(
    conn: PgConnection,
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
        f"SELECT {EVENT_COLUMNS} FROM events"  # noqa: S608
        " WHERE user_id = %s AND stream = %s AND seq > %s AND seq <= %s AND expires_at >= %s"
        " ORDER BY seq LIMIT %s",
        (user_id, stream, after, head, floor, max(limit, 0)),
    ).fetchall()
    return [event_from_row(row) for row in rows]


def list_streams_txn(
    conn: PgConnection, user_id: str, *, after: str | None, limit: int, now_ms: int, clock_skew_ms: int
) -> list[tuple[str, int]]:
    floor = _common.unexpired_floor(now_ms=now_ms, clock_skew_ms=clock_skew_ms)
    # streams.name is COLLATE "C": byte order of name, as §4.4 asks, whatever the database's locale.
    rows = conn.execute(
        "SELECT name, head FROM streams WHERE user_id = %s AND name > %s AND max_expires_at >= %s"
        " ORDER BY name LIMIT %s",
        (user_id, "" if after is None else after, floor, max(limit, 0)),
    ).fetchall()
    return [(name, head) for name, head in rows]


def recent_streams_txn(
    conn: PgConnection, user_id: str, *, limit: int, now_ms: int, clock_skew_ms: int
) -> tuple[dict[str, int], bool]:
    floor = _common.unexpired_floor(now_ms=now_ms, clock_skew_ms=clock_skew_ms)
    limit = max(limit, 0)
    rows = conn.execute(
        "SELECT name, head FROM streams WHERE user_id = %s AND max_expires_at >= %s"
        " ORDER BY last_written_at DESC, name LIMIT %s",
        (user_id, floor, limit + 1),
    ).fetchall()
    return {name: head for name, head in rows[:limit]}, len(rows) > limit
