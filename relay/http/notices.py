"""What the HTTP handlers ask of the bus, each call bounded: notices after a commit, and presence.

A change the store committed (a rename, a revocation, a deleted account) stands whatever the bus does
next: :func:`announce` tells the live sessions, shielded from the request's cancellation (a client that
hung up does not keep them uninformed) and bounded by :data:`BUS_CALL_TIMEOUT_S`; a bus that is down or
slow is logged as a warning and the answer is the same. Sessions that miss a revocation or a deletion
are closed anyway by the gateway's watch of the store's revocation log; a missed rename shows the next
time a client lists its devices.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from relay.errors import BusUnavailable
from relay.http.runtime import Runtime

__all__ = ["BUS_CALL_TIMEOUT_S", "announce", "online_devices"]

log = logging.getLogger("relay.http")

#: The longest an HTTP answer waits for one bus call (seconds).
BUS_CALL_TIMEOUT_S = 5.0
#: When a client whose device list could not get presence may try again (ms).
PRESENCE_RETRY_AFTER_MS = 1000


async def announce(what: str, call: Callable[[], Awaitable[None]]) -> bool:
    """Run ``call`` (a bus notice about a committed change); False, logged, if the bus did not take it."""
    with trio.CancelScope(shield=True), trio.move_on_after(BUS_CALL_TIMEOUT_S) as scope:
        try:
            await call()
        except BusUnavailable as exc:
            log.warning("could not announce %s: %s", what, exc.detail or exc.message)
            return False
    if scope.cancelled_caught:
        log.warning("could not announce %s: the bus did not answer within %s s", what, BUS_CALL_TIMEOUT_S)
        return False
    return True


async def online_devices(runtime: Runtime, user_id: str) -> set[str]:
    """The user's devices with a live session; :class:`BusUnavailable` when the bus cannot tell in time."""
    with trio.move_on_after(BUS_CALL_TIMEOUT_S):
        return set(await runtime.bus.online_devices(user_id))
    raise BusUnavailable(
        retry_after_ms=PRESENCE_RETRY_AFTER_MS,
        detail=f"presence did not answer within {BUS_CALL_TIMEOUT_S} s",
    )
