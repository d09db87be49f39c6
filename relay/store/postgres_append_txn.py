"""The SQL of appends on PostgreSQL: all of one user's appends of a group, in few statements, each alone.

The rules are those of :func:`relay.store.sqlite_txn.append_txn`, in the same order (PROTOCOL.md
§4.2, steps 3 to 6); the group transaction is :mod:`relay.store.postgres_writer`'s. Two ways to apply
them, with the same outcome for every append:

Batch (:func:`append_user_txn`)
    The user's row is locked (:func:`~relay.store.postgres_txn.lock_user_txn`), then the rows of the
    streams written (``SELECT … FOR UPDATE``, in name order: the seq assignment's lock), the devices
    and the events already held under the appends' (device, id) are read, and every append is decided
    in order against that state, updated as each one is accepted (the stream's next seq, its expiry,
    the user's bytes, the ids taken). The accepted ones are then written by one statement in a
    savepoint of its own. So a group costs a handful of round trips per user, not several per append,
    which is what a group commit must save besides the WAL flush. (A user with one append in the
    group takes the path below at once: four statements instead of six.)

One at a time (:func:`append_txn`)
    If that statement fails (something the checks cannot foresee, such as a value the server
    refuses), it is rolled back to its savepoint and the user's appends are made again one by one,
    each deciding afresh from the database and writing in a savepoint of its own: the one that fails
    is answered :class:`~relay.errors.StoreUnavailable` alone, and the others are stored.

Both read under the user's row lock, which every account writer takes first, so nothing the checks
read can change before the commit; the stream row locks make commit order seq order on every node.
"""

from __future__ import annotations

import attrs
import psycopg
from psycopg import errors as pg_errors

from relay.errors import (
    AccountDeleted,
    DeviceRevoked,
    IdConflict,
    QuotaExceeded,
    SeqConflict,
    StoreUnavailable,
)
from relay.protocol.messages import StoredEvent
from relay.store import _common
from relay.store.base import Appended, AppendRequest
from relay.store.postgres_pool import PgConnection, store_unavailable
from relay.store.postgres_txn import EVENT_COLUMNS, event_from_row, lock_user_txn

__all__ = ["AppendOutcome", "append_txn", "append_user_txn"]

#: What an append comes to: the committed event (once the group commits), or its refusal or failure
#: (a :class:`~relay.errors.RelayError`, or any other exception its own work raised, as in SQLite's writer).
AppendOutcome = Appended | Exception


# --- the batch -------------------------------------------------------------------------------------

#: Every row the user's appends are decided on (all under the user's lock; streams locked here).
_BATCH_STREAMS = (
    "SELECT name, head, max_expires_at FROM streams WHERE user_id = %s AND name = ANY(%s)"
    " ORDER BY name FOR UPDATE"
)
_BATCH_DEVICES = "SELECT device_id, user_id, revoked_at FROM devices WHERE device_id = ANY(%s)"
_BATCH_EVENTS = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE (device_id, id) IN"  # noqa: S608
    " (SELECT * FROM unnest(%s::text[], %s::text[]))"
)

#: Every row the accepted appends write, in one statement: the streams' new heads (their rows are
#: locked), the user's bytes, the events.
_BATCH_WRITES = (
    "WITH written AS ("
    " INSERT INTO streams (user_id, name, head, last_written_at, max_expires_at)"
    " SELECT %(user_id)s, s.name, s.head, s.last_written_at, s.max_expires_at"
    " FROM unnest(%(names)s::text[], %(heads)s::bigint[], %(written)s::bigint[], %(max_expires)s::bigint[])"
    " AS s (name, head, last_written_at, max_expires_at)"
    " ON CONFLICT (user_id, name) DO UPDATE SET head = EXCLUDED.head,"
    " last_written_at = EXCLUDED.last_written_at, max_expires_at = EXCLUDED.max_expires_at"
    "), held AS ("
    " UPDATE users SET held_bytes = held_bytes + %(size)s WHERE user_id = %(user_id)s"
    ")"
    " INSERT INTO events"
    " (user_id, stream, seq, id, device_id, ts, received_at, expires_at, body, body_size)"
    " SELECT %(user_id)s, e.* FROM unnest(%(stream)s::text[], %(seq)s::bigint[], %(id)s::text[],"
    " %(device_id)s::text[], %(ts)s::bigint[], %(received_at)s::bigint[], %(expires_at)s::bigint[],"
    " %(body)s::text[], %(body_size)s::bigint[]) AS e"
)


