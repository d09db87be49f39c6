"""Where relay's time comes from.

Every wall-clock reading of the server goes through a :class:`Clock`, so tests can drive time.
Wall time is an ``int`` of milliseconds since the Unix epoch, UTC (PROTOCOL.md §1); monotonic time is
a ``float`` of seconds with an arbitrary origin, only good for measuring intervals.

- :class:`SystemClock` reads the operating system: the one the server runs with.
- :class:`TrioClock` derives both readings from ``trio.current_time()``: under
  ``trio.testing.MockClock(autojump_threshold=0)`` wall time then advances exactly with trio's virtual
  time, so timeouts, TTLs and token expiry are tested instantly and deterministically.
- :class:`ManualClock` only moves when told to: for pure code tested outside trio.

Deadlines inside trio code are cancel scopes on trio's own clock (``trio.move_on_after``); a
:class:`Clock` is for the times the protocol talks about (``ts``, ``server_time``, ``expires_at``).
"""

from __future__ import annotations

import math
import time
from typing import Protocol, runtime_checkable

import attrs
import trio

__all__ = ["Clock", "ManualClock", "SystemClock", "TrioClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of wall time and monotonic time."""

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch, UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...


@attrs.frozen
class SystemClock:
    """The operating system's clocks."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()


def _trio_ms() -> int:
    # trio's clock is a float of seconds; a tiny epsilon keeps sums such as 0.1 + 0.2 from landing a
    # hair below a whole millisecond and reading one millisecond early.
    return math.floor(trio.current_time() * 1000 + 1e-6)


@attrs.define(eq=False)
class TrioClock:
    """Wall time = a fixed epoch offset + ``trio.current_time()``.

    ``TrioClock()`` anchors itself to the system's wall time on its first reading, which must happen
    inside ``trio.run`` (so it may be constructed anywhere). ``TrioClock.starting_at(ms)``, called
    inside ``trio.run``, makes the current reading exactly ``ms``. From then on ``now_ms()`` advances
    exactly as trio's clock does, including a ``MockClock``'s virtual jumps.
    """

    offset_ms: int | None = None

    @classmethod
    def starting_at(cls, now_ms: int) -> TrioClock:
        """A clock that reads ``now_ms`` right now. Call inside ``trio.run``."""
        return cls(offset_ms=now_ms - _trio_ms())

    def now_ms(self) -> int:
        if self.offset_ms is None:
            self.offset_ms = time.time_ns() // 1_000_000 - _trio_ms()
        return self.offset_ms + _trio_ms()

    def monotonic(self) -> float:
        return trio.current_time()


@attrs.define(eq=False)
class ManualClock:
    """A clock that stands still until :meth:`advance` or :meth:`set` moves it."""

    wall_ms: int = 1_700_000_000_000
    monotonic_s: float = 0.0

    def now_ms(self) -> int:
        return self.wall_ms

    def monotonic(self) -> float:
        return self.monotonic_s

    def advance(self, ms: int) -> None:
        """Move both readings forward by ``ms`` milliseconds (``ms >= 0``)."""
        if ms < 0:
            raise ValueError("a clock does not go backwards; use set() to model a wall-clock step")
        self.wall_ms += ms
        self.monotonic_s += ms / 1000

    def set(self, wall_ms: int) -> None:
        """Step the wall time to ``wall_ms`` (either way, like an NTP step); monotonic time is unchanged."""
        self.wall_ms = wall_ms
