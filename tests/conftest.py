"""Fixtures shared by the whole suite.

Services: a test that needs PostgreSQL or Redis asks for ``postgres_url`` or ``redis_url``. The URLs
come from ``RELAY_TEST_POSTGRES_URL`` and ``RELAY_TEST_REDIS_URL``, which ``bash scripts/test`` sets
after starting throwaway servers. When one is missing the test FAILS, in CI and everywhere else: a
suite that skips what it cannot reach would report success without having tested the store or the bus.
Run ``bash scripts/test``, or set the variable to a server of your own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest


def _service_url(variable: str, what: str) -> str:
    url = os.environ.get(variable, "")
    if not url:
        pytest.fail(
            f"{variable} is not set: this test needs a real {what}. Run the suite with `bash scripts/test`, "
            f"which starts one, or set {variable} to a {what} URL.",
            pytrace=False,
        )
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a PostgreSQL database the tests may use freely (fails the test when unset)."""
    return _service_url("RELAY_TEST_POSTGRES_URL", "PostgreSQL")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a Redis server the tests may use freely (fails the test when unset)."""
    return _service_url("RELAY_TEST_REDIS_URL", "Redis")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests that call ``relay.cli.main``, which configures the root logger of this process."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
