"""Fixtures of the Redis bus tests: nodes (RedisBus instances running in the test's nursery).

Every test gets a prefix of its own on the shared test Redis (``redis_url``, which fails the test when
``RELAY_TEST_REDIS_URL`` is unset). Tests that stop or freeze Redis start a server of their own
(``own_redis``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from redis_bus_helpers import START_TIMEOUT_S, TEST_HEARTBEAT_MS, Node, NodeFactory, RedisServer, serve

from relay.bus.redis import RedisBus


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture
def make_node(nursery: trio.Nursery, redis_url: str, prefix: str) -> NodeFactory:
    """``await make_node(**kwargs)``: a RedisBus on the test Redis (or ``url``), running and delivering."""

    async def make(url: str | None = None, **kwargs: Any) -> Node:
        kwargs.setdefault("heartbeat_ms", TEST_HEARTBEAT_MS)
        kwargs.setdefault("prefix", prefix)
        bus = RedisBus(url or redis_url, **kwargs)
        with trio.fail_after(START_TIMEOUT_S):
            scope = await nursery.start(serve, bus)
        return Node(bus, scope)

    return make


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (started), stopped at the end."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.thaw()
        server.stop()
