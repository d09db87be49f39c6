"""The HTTP API in-process: the whole app through Quart's test client, on a MemoryStore, in virtual time.

Every test here runs under ``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's
``autojump_clock``), with the app's clock driven by trio's (:class:`relay.clock.TrioClock`), so token
expiry is tested by sleeping virtual seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from http_support import Relay, open_relay

from relay.config import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
async def relay(settings: Settings, autojump_clock: trio.testing.MockClock) -> AsyncIterator[Relay]:
    """The app with default settings, started, in virtual time.

    pytest-trio runs a test under a clock only when the test itself takes the clock fixture: every
    test using this fixture must also take ``autojump_clock``.
    """
    if trio.lowlevel.current_clock() is not autojump_clock:
        raise RuntimeError("a test using the `relay` fixture must take `autojump_clock` too")
    async with open_relay(settings) as started:
        yield started
