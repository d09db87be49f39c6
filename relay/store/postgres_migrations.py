"""Numbered SQL migrations for PostgreSQL: ``schema/postgres/NNN-name.sql``, applied in order, recorded.

The twin of :mod:`relay.store.sqlite_migrations`, with the same rules. Blocking code, run on a pooled
connection (autocommit mode). Each migration is applied in its own transaction together with its row
in ``schema_migrations``, after taking a transaction-level advisory lock (:data:`MIGRATIONS_LOCK`, keyed
by the current schema too), and whether it is applied is checked again under that lock: several nodes
starting together apply each migration exactly once, in order, while the others wait. DDL is
transactional in PostgreSQL, so a migration that fails leaves nothing of itself.

Migrations are append-only (STYLE.md rule 15): the SHA-256 of each file is recorded, and a database
holding a migration that was edited since, or one this code does not know (a newer relay wrote it), is
refused with :class:`~relay.errors.StoreUnavailable` rather than run half-understood.

Tables are created in the connection's current schema (the first of its ``search_path``), so one
database can hold several relays (the tests give each test its own schema).
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import attrs

from relay.errors import StoreUnavailable
from relay.store.postgres_pool import PgConnection
from relay.store.schema_files import migrations_dir

__all__ = [
    "ADVISORY_KEYS",
    "DEFAULT_MIGRATIONS_DIR",
    "HOUSEKEEPING_LOCK",
    "MIGRATIONS_LOCK",
    "PURGE_LOCK",
    "Migration",
    "applied_migrations",
    "apply_migrations",
    "load_migrations",
]

#: The migrations shipped with relay (``schema/postgres``: see :mod:`relay.store.schema_files`).
DEFAULT_MIGRATIONS_DIR = migrations_dir("postgres")

#: The advisory locks of relay: their first key says what they guard ("REL" and a number), their second
#: is a hash of the current schema's name, so relays in different schemas of one database never meet.
#: ``ADVISORY_KEYS`` is the SQL of both, taking the first as its parameter.
ADVISORY_KEYS = "%s, hashtext(COALESCE(current_schema(), ''))"
#: Applying migrations: one node at a time (pg_advisory_xact_lock, waiting).
MIGRATIONS_LOCK = 0x52454C01
#: Purging expired events: one node at a time (pg_try_advisory_xact_lock; the others skip their turn).
PURGE_LOCK = 0x52454C02
#: Housekeeping (purge_housekeeping): the same, apart from the purge.
HOUSEKEEPING_LOCK = 0x52454C03

_FILE_NAME = re.compile(r"(?P<number>[0-9]{3})-[a-z0-9][a-z0-9-]*\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       TEXT   NOT NULL PRIMARY KEY,
    sha256     TEXT   NOT NULL,
    applied_at BIGINT NOT NULL
)
"""


@attrs.frozen(kw_only=True)
class Migration:
    name: str  # the file name without ".sql", e.g. "001-initial"
    sha256: str
    script: str


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
        found[number] = Migration(
            name=path.name.removesuffix(".sql"),
            sha256=hashlib.sha256(data).hexdigest(),
            script=data.decode("utf-8"),
        )
    return [found[number] for number in sorted(found)]


def applied_migrations(conn: PgConnection) -> dict[str, str]:
    """Name → SHA-256 of the migrations recorded in the database (none when it has no table yet)."""
    (exists,) = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone() or (False,)
    if not exists:
        return {}
    rows = conn.execute("SELECT name, sha256 FROM schema_migrations ORDER BY name").fetchall()
    return {name: digest for name, digest in rows}


def _check_known(applied: dict[str, str], migrations: list[Migration]) -> None:
    known = {m.name: m.sha256 for m in migrations}
    for name, digest in applied.items():
        if name not in known:
            detail = f"the database has migration {name}, unknown to this relay (a newer one?)"
            raise StoreUnavailable(detail=detail)
        if known[name] != digest:
            raise StoreUnavailable(detail=f"migration {name} was edited after it was applied")


def apply_migrations(conn: PgConnection, migrations: list[Migration]) -> list[str]:
    """Apply the pending ``migrations`` in order, one transaction each; return the names applied.

    ``conn`` must be in autocommit mode. Raises :class:`psycopg.Error` from the driver (the caller maps
    it) and :class:`StoreUnavailable` for a database this code must not touch.
    """
    done: list[str] = []
    for migration in migrations:
        with conn.transaction():
            conn.execute(f"SELECT pg_advisory_xact_lock({ADVISORY_KEYS})", (MIGRATIONS_LOCK,))
            conn.execute(_CREATE_TABLE)
            applied = applied_migrations(conn)
            _check_known(applied, migrations)
            if migration.name not in applied:
                # Without parameters the script goes as one simple query: every statement, in order.
                conn.execute(migration.script.encode("utf-8"))
                conn.execute(
                    "INSERT INTO schema_migrations (name, sha256, applied_at) VALUES (%s, %s, %s)",
                    # The one clock the store reads: when a migration ran is for operators only.
                    (migration.name, migration.sha256, time.time_ns() // 1_000_000),
                )
                done.append(migration.name)
    if not migrations:
        _check_known(applied_migrations(conn), migrations)
    return done
