"""The suite's services are really there: PostgreSQL and Redis answer through the drivers relay uses.

These fail, never skip, when a service cannot be reached (see tests/conftest.py).
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
import redis
import trio

#: Every test here finishes in well under a second when the service is up.
CAP_S = 15


@pytest.mark.postgres
async def test_postgres_answers_a_query(postgres_url: str) -> None:
    def query() -> object:
        with psycopg.connect(postgres_url, connect_timeout=5) as conn:
            row = conn.execute("select 1").fetchone()
            return None if row is None else row[0]

    with trio.fail_after(CAP_S):
        assert await trio.to_thread.run_sync(query, abandon_on_cancel=True) == 1


@pytest.mark.redis
async def test_redis_answers_ping_set_and_get(redis_url: str) -> None:
    key = f"relay-test:{uuid.uuid4()}"

    def round_trip() -> tuple[bool, bytes | None]:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5)
        try:
            pong = bool(client.ping())
            client.set(key, b"value", ex=60)
            value = client.get(key)
            client.delete(key)
            return pong, value if isinstance(value, bytes) else None
        finally:
            client.close()

    with trio.fail_after(CAP_S):
        assert await trio.to_thread.run_sync(round_trip, abandon_on_cancel=True) == (True, b"value")
