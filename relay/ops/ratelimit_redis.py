"""Rate limits shared by every node, in Redis (:data:`relay.ops.ratelimit.GCRA_LUA`).

One atomic script per check, on Redis's clock, through the bus's command pool
(:class:`relay.bus.redis_commands.Commands`). When Redis cannot answer, the check falls back to a
:class:`~relay.ops.ratelimit.LocalLimiter` of this node (logged once per outage): a limit that is
briefly per node is better than refusing every handshake or HTTP request while Redis is down.
"""

from __future__ import annotations

import logging

import attrs
import redis

from relay.bus.redis_commands import Commands
from relay.errors import BusUnavailable, RateLimited
from relay.ops.ratelimit import GCRA_LUA, GcraScript, LocalLimiter, RateLimit

__all__ = ["RedisLimiter"]

log = logging.getLogger("relay.ops")


@attrs.define(eq=False)
class RedisLimiter:
    """A :class:`~relay.ops.ratelimit.Limiter` over Redis; ``name`` keeps the keys of limits apart."""

    commands: Commands
    name: str
    limit: RateLimit
    prefix: str = "relay:"
    _script: GcraScript = attrs.field(init=False)
    _fallback: LocalLimiter = attrs.field(init=False)
    _degraded: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self._script = GcraScript(self.limit)
        self._fallback = LocalLimiter(self.limit)

    async def check(self, key: str, now: float) -> None:
        redis_key = f"{self.prefix}limit:{self.name}:{key}"
        interval, tolerance = self._script.args()

        def run(client: redis.Redis) -> int:
            result = client.eval(GCRA_LUA, 1, redis_key, interval, tolerance)
            return int(result)

        try:
            wait_us = await self.commands.call("rate limit", run)
        except BusUnavailable as exc:
            if not self._degraded:
                log.warning("rate limit %s falls back to this node's own buckets: %s", self.name, exc.detail)
                self._degraded = True
            self._fallback.check_nowait(key, now)
            return
        if self._degraded:
            log.info("rate limit %s is shared in Redis again", self.name)
            self._degraded = False
        if wait_us:
            raise RateLimited(retry_after_ms=GcraScript.retry_after_ms(wait_us))
