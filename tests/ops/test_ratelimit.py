"""Token buckets and the shared GCRA limit (relay.ops.ratelimit): refill in virtual time, and across
"nodes" in a real Redis."""

from __future__ import annotations

import uuid

import pytest
import trio
import trio.testing

from relay.bus.redis_commands import Commands
from relay.errors import RateLimited
from relay.ops.ratelimit import LocalLimiter, RateLimit, TokenBucket
from relay.ops.ratelimit_redis import RedisLimiter

CAP_S = 15


def test_a_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(RateLimit(rate=10, burst=3))
    assert [bucket.take(0.0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(0.0) == 100  # one token per 100 ms
    assert bucket.take(0.05) == 50
    assert bucket.take(0.1) == 0
    assert bucket.take(10.0) == 0
    assert bucket.tokens == pytest.approx(2.0)  # refilled to the burst, never beyond, then one taken


def test_a_refused_take_takes_nothing() -> None:
    bucket = TokenBucket(RateLimit(rate=1, burst=1))
    assert bucket.take(0.0) == 0
    for _ in range(5):
        assert bucket.take(0.5) == 500
    assert bucket.take(1.0) == 0


def test_a_rate_limit_needs_a_positive_rate_and_burst() -> None:
    for rate, burst in ((0, 1), (1, 0), (-1, 5)):
        with pytest.raises(ValueError, match="rate limit"):
            RateLimit(rate=rate, burst=burst)


async def test_local_limits_refill_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    limiter = LocalLimiter(RateLimit(rate=200, burst=400))
    for _ in range(400):
        await limiter.check("device", trio.current_time())
    with pytest.raises(RateLimited) as refused:
        await limiter.check("device", trio.current_time())
    assert refused.value.fields["retry_after_ms"] == 5
    await limiter.check("other device", trio.current_time())  # keys are independent
    await trio.sleep(0.005)
    await limiter.check("device", trio.current_time())
    await trio.sleep(2)  # 400 tokens back
    for _ in range(400):
        limiter.check_nowait("device", trio.current_time())


def test_a_local_limiter_forgets_the_least_recently_used_keys() -> None:
    limiter = LocalLimiter(RateLimit(rate=1, burst=1), max_keys=3)
    for key in "abcd":
        limiter.check_nowait(key, 0.0)
    assert len(limiter) == 3
    limiter.check_nowait("a", 0.0)  # "a" was forgotten, so it starts full again
    with pytest.raises(RateLimited):
        limiter.check_nowait("d", 0.0)


@pytest.mark.redis
async def test_a_limit_shared_in_redis_holds_across_nodes(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    limit = RateLimit(rate=1, burst=3)
    node_a = RedisLimiter(
        Commands.from_url(redis_url, client_name="test-a"), "handshake", limit, prefix=prefix
    )
    node_b = RedisLimiter(
        Commands.from_url(redis_url, client_name="test-b"), "handshake", limit, prefix=prefix
    )
    with trio.fail_after(CAP_S):
        await node_a.check("10.0.0.1", 0.0)
        await node_b.check("10.0.0.1", 0.0)
        await node_a.check("10.0.0.1", 0.0)
        with pytest.raises(RateLimited) as refused:
            await node_b.check("10.0.0.1", 0.0)  # the burst of 3 is shared, whichever node is asked
        await node_b.check("10.0.0.2", 0.0)
    assert 1 <= refused.value.fields["retry_after_ms"] <= 1000


@pytest.mark.redis
async def test_without_redis_the_limit_falls_back_to_this_node(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RedisLimiter(
        Commands.from_url("redis://127.0.0.1:9/0", client_name="test"), "enroll", RateLimit(rate=1, burst=2)
    )
    with trio.fail_after(CAP_S):
        await limiter.check("10.0.0.1", 0.0)
        await limiter.check("10.0.0.1", 0.0)
        with pytest.raises(RateLimited):
            await limiter.check("10.0.0.1", 0.0)
    assert sum("falls back" in r.message for r in caplog.records) == 1
