"""The node registry of the :class:`~relay.store.memory.MemoryStore` (a mixin: heartbeats in a dict)."""

from __future__ import annotations

import trio

from relay.store.base import NodeRecord

__all__ = ["MemoryNodes"]


class MemoryNodes:
    """``heartbeat_node``, ``live_nodes`` and ``forget_node`` of the Store protocol, in memory."""

    _nodes: dict[str, NodeRecord]

    def _node_table(self) -> dict[str, NodeRecord]:
        # Made on first use: the store is an attrs class whose generated __init__ knows nothing of it.
        try:
            return self._nodes
        except AttributeError:
            self._nodes = {}
            return self._nodes

    async def heartbeat_node(self, node_id: str, *, shared_bus: bool, now_ms: int, ttl_ms: int) -> None:
        await trio.lowlevel.checkpoint()
        table = self._node_table()
        for expired in [n for n, r in table.items() if r.expires_at < now_ms]:
            del table[expired]
        table[node_id] = NodeRecord(node_id=node_id, shared_bus=shared_bus, expires_at=now_ms + ttl_ms)

    async def live_nodes(self, *, now_ms: int) -> list[NodeRecord]:
        await trio.lowlevel.checkpoint()
        return [r for _, r in sorted(self._node_table().items()) if r.expires_at >= now_ms]

    async def forget_node(self, node_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self._node_table().pop(node_id, None)
