"""The node registry's SQL, for SQLite and PostgreSQL alike (their dialects agree on these statements
once the placeholders are written their way). Helpers take a cursor-like connection (``execute``)."""

from __future__ import annotations

from typing import Any, Protocol

from relay.store.base import NodeRecord

__all__ = ["forget_node_txn", "heartbeat_node_txn", "live_nodes_txn", "purge_nodes_txn"]


class Executes(Protocol):
    def execute(self, sql: Any, params: Any = ...) -> Any: ...


def _sql(text: str, style: str) -> str:
    return text.replace("?", "%s") if style == "pyformat" else text


def heartbeat_node_txn(
    conn: Executes, *, style: str, node_id: str, shared_bus: bool, now_ms: int, expires_at: int
) -> None:
    """Insert or renew ``node_id``'s heartbeat, and forget the heartbeats that expired (a few rows)."""
    purge_nodes_txn(conn, style=style, now_ms=now_ms)
    conn.execute(
        _sql(
            "INSERT INTO nodes (node_id, shared_bus, expires_at) VALUES (?, ?, ?) ON CONFLICT (node_id)"
            " DO UPDATE SET shared_bus = excluded.shared_bus, expires_at = excluded.expires_at",
            style,
        ),
        (node_id, shared_bus, expires_at),
    )


def live_nodes_txn(conn: Executes, *, style: str, now_ms: int) -> list[NodeRecord]:
    rows = conn.execute(
        _sql(
            "SELECT node_id, shared_bus, expires_at FROM nodes WHERE expires_at >= ? ORDER BY node_id", style
        ),
        (now_ms,),
    ).fetchall()
    return [NodeRecord(node_id=str(n), shared_bus=bool(b), expires_at=int(e)) for n, b, e in rows]


def forget_node_txn(conn: Executes, *, style: str, node_id: str) -> None:
    conn.execute(_sql("DELETE FROM nodes WHERE node_id = ?", style), (node_id,))


def purge_nodes_txn(conn: Executes, *, style: str, now_ms: int) -> int:
    done = conn.execute(_sql("DELETE FROM nodes WHERE expires_at < ?", style), (now_ms,))
    return int(done.rowcount or 0)