@attrs.define(eq=False)
class _Stream:
    head: int
    max_expires_at: int
    last_written_at: int = 0
    touched: bool = False


@attrs.define(eq=False)
class _Batch:
    """One user's appends decided against the rows read under its locks, and what they will write."""

    user_id: str
    held_bytes: int
    streams: dict[str, _Stream]
    devices: dict[str, tuple[str, int | None]]
    events: dict[tuple[str, str], StoredEvent]
    accepted: list[StoredEvent] = attrs.Factory(list)
    sizes: list[int] = attrs.Factory(list)

    @classmethod
    def read_txn(
        cls, conn: PgConnection, user_id: str, held_bytes: int, requests: list[AppendRequest]
    ) -> _Batch:
        names = sorted({r.stream for r in requests})
        streams = {
            name: _Stream(head=head, max_expires_at=max_expires_at)
            for name, head, max_expires_at in conn.execute(_BATCH_STREAMS, (user_id, names))
        }
        device_ids = sorted({r.device_id for r in requests})
        devices = {d: (u, revoked_at) for d, u, revoked_at in conn.execute(_BATCH_DEVICES, (device_ids,))}
        pairs = ([r.device_id for r in requests], [r.id for r in requests])
        events = {
            (event.device_id, event.id): event
            for event in map(event_from_row, conn.execute(_BATCH_EVENTS, pairs).fetchall())
        }
        return cls(user_id=user_id, held_bytes=held_bytes, streams=streams, devices=devices, events=events)

    def decide_txn(self, conn: PgConnection, r: AppendRequest) -> Appended:
        """The answer to ``r`` if everything decided before it commits; the state updated if accepted."""
        device = self.devices.get(r.device_id)
        if device is None or device[0] != r.user_id:
            raise AccountDeleted()
        body = r.body.decode("utf-8")
        original = self.events.get((r.device_id, r.id))
        if original is not None and original.stream == r.stream and original.body == body:
            return Appended(event=original, duplicate=True)
        stream = self.streams.get(r.stream)
        self._check_quota_txn(conn, r, None if stream is None else stream.max_expires_at)
        if original is not None:
            raise IdConflict()
        head = 0 if stream is None else stream.head
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
        if stream is None:
            stream = self.streams[r.stream] = _Stream(head=0, max_expires_at=r.expires_at)
        stream.head, stream.touched, stream.last_written_at = event.seq, True, r.received_at
        stream.max_expires_at = max(stream.max_expires_at, r.expires_at)
        self.events[(r.device_id, r.id)] = event
        self.held_bytes += len(r.body)
        self.accepted.append(event)
        self.sizes.append(len(r.body))
        return Appended(event=event, duplicate=False)

    def _check_quota_txn(
        self, conn: PgConnection, r: AppendRequest, stream_max_expires_at: int | None
    ) -> None:
        # As _check_quota_txn below, with the database's counts corrected by what this batch adds.
        floor = _common.unexpired_floor(now_ms=r.received_at, clock_skew_ms=r.clock_skew_ms)
        if stream_max_expires_at is None or stream_max_expires_at < floor:
            touched = [name for name, s in self.streams.items() if s.touched]
            (elsewhere,) = conn.execute(
                "SELECT COUNT(*) FROM streams"
                " WHERE user_id = %s AND max_expires_at >= %s AND name <> ALL(%s)",
                (r.user_id, floor, touched),
            ).fetchone() or (0,)
            live = elsewhere + sum(1 for name in touched if self.streams[name].max_expires_at >= floor)
            if live >= r.max_streams:
                raise QuotaExceeded("Too many streams hold unexpired events")
        size = len(r.body)
        if self.held_bytes + size > r.max_stored_bytes:
            (stored,) = conn.execute(
                "SELECT COALESCE(SUM(body_size), 0)::bigint FROM events"
                " WHERE user_id = %s AND expires_at >= %s",
                (r.user_id, floor),
            ).fetchone() or (0,)
            added = sum(n for e, n in zip(self.accepted, self.sizes, strict=True) if e.expires_at >= floor)
            if stored + added + size > r.max_stored_bytes:
                raise QuotaExceeded("Too many bytes of unexpired events are stored")

    def write_txn(self, conn: PgConnection) -> None:
        """Write every accepted append at once, in a savepoint (rolled back, and raising, if it fails)."""
        if not self.accepted:
            return
        touched = {name: s for name, s in self.streams.items() if s.touched}
        events = self.accepted
        params: dict[str, object] = {
            "user_id": self.user_id,
            "names": list(touched),
            "heads": [s.head for s in touched.values()],
            "written": [s.last_written_at for s in touched.values()],
            "max_expires": [s.max_expires_at for s in touched.values()],
            "size": sum(self.sizes),
            "stream": [e.stream for e in events],
            "seq": [e.seq for e in events],
            "id": [e.id for e in events],
            "device_id": [e.device_id for e in events],
            "ts": [e.ts for e in events],
            "received_at": [e.received_at for e in events],
            "expires_at": [e.expires_at for e in events],
            "body": [e.body for e in events],
            "body_size": self.sizes,
        }
        with conn.transaction():  # SAVEPOINT … RELEASE, or ROLLBACK TO on any exception
            conn.execute(_BATCH_WRITES, params)


