"""The watchdog: a session the client has gone silent on is closed (PROTOCOL.md §4.5).

The client pings whenever it has sent nothing for ``heartbeat_ms``; the server closes a session it has
heard nothing from for 2 × ``heartbeat_ms`` with ``heartbeat_timeout`` (1001). Liveness is judged by the
time since the last frame received (ASGI carries no WebSocket pongs). While the reader does not read on
purpose (``max_inflight`` publishes unacknowledged, or shutdown) silence is not the client's fault: the
clock restarts when reading resumes.

Other ends (replacement, revocation, shutdown) reach the session through :meth:`Session.close` from the
bus or the gateway, which cancels this task with the rest of the work.
"""

from __future__ import annotations

from typing import Protocol

import trio

from relay.errors import HeartbeatTimeout

__all__ = ["watch_heartbeat"]


class _Watched(Protocol):
    last_heard: float
    reading_paused: bool

    def close(self, error: BaseException | None) -> None: ...


async def watch_heartbeat(session: _Watched, *, heartbeat_ms: int) -> None:
    """Close ``session`` with ``heartbeat_timeout`` once it has been silent for 2 × ``heartbeat_ms``.

    Runs until then or until cancelled. The close comes exactly at the bound under a mock clock, and
    never later than 3 × ``heartbeat_ms`` after the last frame.
    """
    limit = 2 * heartbeat_ms / 1000
    while True:
        if session.reading_paused:
            await trio.sleep(limit / 2)
            continue
        deadline = session.last_heard + limit
        if trio.current_time() >= deadline:
            session.close(HeartbeatTimeout())
            return
        await trio.sleep_until(deadline)
