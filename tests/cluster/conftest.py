"""Several `relay serve` processes sharing one PostgreSQL database and one Redis: a fresh database (and
Redis keyspace) per test, torn down afterwards. These tests FAIL, never skip, without the services."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
import trio


@pytest.fixture
def cluster_database(postgres_url: str) -> Iterator[str]:
    """The URL of a new, empty database on the test server (dropped afterwards)."""
    name = f"relay_cluster_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # a name made here, not input
    parts = urlsplit(postgres_url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def cluster_redis(redis_url: str) -> Iterator[str]:
    """The test Redis, emptied of relay's keys before and after (pub/sub channels have no state)."""

    def clean() -> None:
        client = redis.Redis.from_url(redis_url)
        try:
            for key in client.scan_iter(match="relay:*", count=1000):
                client.delete(key)
        finally:
            client.close()

    clean()
    yield redis_url
    clean()


@pytest.fixture
async def nursery_for_cluster() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()
