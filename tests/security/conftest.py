"""Security tests: hostile input, isolation between users, and the handshake, against a live server.

The server runs in this process, on loopback, with real sockets and the real clock (production mode,
SQLite in a temporary data dir); every wait is capped with ``trio.fail_after``. Hypothesis runs with
fixed settings (``derandomize=True``, no database) so that every run tries the same cases. The number of
cases each test ran is printed at the end of the run.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from security_support import CASES, LiveServer, secure_server

#: Where the data dirs go when the system has memory-backed storage.
MEMORY = Path("/dev/shm")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """The server's data dir: in memory when the system has one, since what these tests measure is not
    the disk, and SQLite's fsync of every commit (synchronous=FULL) would be most of their time."""
    with tempfile.TemporaryDirectory(dir=MEMORY if MEMORY.is_dir() else tmp_path) as directory:
        yield Path(directory) / "data"


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[LiveServer]:
    async with secure_server(data_dir) as live:
        yield live


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if CASES:
        terminalreporter.section("security cases")
        for name, count in sorted(CASES.items()):
            terminalreporter.write_line(f"{count:>7}  {name}")
        terminalreporter.write_line(f"{sum(CASES.values()):>7}  in all")
