"""The node registry of the store contract: heartbeats that expire, renewals, and forgetting."""

from __future__ import annotations

import trio
from store_helpers import CAP_S

from relay.store.base import NodeRecord, Store

NOW = 1_764_000_000_000


async def test_a_heartbeat_makes_a_node_live_until_it_expires(store: Store) -> None:
    with trio.fail_after(CAP_S):
        await store.heartbeat_node("node-b", shared_bus=False, now_ms=NOW, ttl_ms=15_000)
        await store.heartbeat_node("node-a", shared_bus=True, now_ms=NOW, ttl_ms=15_000)
        live = await store.live_nodes(now_ms=NOW + 15_000)
        later = await store.live_nodes(now_ms=NOW + 15_001)
    assert live == [
        NodeRecord(node_id="node-a", shared_bus=True, expires_at=NOW + 15_000),
        NodeRecord(node_id="node-b", shared_bus=False, expires_at=NOW + 15_000),
    ]
    assert later == []


async def test_a_renewal_moves_the_expiry_and_the_bus_kind(store: Store) -> None:
    with trio.fail_after(CAP_S):
        await store.heartbeat_node("node-a", shared_bus=False, now_ms=NOW, ttl_ms=1_000)
        await store.heartbeat_node("node-a", shared_bus=True, now_ms=NOW + 900, ttl_ms=1_000)
        live = await store.live_nodes(now_ms=NOW + 1_500)
    assert live == [NodeRecord(node_id="node-a", shared_bus=True, expires_at=NOW + 1_900)]


async def test_a_node_that_stops_is_forgotten_at_once(store: Store) -> None:
    with trio.fail_after(CAP_S):
        await store.heartbeat_node("node-a", shared_bus=False, now_ms=NOW, ttl_ms=60_000)
        await store.forget_node("node-a")
        await store.forget_node("node-a")  # idempotent
        live = await store.live_nodes(now_ms=NOW)
    assert live == []


async def test_expired_heartbeats_are_dropped_by_the_next_heartbeat(store: Store) -> None:
    with trio.fail_after(CAP_S):
        await store.heartbeat_node("crashed", shared_bus=False, now_ms=NOW, ttl_ms=1_000)
        await store.heartbeat_node("alive", shared_bus=False, now_ms=NOW + 5_000, ttl_ms=1_000)
        everything = await store.live_nodes(now_ms=0)  # a time before both: would list every row kept
    assert [n.node_id for n in everything] == ["alive"]
