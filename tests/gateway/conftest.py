"""Fixtures of the gateway tests: a gateway over a ``MemoryStore`` and the local bus, on a clock driven by
trio's (tests take ``autojump_clock`` so that every timer runs in virtual time).

Tracing: the ``spans`` fixture lives in tests/conftest.py (one tracer provider for the whole session).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from gateway_harness import NOW, Relay, RelayFactory

from relay.bus.base import Bus
from relay.bus.local import LocalBus
from relay.clock import TrioClock
from relay.config import Settings
from relay.crypto import SigningKey
from relay.gateway import Admission, Gateway
from relay.ops.metrics import Metrics
from relay.ops.ratelimit import Limiter
from relay.store.base import Store
from relay.store.memory import MemoryStore


@pytest.fixture
def make_relay(nursery: trio.Nursery) -> RelayFactory:
    """``await make_relay(store=..., bus=..., admission=..., **settings)``: a gateway with these settings.

    ``store`` wraps ``memory`` (a ``FaultyStore``) when a test injects failures; ``memory`` is where the
    helpers enrol users and devices. ``admission``, ``metrics``, ``handshake_limiter`` and ``tracing``
    go to the gateway as they are (``None``: its defaults).
    """

    async def make(
        *,
        store: Store | None = None,
        memory: MemoryStore | None = None,
        bus: Bus | None = None,
        admission: Admission | None = None,
        metrics: Metrics | None = None,
        handshake_limiter: Limiter | None = None,
        tracing: bool | None = None,
        **settings: Any,
    ) -> Relay:
        base = memory if memory is not None else MemoryStore()
        config = Settings(**settings)
        server_key = SigningKey.generate()
        clock = TrioClock.starting_at(NOW)
        bus = bus if bus is not None else LocalBus()
        used: Store = store if store is not None else base
        gateway = Gateway(
            settings=config,
            store=used,
            bus=bus,
            clock=clock,
            server_key=server_key,
            token_secret=base.secrets.token_secret,
            admission=admission,
            metrics=metrics,
            handshake_limiter=handshake_limiter,
            tracing=tracing,
        )
        return Relay(
            nursery=nursery,
            settings=config,
            store=used,
            memory=base,
            bus=bus,
            clock=clock,
            server_key=server_key,
            gateway=gateway,
        )

    return make


@pytest.fixture
async def relay(make_relay: RelayFactory) -> Relay:
    return await make_relay()
