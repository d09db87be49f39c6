"""Clocks: the system's, one driven by trio's (virtual under MockClock), and a manual one."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing

from relay.clock import Clock, ManualClock, SystemClock, TrioClock

EPOCH_MS = 1_764_000_000_000


def test_every_clock_satisfies_the_protocol() -> None:
    for clock in (SystemClock(), TrioClock(), ManualClock()):
        assert isinstance(clock, Clock)


def test_system_clock_reads_the_wall_clock_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    now = SystemClock().now_ms()
    after = time.time_ns() // 1_000_000
    assert before <= now <= after


def test_system_clock_monotonic_never_goes_back() -> None:
    clock = SystemClock()
    first = clock.monotonic()
    assert clock.monotonic() >= first


async def test_trio_clock_advances_exactly_with_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    clock = TrioClock.starting_at(EPOCH_MS)
    start = clock.monotonic()
    assert clock.now_ms() == EPOCH_MS
    await trio.sleep(10)  # instant: the mock clock jumps
    assert clock.now_ms() == EPOCH_MS + 10_000
    assert clock.monotonic() == pytest.approx(start + 10)
    for _ in range(3):
        await trio.sleep(0.1)
    assert clock.now_ms() == EPOCH_MS + 10_300  # no float drift: 0.1 + 0.1 + 0.1 reads 300 ms


async def test_trio_clock_follows_a_deadline_to_the_millisecond(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = TrioClock.starting_at(EPOCH_MS)
    with trio.move_on_after(2.5) as scope:
        await trio.sleep_forever()
    assert scope.cancelled_caught
    assert clock.now_ms() == EPOCH_MS + 2_500


async def test_trio_clock_sees_a_manual_jump_of_the_mock_clock(mock_clock: trio.testing.MockClock) -> None:
    clock = TrioClock(offset_ms=EPOCH_MS)
    before = clock.now_ms()
    mock_clock.jump(3600)
    assert clock.now_ms() - before == 3_600_000


async def test_trio_clock_without_an_offset_anchors_to_the_system_wall_clock() -> None:
    clock = TrioClock()
    before = time.time_ns() // 1_000_000
    now = clock.now_ms()
    after = time.time_ns() // 1_000_000
    assert before - 1 <= now <= after + 1
    assert clock.offset_ms is not None


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(wall_ms=EPOCH_MS)
    assert clock.now_ms() == EPOCH_MS
    assert clock.monotonic() == 0.0
    clock.advance(1500)
    assert clock.now_ms() == EPOCH_MS + 1500
    assert clock.monotonic() == pytest.approx(1.5)
    clock.set(EPOCH_MS - 60_000)  # a wall-clock step backwards, as NTP may do
    assert clock.now_ms() == EPOCH_MS - 60_000
    assert clock.monotonic() == pytest.approx(1.5)


def test_manual_clock_refuses_to_advance_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        ManualClock().advance(-1)
