"""Rate limits of the HTTP API (PROTOCOL.md §6: ``429`` with ``Retry-After``).

Two limits, chosen so that a legitimate client never meets them and a hostile one is slowed before it
costs the database anything:

- **per client address**, on every enrolment and every signed request before its device is looked up
  (:data:`ADDRESS_LIMIT`): bounds what one address can make the server do with tokens or signatures it
  does not hold. The address is the TCP peer (the ASGI scope's ``client``); ``X-Forwarded-For`` is not
  trusted, so behind a reverse proxy every client shares the proxy's address: let the proxy limit per
  client, or give relay a higher limit;
- **per device**, on every signed request whose signature verified (:data:`DEVICE_LIMIT`), before its
  nonce is written.

With Redis configured both are shared by every node (:class:`relay.ops.ratelimit_redis.RedisLimiter`);
otherwise they live in this process. Refusals raise :class:`~relay.errors.RateLimited`, which the error
edge answers ``429`` with ``Retry-After``, and count in ``relay_rate_limited_total``.
"""

from __future__ import annotations

import attrs
import trio
from quart import request

from relay.errors import RateLimited
from relay.ops.metrics import Metrics
from relay.ops.ratelimit import Limiter, LocalLimiter, RateLimit

__all__ = ["ADDRESS_LIMIT", "DEVICE_LIMIT", "HttpLimits", "client_address"]

#: Enrolments and signed requests per client address: 20 per second, bursts of 100.
ADDRESS_LIMIT = RateLimit(rate=20, burst=100)
#: Signed requests per device: 10 per second, bursts of 50.
DEVICE_LIMIT = RateLimit(rate=10, burst=50)
#: How long a shared limit may take to answer before the request is let through (seconds).
LIMIT_TIMEOUT_S = 0.5


def client_address() -> str:
    """The TCP peer of the current request (``unknown`` when the server does not say)."""
    client = request.scope.get("client")
    if isinstance(client, list | tuple) and client:
        return str(client[0])
    return "unknown"


@attrs.define(eq=False)
class HttpLimits:
    address: Limiter = attrs.field(factory=lambda: LocalLimiter(ADDRESS_LIMIT))
    device: Limiter = attrs.field(factory=lambda: LocalLimiter(DEVICE_LIMIT))

    async def check_address(self, metrics: Metrics) -> None:
        await self._check(self.address, client_address(), "http_address", metrics)

    async def check_device(self, device_id: str, metrics: Metrics) -> None:
        await self._check(self.device, device_id, "http_device", metrics)

    async def _check(self, limiter: Limiter, key: str, name: str, metrics: Metrics) -> None:
        try:
            with trio.move_on_after(LIMIT_TIMEOUT_S):
                await limiter.check(key, trio.current_time())
        except RateLimited:
            metrics.rate_limited.labels(name).inc()
            raise
