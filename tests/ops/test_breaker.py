"""Circuit breakers (relay.ops.breaker) in virtual time: open after failures, refuse fast, one trial,
close on success."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from relay.errors import NotFound, StoreUnavailable, Unavailable
from relay.ops.breaker import BreakerState, CircuitBreaker, guard


class Flaky:
    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    async def read(self, value: int) -> int:
        self.calls += 1
        await trio.sleep(0.01)
        if self.down:
            raise StoreUnavailable(detail="connection refused")
        return value

    async def missing(self) -> None:
        self.calls += 1
        raise NotFound()

    def name(self) -> str:
        return "flaky"


async def test_a_breaker_opens_after_consecutive_failures_and_then_refuses_without_calling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(
        "store", failure_threshold=3, reset_timeout_s=2.0, on_change=lambda _, s: changes.append(s)
    )
    inner = Flaky()
    store = guard(inner, breaker)
    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            await store.read(1)
    assert (breaker.state, inner.calls) == (BreakerState.OPEN, 3)
    started = trio.current_time()
    with pytest.raises(StoreUnavailable) as refused:
        await store.read(1)
    assert trio.current_time() == started  # at once: no call, no wait
    assert inner.calls == 3
    assert 1900 <= refused.value.fields["retry_after_ms"] <= 2000
    assert changes == [BreakerState.OPEN]


async def test_after_the_timeout_one_trial_goes_through_and_a_success_closes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker("store", failure_threshold=1, reset_timeout_s=1.0)
    inner = Flaky()
    store = guard(inner, breaker)
    with pytest.raises(StoreUnavailable):
        await store.read(1)
    await trio.sleep(1.0)
    inner.down = False
    results: list[object] = []

    async def call() -> None:
        try:
            results.append(await store.read(7))
        except Unavailable as exc:
            results.append(exc.code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)  # the trial
        await trio.lowlevel.checkpoint()
        nursery.start_soon(call)  # refused while the trial runs
    assert sorted(map(str, results)) == ["7", "unavailable"]
    assert breaker.state is BreakerState.CLOSED
    assert await store.read(8) == 8


async def test_a_failed_trial_opens_it_again(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("bus", failure_threshold=5, reset_timeout_s=1.0)
    inner = Flaky()
    store = guard(inner, breaker)
    for _ in range(5):
        with pytest.raises(Unavailable):
            await store.read(1)
    await trio.sleep(1.0)
    with pytest.raises(Unavailable):
        await store.read(1)  # the trial fails
    assert breaker.state is BreakerState.OPEN
    assert inner.calls == 6


async def test_refusals_and_cancellations_are_not_failures(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("store", failure_threshold=1)
    inner = Flaky()
    store = guard(inner, breaker)
    with pytest.raises(NotFound):
        await store.missing()
    with trio.move_on_after(0.001):
        await store.read(1)
    assert breaker.state is BreakerState.CLOSED
    assert store.name() == "flaky"  # plain methods pass through
