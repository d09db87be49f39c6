"""Rate limits of the WebSocket side: publishes per device (§4.2 step 3) and handshakes per address.

**Publishes.** :class:`PublishLimits` is the gateway's default :class:`~relay.gateway.context.Admission`:
one token bucket per device (``publish_rate`` per second, bursts of ``publish_burst``, PROTOCOL.md §8),
in this process (:class:`~relay.ops.ratelimit.LocalLimiter`; a device has one live session, so the
node holding it sees all its publishes). Time is trio's clock, so refills run in virtual time under
:class:`trio.testing.MockClock`. Every publish that passes steps 1-2 spends a token, **a retry of an
event already stored included** ("a retry is checked like any publish", §4.2 step 4): the original
``ack`` costs the same as a new event, so a client that retries in a loop is held to the same rate.
A refusal is ``rate_limited`` with ``retry_after_ms``; nothing is stored and the session stays open.

**Handshakes.** :class:`HandshakeGate` checks every accepted upgrade against a
:class:`~relay.ops.ratelimit.Limiter` keyed by the client's address (the host of the ASGI scope's
``client``), by default :data:`HANDSHAKE_RATE_PER_S` per second in bursts of :data:`HANDSHAKE_BURST`.
``X-Forwarded-For`` and the like are not trusted: behind a reverse proxy every client has the proxy's
address, so operators there raise the limit (pass a ``handshake_limiter``) or let the proxy limit. A
connection without an address (a Unix socket) is not limited. Over the limit the session gets
``rate_limited`` with ``retry_after_ms`` and closes 1013 ("try again later", so clients reconnect
with back-off). The limiter's ``check`` may do a round trip (Redis): it is given
:data:`HANDSHAKE_CHECK_TIMEOUT_S`, and a check that fails or takes longer admits the connection (a
limiter that is down must not lock everyone out); that is logged once per streak of failures.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import attrs
import trio

from relay.config import Settings
from relay.errors import RateLimited
from relay.gateway.asgi import Scope
from relay.ops.ratelimit import Limiter, LocalLimiter, RateLimit

__all__ = [
    "HANDSHAKE_BURST",
    "HANDSHAKE_CHECK_TIMEOUT_S",
    "HANDSHAKE_RATE_PER_S",
    "HandshakeGate",
    "HandshakeRateLimited",
    "PublishLimits",
    "client_host",
    "default_handshake_limiter",
]

log = logging.getLogger("relay.gateway")

#: Handshakes per second one client address may start, on average. A device opens one session and
#: reconnects with back-off; ten a second is far more than the devices behind one household's address
#: need, and little enough that a single address cannot make the server sign challenges at speed.
HANDSHAKE_RATE_PER_S = 10.0
#: Handshakes one address may start at once: every device behind one address reconnecting together
#: after a deploy or a ``bus_lost`` (``max_devices`` is 20 per user, and a few users may share a NAT).
HANDSHAKE_BURST = 100
#: How long the handshake limiter may take to answer before the connection is admitted (seconds).
HANDSHAKE_CHECK_TIMEOUT_S = 0.5


class HandshakeRateLimited(RateLimited):
    """``rate_limited`` before the handshake: closes the session with 1013 (a RateLimited never
    closes a session otherwise)."""

    close_code: ClassVar[int | None] = 1013


def default_handshake_limiter() -> LocalLimiter:
    """:data:`HANDSHAKE_RATE_PER_S` in bursts of :data:`HANDSHAKE_BURST`, per address, in this process."""
    return LocalLimiter(RateLimit(rate=HANDSHAKE_RATE_PER_S, burst=HANDSHAKE_BURST))


def client_host(scope: Scope) -> str | None:
    """The host of the ASGI scope's ``client`` (the peer of the TCP connection), or None."""
    client = scope.get("client")
    if isinstance(client, list | tuple) and client and isinstance(client[0], str) and client[0]:
        return client[0]
    return None


@attrs.define(eq=False)
class PublishLimits:
    """Publishes per device: a token bucket each, on trio's clock (module docstring).

    Implements :class:`~relay.gateway.context.Admission`; never blocks, never yields.
    """

    limiter: LocalLimiter

    @classmethod
    def from_settings(cls, settings: Settings) -> PublishLimits:
        """``publish_rate`` per second in bursts of ``publish_burst`` (``RELAY_PUBLISH_RATE``/``_BURST``)."""
        return cls(LocalLimiter(RateLimit(rate=settings.publish_rate, burst=settings.publish_burst)))

    def check_publish(self, *, user_id: str, device_id: str, body_size: int, now_ms: int) -> None:
        """Spend a token of ``device_id``; :class:`RateLimited` (``retry_after_ms``) when none is left."""
        self.limiter.check_nowait(device_id, trio.current_time())


@attrs.define(eq=False)
class HandshakeGate:
    """The handshake limit of one gateway (module docstring)."""

    limiter: Limiter
    _failing: bool = attrs.field(default=False, init=False)

    async def check(self, scope: Scope) -> HandshakeRateLimited | None:
        """The refusal for a new connection of ``scope``, or None to admit it. Never raises (but
        ``Cancelled``); takes at most :data:`HANDSHAKE_CHECK_TIMEOUT_S`."""
        host = client_host(scope)
        if host is None:
            return None
        try:
            with trio.move_on_after(HANDSHAKE_CHECK_TIMEOUT_S) as waited:
                await self.limiter.check(host, trio.current_time())
        except RateLimited as exc:
            self._failing = False
            retry = exc.fields.get("retry_after_ms")
            return HandshakeRateLimited(retry_after_ms=retry if isinstance(retry, int) else 1000)
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return None
        if waited.cancelled_caught:
            self._failed(f"no answer within {HANDSHAKE_CHECK_TIMEOUT_S:g} s")
        else:
            self._failing = False
        return None

    def _failed(self, why: str) -> None:
        if not self._failing:
            log.warning("the handshake rate limit could not be checked (%s): admitting connections", why)
        self._failing = True
