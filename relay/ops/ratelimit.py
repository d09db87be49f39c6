"""Rate limits (PROTOCOL.md §4.2 step 3, §6 ``429``): token buckets, in this process or shared in Redis.

Which limit lives where, and why:

- **Publishes, per device** (``publish_rate`` events per second, bursts of ``publish_burst``): a device
  has at most one live session (the newest wins, §4.1), so the node holding that session sees every
  publish of the device and a bucket in this process is exact. It costs no round trip per message.
- **Handshakes and enrolments, per client address**, and **signed HTTP requests, per device**, can
  reach any node, so with Redis configured they are limited by :class:`RedisLimiter` (one atomic GCRA
  script per request; these are not on the per-message path). Without Redis there is one node and
  :class:`LocalLimiter` is exact again.

:class:`TokenBucket` is pure: time is passed in (seconds of a monotonic clock; under test, trio's
:class:`~trio.testing.MockClock`), so refill is tested deterministically. A refusal carries
``retry_after_ms``: the time until the request would be allowed, rounded up.
"""

from __future__ import annotations

import collections
import math
from typing import Protocol

import attrs

from relay.errors import RateLimited

__all__ = [
    "MAX_TRACKED_KEYS",
    "GcraScript",
    "Limiter",
    "LocalLimiter",
    "RateLimit",
    "TokenBucket",
]

#: Keys (devices, addresses) a :class:`LocalLimiter` keeps buckets for; beyond it the least recently
#: used bucket is forgotten. A forgotten bucket starts full again, so eviction can only be lenient.
MAX_TRACKED_KEYS = 100_000


@attrs.frozen
class RateLimit:
    """``rate`` requests per second on average, in bursts of at most ``burst``."""

    rate: float
    burst: int

    def __attrs_post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")


@attrs.define
class TokenBucket:
    """A bucket of ``limit.burst`` tokens refilled at ``limit.rate`` per second; starts full."""

    limit: RateLimit
    tokens: float = attrs.field(default=-1.0)
    updated: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = float(self.limit.burst)

    def take(self, now: float, cost: float = 1.0) -> int:
        """Take ``cost`` tokens at ``now``; 0 when allowed, else the milliseconds to wait (nothing taken)."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(self.limit.burst), self.tokens + elapsed * self.limit.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0
        return max(1, math.ceil((cost - self.tokens) / self.limit.rate * 1000))


class Limiter(Protocol):
    """A rate limit keyed by device or address."""

    async def check(self, key: str, now: float) -> None:
        """Return when ``key`` may go on; raise :class:`RateLimited` (with ``retry_after_ms``) if not."""
        ...


@attrs.define(eq=False)
class LocalLimiter:
    """Buckets in this process, one per key, the least recently used forgotten past ``max_keys``."""

    limit: RateLimit
    max_keys: int = MAX_TRACKED_KEYS
    _buckets: collections.OrderedDict[str, TokenBucket] = attrs.field(
        factory=collections.OrderedDict, init=False
    )

    def check_nowait(self, key: str, now: float) -> None:
        """As :meth:`check`, without a checkpoint (for the publish path, which must not yield here)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.limit, updated=now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        wait_ms = bucket.take(now)
        if wait_ms:
            raise RateLimited(retry_after_ms=wait_ms)

    async def check(self, key: str, now: float) -> None:
        self.check_nowait(key, now)

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)


#: GCRA (the generic cell rate algorithm) as one atomic Redis script, on Redis's own clock so that
#: every node agrees. KEYS[1]: the key; ARGV: emission interval (µs per request), burst tolerance (µs).
#: Returns 0 when allowed, else the microseconds to wait. The key expires once it no longer matters.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then
  return allow_at - now
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
"""


@attrs.frozen
class GcraScript:
    """The arguments of :data:`GCRA_LUA` for a limit: ``burst`` at once, then ``rate`` per second."""

    limit: RateLimit

    @property
    def interval_us(self) -> int:
        return max(1, round(1_000_000 / self.limit.rate))

    @property
    def tolerance_us(self) -> int:
        return self.interval_us * (self.limit.burst - 1)

    def args(self) -> tuple[int, int]:
        return self.interval_us, self.tolerance_us

    @staticmethod
    def retry_after_ms(wait_us: int) -> int:
        return max(1, math.ceil(wait_us / 1000))
