"""Helpers of the PostgreSQL store tests: a fresh schema per test, and direct connections beside the store.

Each test's store lives in a schema of its own in the database of ``RELAY_TEST_POSTGRES_URL`` (named on
``search_path`` through the connection's options), dropped afterwards: tests are isolated, fast, and
leave nothing behind. Direct connections (:func:`connect`) stand for another node, an operator, or a
transaction held open on purpose.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import trio
from psycopg import conninfo as pg_conninfo
from psycopg import sql
from psycopg.rows import TupleRow
from store_helpers import CAP_S


def connect(url: str) -> psycopg.Connection[TupleRow]:
    """A direct connection (autocommit) to the database at ``url``. Blocking."""
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def _admin(url: str, statement: sql.Composed) -> None:
    with connect(url) as conn:
        conn.execute(statement)


@asynccontextmanager
async def postgres_schema(url: str) -> AsyncIterator[str]:
    """A fresh, empty schema in the database at ``url``; yields a URL whose ``search_path`` is it."""
    name = f"relay_test_{secrets.token_hex(6)}"
    with trio.fail_after(CAP_S):
        await trio.to_thread.run_sync(_admin, url, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield pg_conninfo.make_conninfo(url, options=f"-c search_path={name}")
    finally:
        drop = sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name))
        with trio.fail_after(CAP_S):
            await trio.to_thread.run_sync(_admin, url, drop)


def schema_of(url: str) -> str:
    """The schema a :func:`postgres_schema` URL names."""
    options = pg_conninfo.conninfo_to_dict(url)["options"]
    assert isinstance(options, str)
    return options.removeprefix("-c search_path=")


async def wait_for_lock_waiters(url: str, count: int = 1) -> None:
    """Return once ``count`` sessions of the database wait for a lock (the state a test set up)."""

    def waiting() -> int:
        with connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()
        return 0 if row is None else int(row[0])

    while True:
        if await trio.to_thread.run_sync(waiting) >= count:
            return
        await trio.sleep(0.01)  # polling the server's state, not waiting for a timer
