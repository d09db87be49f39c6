"""Backups of the PostgreSQL store: one consistent snapshot for ``pg_dump`` and for the manifest.

:class:`Snapshot` opens a ``REPEATABLE READ, READ ONLY`` transaction and exports its snapshot
(``pg_export_snapshot()``): ``pg_dump --snapshot=...`` then dumps exactly what the manifest counts
(row counts per table, the heads and unexpired events of the checked streams), while the servers keep
writing. The rest (scratch databases for ``verify``, emptiness checks for ``restore``) is small.

Blocking (psycopg's sync driver): call these in a thread.
"""

from __future__ import annotations

import re
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from relay.errors import StoreUnavailable
from relay.protocol.messages import StoredEvent

__all__ = ["Snapshot", "create_database", "drop_database", "holds_relay", "table_counts", "with_database"]

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _unavailable(exc: psycopg.Error, what: str) -> StoreUnavailable:
    text = " ".join(str(exc).split())
    error = StoreUnavailable(detail=f"{what}: {type(exc).__name__}: {text}")
    error.__cause__ = exc
    return error


class Snapshot:
    """A read-only transaction whose snapshot ``pg_dump`` shares (:attr:`snapshot_id`)."""

    def __init__(self, url: str) -> None:
        try:
            self._conn = psycopg.connect(url, autocommit=False)
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = self._conn.execute("SELECT pg_export_snapshot()").fetchone()
        except psycopg.Error as exc:
            raise _unavailable(exc, "cannot open a snapshot of the database") from exc
        assert row is not None
        self.snapshot_id: str = str(row[0])

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._conn.rollback()
        self._conn.close()

    def table_counts(self) -> dict[str, int]:
        """Rows per table of the current schema."""
        names = [
            str(row[0])
            for row in self._conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
            )
        ]
        counts = {}
        for name in names:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
            row = self._conn.execute(query).fetchone()
            counts[name] = int(row[0]) if row is not None else 0
        return counts

    def migrations(self) -> list[str]:
        return [str(r[0]) for r in self._conn.execute("SELECT name FROM schema_migrations ORDER BY name")]

    def recent_streams(self, *, limit: int) -> list[tuple[str, str, int]]:
        """``(user_id, stream, head)`` of the ``limit`` most recently written streams."""
        rows = self._conn.execute(
            "SELECT user_id, name, head FROM streams ORDER BY last_written_at DESC, user_id, name LIMIT %s",
            (limit,),
        ).fetchall()
        return [(str(u), str(n), int(h)) for u, n, h in rows]

    def unexpired_events(self, user_id: str, stream: str, *, head: int, now_ms: int) -> list[StoredEvent]:
        """What a replay of ``stream`` up to ``head`` returns at ``now_ms`` (no clock skew): the
        events ``read_events`` would, in seq order."""
        rows = self._conn.execute(
            "SELECT seq, id, device_id, ts, received_at, expires_at, body FROM events"
            " WHERE user_id = %s AND stream = %s AND seq <= %s AND expires_at >= %s ORDER BY seq",
            (user_id, stream, head, now_ms),
        ).fetchall()
        return [
            StoredEvent(
                stream=stream,
                seq=int(seq),
                id=str(event_id),
                device_id=str(device),
                ts=int(ts),
                received_at=int(received),
                expires_at=int(expires),
                body=str(body),
            )
            for seq, event_id, device, ts, received, expires, body in rows
        ]


def with_database(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise _unavailable(exc, "cannot connect to PostgreSQL") from exc


def create_database(url: str, name: str) -> None:
    """``CREATE DATABASE name`` on the server of ``url`` (a name of ``[a-z0-9_]``, made by relay)."""
    if _NAME.fullmatch(name) is None:
        raise ValueError(f"not a database name relay makes: {name!r}")
    with _admin(url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(url: str, name: str) -> None:
    if _NAME.fullmatch(name) is None:
        raise ValueError(f"not a database name relay makes: {name!r}")
    with _admin(url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def holds_relay(url: str) -> bool:
    """True when the database at ``url`` already holds relay's tables (a restore would mix data)."""
    with _admin(url) as conn:
        row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    return bool(row and row[0])


def table_counts(url: str) -> dict[str, int]:
    """Rows per table of the database at ``url`` (a restored one)."""
    with Snapshot(url) as snapshot:
        return snapshot.table_counts()