def append_user_txn(conn: PgConnection, user_id: str, requests: list[AppendRequest]) -> list[AppendOutcome]:
    """The outcomes of one user's appends of a group, in order (see the module docstring).

    ``requests`` are in the order they must be decided in (by stream, then arrival). A driver error
    escaping here (outside the savepoints) dooms the whole group.
    """
    held_bytes = lock_user_txn(conn, user_id)
    if held_bytes is None:
        return [AccountDeleted() for _ in requests]
    if len(requests) == 1:  # the usual group at low load: one at a time is fewer round trips
        return [_one_txn(conn, requests[0])]
    batch = _Batch.read_txn(conn, user_id, held_bytes, requests)
    outcomes = [_decide_txn(batch, conn, r) for r in requests]
    try:
        batch.write_txn(conn)
    except psycopg.Error:
        # One of them cannot be written: find which, deciding and writing them one at a time.
        return [_one_txn(conn, r) for r in requests]
    return outcomes


def _decide_txn(batch: _Batch, conn: PgConnection, r: AppendRequest) -> AppendOutcome:
    try:
        return batch.decide_txn(conn, r)
    except psycopg.Error:
        raise  # the transaction is aborted: the whole group fails
    except Exception as exc:  # a refusal, or a failure of this append's own
        return exc


def _one_txn(conn: PgConnection, r: AppendRequest) -> AppendOutcome:
    try:
        return append_txn(conn, r)
    except psycopg.Error:
        raise  # outside the append's savepoint: the transaction is aborted, the whole group fails
    except Exception as exc:
        return exc


# --- one at a time ---------------------------------------------------------------------------------

#: Everything an append checks, in one statement (one snapshot, taken under the user's lock).
_APPEND_CHECKS = (
    "SELECT d.user_id, d.revoked_at, u.held_bytes, s.head, s.max_expires_at,"
    " e.stream, e.seq, e.id, e.device_id, e.ts, e.received_at, e.expires_at, e.body"
    " FROM (SELECT 1) AS one"
    " LEFT JOIN devices AS d ON d.device_id = %(device_id)s"
    " LEFT JOIN users AS u ON u.user_id = %(user_id)s"
    " LEFT JOIN streams AS s ON s.user_id = %(user_id)s AND s.name = %(stream)s"
    " LEFT JOIN events AS e ON e.device_id = %(device_id)s AND e.id = %(id)s"
)

#: Everything an append writes, in one statement: the stream's head is incremented under its row lock
#: (or the stream created at 1), and that is the new event's seq.
_APPEND_WRITES = (
    "WITH stream AS ("
    " INSERT INTO streams (user_id, name, head, last_written_at, max_expires_at)"
    " VALUES (%(user_id)s, %(stream)s, 1, %(received_at)s, %(expires_at)s)"
    " ON CONFLICT (user_id, name) DO UPDATE SET head = streams.head + 1,"
    " last_written_at = EXCLUDED.last_written_at,"
    " max_expires_at = GREATEST(streams.max_expires_at, EXCLUDED.max_expires_at)"
    " RETURNING head"
    "), held AS ("
    " UPDATE users SET held_bytes = held_bytes + %(size)s WHERE user_id = %(user_id)s"
    ")"
    " INSERT INTO events"
    " (user_id, stream, seq, id, device_id, ts, received_at, expires_at, body, body_size)"
    " SELECT %(user_id)s, %(stream)s, head, %(id)s, %(device_id)s, %(ts)s, %(received_at)s,"
    " %(expires_at)s, %(body)s, %(size)s FROM stream"
    " RETURNING seq"
)


