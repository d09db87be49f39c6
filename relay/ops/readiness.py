"""Readiness (``GET /readyz``, PROTOCOL.md §6): may this node be sent traffic?

Ready when, all at once:

- **database**: the store answers a read (the revocation log's head: the same cheap read every node
  already polls) within :data:`CHECK_TIMEOUT_S`;
- **bus**: a message published on the bus comes back to this node within :data:`CHECK_TIMEOUT_S` (the
  loop-back canary: a node whose fan-out is silently broken is not ready);
- **draining**: the node is not shutting down;
- **cluster**: the node does not share its database with another live node while its own bus is the
  in-process one (two such nodes would each fan out only locally and silently lose live events).

The answer is computed at most every :data:`CACHE_S`, so that several load balancers polling every
second cost one database read and one canary between them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import trio

from relay.bus.base import Bus
from relay.errors import RelayError
from relay.store.base import Store

__all__ = ["CACHE_S", "CHECK_TIMEOUT_S", "Readiness", "Report"]

#: How long each check may take before it counts as failed (seconds).
CHECK_TIMEOUT_S = 1.0
#: How long an answer is reused (seconds).
CACHE_S = 0.5


@attrs.frozen
class Report:
    ready: bool
    components: dict[str, str]


async def _within(check: Callable[[], Awaitable[object]]) -> str:
    try:
        with trio.fail_after(CHECK_TIMEOUT_S):
            await check()
    except trio.TooSlowError:
        return "timeout"
    except RelayError as exc:
        return exc.code
    return "ok"


@attrs.define(eq=False)
class Readiness:
    store: Store
    bus: Bus
    draining: Callable[[], bool]
    #: None when this node cannot tell (or it has a shared bus): then the cluster check passes.
    lonely_local_bus: Callable[[], Awaitable[bool]] | None = None
    _last: Report | None = attrs.field(default=None, init=False)
    _at: float = attrs.field(default=-1e9, init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    async def report(self) -> Report:
        async with self._lock:
            now = trio.current_time()
            if self._last is not None and now - self._at < CACHE_S and not self.draining():
                return self._last
            components = {
                "database": await _within(self.store.latest_revocation),
                "bus": await _within(self.bus.canary),
                "draining": "yes" if self.draining() else "no",
                "cluster": await self._cluster(),
            }
            ready = components["database"] == components["bus"] == components["cluster"] == "ok"
            self._last = Report(ready=ready and components["draining"] == "no", components=components)
            self._at = now
            return self._last

    async def _cluster(self) -> str:
        if self.lonely_local_bus is None:
            return "ok"
        try:
            with trio.fail_after(CHECK_TIMEOUT_S):
                shared = await self.lonely_local_bus()
        except (trio.TooSlowError, RelayError):
            return "unknown"
        return "shared_database_without_shared_bus" if shared else "ok"
