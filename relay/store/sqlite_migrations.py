"""Numbered SQL migrations for SQLite: ``schema/sqlite/NNN-name.sql``, applied in order, recorded.

Blocking code, run on the store's writer connection (autocommit mode, ``isolation_level=None``). Each
migration is applied in its own ``BEGIN IMMEDIATE … COMMIT`` together with its row in
``schema_migrations``; the write lock that ``BEGIN IMMEDIATE`` takes is exclusive across processes,
and whether the migration is applied is checked again under it, so several processes migrating the
same file at once apply each migration exactly once, in order (the others wait ``busy_timeout``).

Migrations are append-only (STYLE.md rule 15): the SHA-256 of each file is recorded, and a database
holding a migration that was edited since, or one this code does not know (a newer relay wrote it), is
refused with :class:`~relay.errors.StoreUnavailable` rather than run half-understood.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from pathlib import Path

import attrs

from relay.errors import StoreUnavailable
from relay.store.schema_files import migrations_dir

__all__ = ["DEFAULT_MIGRATIONS_DIR", "Migration", "applied_migrations", "apply_migrations", "load_migrations"]

#: The migrations shipped with relay (``schema/sqlite``: see :mod:`relay.store.schema_files`).
DEFAULT_MIGRATIONS_DIR = migrations_dir("sqlite")

_FILE_NAME = re.compile(r"(?P<number>[0-9]{3})-[a-z0-9][a-z0-9-]*\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       TEXT    NOT NULL PRIMARY KEY,
    sha256     TEXT    NOT NULL,
    applied_at INTEGER NOT NULL
) STRICT
"""


@attrs.frozen(kw_only=True)
class Migration:
    name: str  # the file name without ".sql", e.g. "001-initial"
    sha256: str
    statements: tuple[str, ...]


def _split(text: str, *, name: str) -> tuple[str, ...]:
    """The statements of a script; each must end at the end of a line."""
    statements: list[str] = []
    chunk = ""
    for line in text.splitlines(keepends=True):
        chunk += line
        if sqlite3.complete_statement(chunk):
            statements.append(chunk.strip())
            chunk = ""
    leftover = "\n".join(
        line for line in chunk.splitlines() if line.strip() and not line.strip().startswith("--")
    )
    if leftover:
        raise StoreUnavailable(detail=f"migration {name}: incomplete last statement")
    return tuple(statements)


def load_migrations(directory: Path = DEFAULT_MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in ``directory``, in order; a misnamed ``.sql`` file or a reused number is refused."""
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise StoreUnavailable(detail=f"migration file {path.name!r} is not named NNN-name.sql")
        number = match["number"]
        if number in found:
            raise StoreUnavailable(detail=f"two migrations numbered {number}")
        data = path.read_bytes()
        name = path.name.removesuffix(".sql")
        found[number] = Migration(
            name=name,
            sha256=hashlib.sha256(data).hexdigest(),
            statements=_split(data.decode("utf-8"), name=name),
        )
    return [found[number] for number in sorted(found)]


def applied_migrations(conn: sqlite3.Connection) -> dict[str, str]:
    """Name → SHA-256 of the migrations recorded in the database (none when it has no table yet)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if exists is None:
        return {}
    return dict(conn.execute("SELECT name, sha256 FROM schema_migrations ORDER BY name").fetchall())


def _check_known(applied: dict[str, str], migrations: list[Migration]) -> None:
    known = {m.name: m.sha256 for m in migrations}
    for name, digest in applied.items():
        if name not in known:
            detail = f"the database has migration {name}, unknown to this relay (a newer one?)"
            raise StoreUnavailable(detail=detail)
        if known[name] != digest:
            raise StoreUnavailable(detail=f"migration {name} was edited after it was applied")


def apply_migrations(conn: sqlite3.Connection, migrations: list[Migration]) -> list[str]:
    """Apply the pending ``migrations`` in order, one transaction each; return the names applied.

    ``conn`` must be in autocommit mode. Raises :class:`sqlite3.Error` from the driver (the caller maps
    it) and :class:`StoreUnavailable` for a database this code must not touch.
    """
    done: list[str] = []
    for migration in migrations:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_CREATE_TABLE)
            applied = applied_migrations(conn)
            _check_known(applied, migrations)
            if migration.name not in applied:
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (name, sha256, applied_at) VALUES (?, ?, ?)",
                    # The one clock the store reads: when a migration ran is for operators only.
                    (migration.name, migration.sha256, time.time_ns() // 1_000_000),
                )
                done.append(migration.name)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    if not migrations:
        _check_known(applied_migrations(conn), migrations)
    return done
