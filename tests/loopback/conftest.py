"""Loopback tests: the real app behind Hypercorn on a free port, real clients (``relay.client``, on
trio-websocket and httpx) over real sockets, the real SQLite store in a temporary data dir.

Real clock: every test caps itself with ``trio.fail_after``; nothing here waits for a server timer
(those rules are tested in-process under MockClock, in tests/gateway).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from loopback_support import LiveServer, running_server


@pytest.fixture(params=["fast", "stock"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LiveServer]:
    """A live relay; every test using it runs twice: with the send fast path on, and off."""
    async with running_server(tmp_path / "data", fast_send=request.param == "fast") as live:
        yield live
