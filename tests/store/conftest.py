"""The store contract suite runs against every implementation: ``store`` is parametrized.

To add one, add an opener to :data:`OPENERS`: an async context manager yielding a migrated, empty store.
Tests that need more than the contract (reopening a file, the writer's statistics) live in
``test_store_sqlite*.py`` and ``test_store_postgres*.py``.

PostgreSQL: each test gets a schema of its own (``postgres_helpers.postgres_schema``) in the database of
``RELAY_TEST_POSTGRES_URL`` (the ``postgres_url`` fixture, which fails the test when it is unset).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import trio
from postgres_helpers import postgres_schema
from store_helpers import CAP_S

from relay.store.base import Store
from relay.store.memory import MemoryStore
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SqliteStore

#: Connections of each test's PostgreSQL store: few, so that opening one is quick.
TEST_POOL_SIZE = 4


@asynccontextmanager
async def open_memory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    store = MemoryStore()
    yield store
    await store.close()


@asynccontextmanager
async def open_sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    with trio.fail_after(CAP_S):
        store = await SqliteStore.open(tmp_path / "data")
        await store.migrate()
    try:
        yield store
    finally:
        with trio.fail_after(CAP_S):
            await store.close()


@asynccontextmanager
async def open_postgres(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url: str = request.getfixturevalue("postgres_url")
    async with postgres_schema(url) as schema_url:
        with trio.fail_after(CAP_S):
            store = await PostgresStore.open(schema_url, pool_size=TEST_POOL_SIZE)
            await store.migrate()
        try:
            yield store
        finally:
            with trio.fail_after(CAP_S):
                await store.close()


OPENERS: dict[str, Callable[[pytest.FixtureRequest, Path], AbstractAsyncContextManager[Store]]] = {
    "memory": open_memory,
    "sqlite": open_sqlite,
    "postgres": open_postgres,
}


@pytest.fixture(params=sorted(OPENERS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with OPENERS[request.param](request, tmp_path) as opened:
        yield opened
