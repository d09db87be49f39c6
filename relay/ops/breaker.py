"""Circuit breakers around the store and the bus (``unavailable`` fast instead of a hang).

A :class:`CircuitBreaker` counts consecutive failures of calls to one dependency. After
``failure_threshold`` of them it *opens*: for ``reset_timeout_s`` every call is refused at once with
:class:`~relay.errors.Unavailable` (``retry_after_ms`` = the time left), without touching the
dependency. Then it lets one trial call through (*half-open*): a success closes it, a failure opens it
again. So when PostgreSQL or Redis is down, publishes answer ``unavailable`` quickly, and everything
recovers by itself when the service is back.

:func:`guard` wraps any object whose async methods may raise ``Unavailable`` (a store, a bus):
only :class:`~relay.errors.Unavailable` counts as a failure (a refused request such as
``seq_conflict`` is the dependency working). Time comes from trio's clock, so tests drive it with
:class:`trio.testing.MockClock`.
"""

from __future__ import annotations

import enum
import functools
import inspect
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import attrs
import trio

from relay.errors import BusUnavailable, StoreUnavailable, Unavailable

__all__ = ["BreakerState", "CircuitBreaker", "guard"]

T = TypeVar("T")

#: ``retry_after_ms`` while the one trial call of a half-open breaker is under way.
HALF_OPEN_RETRY_MS = 100
_UNAVAILABLE: dict[str, type[Unavailable]] = {"store": StoreUnavailable, "bus": BusUnavailable}


class BreakerState(enum.IntEnum):
    """Also the value of the ``relay_breaker_state`` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@attrs.define(eq=False)
class CircuitBreaker:
    name: str
    failure_threshold: int = 5
    reset_timeout_s: float = 2.0
    #: Called with the new state whenever it changes (metrics, logs).
    on_change: Callable[[str, BreakerState], None] | None = None
    #: Called with (name, operation) for every call that failed ``unavailable`` (metrics).
    on_failure: Callable[[str, str], None] | None = None
    state: BreakerState = attrs.field(default=BreakerState.CLOSED, init=False)
    failures: int = attrs.field(default=0, init=False)
    opened_at: float = attrs.field(default=0.0, init=False)
    _trial: bool = attrs.field(default=False, init=False)

    def _set(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            if self.on_change is not None:
                self.on_change(self.name, state)

    def before_call(self) -> bool:
        """Raise ``Unavailable`` when open; True when this call is the half-open trial."""
        if self.state is BreakerState.CLOSED:
            return False
        now = trio.current_time()
        left = self.opened_at + self.reset_timeout_s - now
        if self.state is BreakerState.OPEN and left <= 0:
            self._set(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN and not self._trial:
            self._trial = True
            return True
        raise self._refusal(max(left, 0.0))

    def _refusal(self, left_s: float) -> Unavailable:
        retry = max(1, math.ceil(left_s * 1000)) if left_s > 0 else HALF_OPEN_RETRY_MS
        kind = _UNAVAILABLE.get(self.name, Unavailable)
        return kind(retry_after_ms=retry, detail=f"the {self.name} circuit is open")

    def succeeded(self, trial: bool) -> None:
        self.failures = 0
        if trial:
            self._trial = False
        self._set(BreakerState.CLOSED)

    def failed(self, trial: bool) -> None:
        if trial:
            self._trial = False
        self.failures += 1
        if trial or self.failures >= self.failure_threshold:
            self.opened_at = trio.current_time()
            self._set(BreakerState.OPEN)

    def abandoned(self, trial: bool) -> None:
        """The call was cancelled: it tells nothing about the dependency."""
        if trial:
            self._trial = False

    async def call(self, fn: Callable[[], Awaitable[T]], *, operation: str = "") -> T:
        trial = self.before_call()
        try:
            result = await fn()
        except Unavailable:
            self.failed(trial)
            if self.on_failure is not None:
                self.on_failure(self.name, operation)
            raise
        except Exception:  # a refusal (seq_conflict, not_found...): the dependency answered
            self.succeeded(trial)
            raise
        except BaseException:  # cancelled: it tells nothing about the dependency
            self.abandoned(trial)
            raise
        self.succeeded(trial)
        return result


class _Guarded:
    """Every coroutine method of ``inner`` through ``breaker``; everything else as it is.

    Each guarded method is made once, on first use, and kept on the instance: later calls cost one
    attribute lookup (this sits on every publish's path).
    """

    def __init__(self, inner: object, breaker: CircuitBreaker, passthrough: frozenset[str]) -> None:
        self._inner = inner
        self._breaker = breaker
        self._passthrough = passthrough

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name in self._passthrough or not callable(value) or not _is_coroutine_function(value):
            return value
        breaker = self._breaker
        inner = self._inner

        @functools.wraps(value)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            # The method is looked up on each call (cheap), so an inner object may change it.
            method = getattr(inner, name)
            return await breaker.call(functools.partial(method, *args, **kwargs), operation=name)

        self.__dict__[name] = guarded  # found by normal lookup from now on: __getattr__ is not called again
        return guarded


def _is_coroutine_function(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn)


def guard(inner: T, breaker: CircuitBreaker, *, passthrough: frozenset[str] = frozenset()) -> T:
    """``inner`` with its async methods behind ``breaker`` (``passthrough`` names those left alone:
    long-running ones such as a bus's ``run``, and ones that must always take effect)."""
    return cast(T, _Guarded(inner, breaker, passthrough))