def append_txn(conn: PgConnection, r: AppendRequest) -> Appended:
    """One append, decided from the database, the user's row already locked by this transaction.

    Its writes run in a savepoint of their own: a failing one is rolled back alone, as a
    :class:`StoreUnavailable` for this append only; the group's other appends still commit.
    """
    params = {"user_id": r.user_id, "device_id": r.device_id, "stream": r.stream, "id": r.id}
    row = conn.execute(_APPEND_CHECKS, params).fetchone()
    assert row is not None  # one row, whatever the joins find
    device_user, revoked_at, held_bytes, head, stream_max_expires_at = row[:5]
    if device_user is None or device_user != r.user_id or held_bytes is None:
        raise AccountDeleted()
    body = r.body.decode("utf-8")
    original = None if row[5] is None else event_from_row(row[5:])
    if original is not None and original.stream == r.stream and original.body == body:
        return Appended(event=original, duplicate=True)
    _check_quota_txn(conn, r, stream_max_expires_at, held_bytes)
    if original is not None:
        raise IdConflict()
    head = 0 if head is None else int(head)
    if r.expect_seq is not None and r.expect_seq != head:
        raise SeqConflict(head=head)
    if revoked_at is not None:
        raise DeviceRevoked()
    seq = _write_event_txn(conn, r, body, seq=head + 1)
    if seq is None:  # the (device, id) key was taken meanwhile: decided by a read, as a retry would be
        held = conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE device_id = %s AND id = %s",  # noqa: S608
            (r.device_id, r.id),
        ).fetchone()
        if held is not None and held[0] == r.stream and held[7] == body:
            return Appended(event=event_from_row(held), duplicate=True)
        raise IdConflict()
    event = StoredEvent(
        stream=r.stream,
        seq=seq,
        id=r.id,
        device_id=r.device_id,
        ts=r.ts,
        received_at=r.received_at,
        expires_at=r.expires_at,
        body=body,
    )
    return Appended(event=event, duplicate=False)


def _write_event_txn(conn: PgConnection, r: AppendRequest, body: str, *, seq: int) -> int | None:
    """Store the event as ``seq``; None when its (device, id) key is taken (the savepoint rolled back).

    The seq comes from the stream's row, incremented under its lock; it must be the one the checks
    expected under the user's lock, or nothing is written.
    """
    params = {
        "user_id": r.user_id,
        "device_id": r.device_id,
        "stream": r.stream,
        "id": r.id,
        "ts": r.ts,
        "received_at": r.received_at,
        "expires_at": r.expires_at,
        "body": body,
        "size": len(r.body),
    }
    try:
        with conn.transaction():  # SAVEPOINT … RELEASE, or ROLLBACK TO on any exception
            row = conn.execute(_APPEND_WRITES, params).fetchone()
            assigned = None if row is None else int(row[0])
            if assigned != seq:
                raise StoreUnavailable(detail=f"append: the stream's head gave seq {assigned}, not {seq}")
    except pg_errors.UniqueViolation as exc:
        if exc.diag.constraint_name == "events_device_event":
            return None
        raise store_unavailable(exc, "append") from exc
    except psycopg.Error as exc:
        raise store_unavailable(exc, "append") from exc
    return seq


def _check_quota_txn(
    conn: PgConnection, r: AppendRequest, stream_max_expires_at: int | None, held_bytes: int
) -> None:
    floor = _common.unexpired_floor(now_ms=r.received_at, clock_skew_ms=r.clock_skew_ms)
    if stream_max_expires_at is None or stream_max_expires_at < floor:
        (live,) = conn.execute(
            "SELECT COUNT(*) FROM streams WHERE user_id = %s AND max_expires_at >= %s", (r.user_id, floor)
        ).fetchone() or (0,)
        if live >= r.max_streams:
            raise QuotaExceeded("Too many streams hold unexpired events")
    size = len(r.body)
    if held_bytes + size > r.max_stored_bytes:
        # Near the quota only: held_bytes still counts expired events that are not purged yet.
        (unexpired,) = conn.execute(
            "SELECT COALESCE(SUM(body_size), 0)::bigint FROM events WHERE user_id = %s AND expires_at >= %s",
            (r.user_id, floor),
        ).fetchone() or (0,)
        if unexpired + size > r.max_stored_bytes:
            raise QuotaExceeded("Too many bytes of unexpired events are stored")
