"""The store contract suite runs against every implementation: ``store`` is parametrized.

To add one (PostgreSQL), add an opener to :data:`OPENERS`: an async context manager yielding a migrated,
empty store. Tests that need more than the contract (reopening a file, the writer's statistics) live in
``test_sqlite.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import trio
from store_helpers import CAP_S

from relay.store.base import Store
from relay.store.memory import MemoryStore
from relay.store.sqlite import SqliteStore


@asynccontextmanager
async def open_memory(tmp_path: Path) -> AsyncIterator[Store]:
    store = MemoryStore()
    yield store
    await store.close()


@asynccontextmanager
async def open_sqlite(tmp_path: Path) -> AsyncIterator[Store]:
    with trio.fail_after(CAP_S):
        store = await SqliteStore.open(tmp_path / "data")
        await store.migrate()
    try:
        yield store
    finally:
        with trio.fail_after(CAP_S):
            await store.close()


OPENERS: dict[str, Callable[[Path], AbstractAsyncContextManager[Store]]] = {
    "memory": open_memory,
    "sqlite": open_sqlite,
}


@pytest.fixture(params=sorted(OPENERS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with OPENERS[request.param](tmp_path) as opened:
        yield opened
