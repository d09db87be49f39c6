"""The gateway: serves ``/v1/ws`` at the ASGI level, one :class:`Session` per connection.

``app.py`` builds one :class:`Gateway`, puts :meth:`Gateway.wrap_asgi` in front of Quart's ASGI app,
starts :meth:`Gateway.run` (the node's background work: the ``heads`` ticker and the revocation
watcher, :mod:`relay.gateway.revocations`) in its service nursery, and calls :meth:`Gateway.shutdown`
when the server is asked to stop. Each connection's session runs in the task Hypercorn gives the
connection (:meth:`Gateway.handle`); one session's failure never reaches another.

Operations: the gateway counts into the app's :class:`~relay.ops.metrics.Metrics`
(:mod:`relay.gateway.instruments`), limits publishes per device and handshakes per client address
(:mod:`relay.gateway.admission`), and makes spans when a tracer provider is installed
(:mod:`relay.gateway.traces`).
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

import attrs
import trio

from relay.bus.base import Bus
from relay.clock import Clock
from relay.config import Settings
from relay.crypto import SigningKey
from relay.errors import BadRequest, GoingAway
from relay.gateway.admission import HandshakeGate, PublishLimits, default_handshake_limiter
from relay.gateway.asgi import AsgiApp, AsgiWebSocket, Receive, Scope, Send, route_websocket
from relay.gateway.context import Admission, GatewayContext
from relay.gateway.instruments import CANCELLED
from relay.gateway.revocation_index import RevocationIndex
from relay.gateway.revocations import RevocationWatcher
from relay.gateway.session import Session
from relay.gateway.traces import tracing_installed
from relay.gateway.work import run_work
from relay.ops.metrics import Metrics
from relay.ops.ratelimit import Limiter
from relay.protocol.paths import bad_request
from relay.store.base import Store

__all__ = ["Gateway", "GatewayStatistics"]


@attrs.frozen
class GatewayStatistics:
    """``sessions``: live ones (handshakes included); ``closing``: of those, the ones whose close has
    been decided but not yet completed (a slow consumer whose last frames are still being sent)."""

    sessions: int
    closing: int
    draining: bool


log = logging.getLogger("relay.gateway")


class Gateway:
    """Every live WebSocket session of this node, and the background work they share.

    Optional keywords, each with a default fit for one node:

    - ``admission``: the publish check of §4.2 step 3; default :class:`PublishLimits` from
      ``settings`` (``publish_rate`` per device, bursts of ``publish_burst``);
      :class:`~relay.gateway.context.AdmitAll` admits everything;
    - ``metrics``: where the gateway counts (default: a fresh :class:`Metrics` of its own; the app
      passes the one ``/metrics`` renders);
    - ``handshake_limiter``: handshakes per client address (default
      :func:`~relay.gateway.admission.default_handshake_limiter`, in this process; with several
      nodes, a :class:`~relay.ops.ratelimit_redis.RedisLimiter` shares it);
    - ``tracing``: whether sessions make spans (default: whether a tracer provider is installed now,
      so install it, :func:`relay.ops.tracing.configure_tracing`, before building the gateway).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        bus: Bus,
        clock: Clock,
        server_key: SigningKey,
        token_secret: bytes,
        admission: Admission | None = None,
        metrics: Metrics | None = None,
        handshake_limiter: Limiter | None = None,
        tracing: bool | None = None,
    ) -> None:
        revocations = RevocationIndex()
        limiter = handshake_limiter if handshake_limiter is not None else default_handshake_limiter()
        self._ctx = GatewayContext(
            settings=settings,
            store=store,
            bus=bus,
            clock=clock,
            server_key=server_key,
            token_secret=token_secret,
            admission=admission if admission is not None else PublishLimits.from_settings(settings),
            limits=settings.limits,
            revocations=revocations,
            metrics=metrics if metrics is not None else Metrics(),
            handshake_limiter=limiter,
            tracing=tracing if tracing is not None else tracing_installed(),
        )
        self._handshakes = HandshakeGate(limiter)
        self._watcher = RevocationWatcher(store=store, clock=clock, index=revocations)
        #: Live sessions, in the order they connected (a dict: ordered, unlike a set).
        self._sessions: dict[Session, None] = {}
        self._draining = False
        self._session_ended = trio.Event()

    @property
    def context(self) -> GatewayContext:
        """What the sessions share (read-only: for the app and tests)."""
        return self._ctx

    @property
    def metrics(self) -> Metrics:
        return self._ctx.metrics

    @property
    def session_count(self) -> int:
        """Live sessions on this node (handshakes included)."""
        return len(self._sessions)

    def statistics(self) -> GatewayStatistics:
        """A snapshot of this node's sessions (trio's ``statistics()`` convention)."""
        closing = sum(1 for session in self._sessions if session.closing)
        return GatewayStatistics(sessions=len(self._sessions), closing=closing, draining=self._draining)

    @property
    def draining(self) -> bool:
        """True once :meth:`shutdown` began: new connections are refused with ``going_away``."""
        return self._draining

    def wrap_asgi(self, inner: AsgiApp) -> AsgiApp:
        """An ASGI app serving the WebSocket scope of ``/v1/ws`` here and everything else with ``inner``."""
        return route_websocket(self.handle, inner)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one WebSocket connection (an ASGI ``websocket`` scope) until it closes.

        Right after the upgrade: refused with ``going_away`` while draining, then checked against the
        handshake limit of its client address (``rate_limited``, 1013), then its query string.
        """
        ws = AsgiWebSocket(scope, receive, send)
        if not await ws.wait_connect():
            return
        if not ws.has_valid_key():
            await ws.refuse_upgrade()
            return
        if not await ws.accept():
            return
        instruments = self._ctx.instruments
        session = Session(ctx=self._ctx, ws=ws, opened_at=trio.current_time())
        self._sessions[session] = None
        instruments.session_opened()
        try:
            if self._draining:
                session.refuse(GoingAway())
            elif (limited := await self._handshakes.check(scope)) is not None:
                instruments.handshake_rate_limited()
                session.refuse(limited)
            elif (refusal := _query_refusal(ws.query_string)) is not None:
                session.refuse(refusal)
            await session.run(run_work)
        except* Exception as group:  # only a bug gets here; the session's own errors are answered
            log.error("a WebSocket session failed", exc_info=group)
        finally:
            self._sessions.pop(session, None)
            instruments.session_ended(session.end_code or CANCELLED, welcomed=session.welcomed)
            self._session_ended.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The node's background work, until cancelled: the ``heads`` ticker and the revocation watcher.

        Both run as tasks of one nursery; ``started`` is reported once both run (the watcher has then
        taken its position in the revocation log, or tried to: see
        :meth:`relay.gateway.revocations.RevocationWatcher.run`). Neither ends by itself.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self._tick_heads)
            await nursery.start(self._watcher.run)
            task_status.started()

    async def _tick_heads(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The ``heads`` ticker (§4.3): every ``heartbeat_ms``, each session hears of the heads that
        changed since its last ``heads`` or ``welcome``."""
        interval = self._ctx.settings.heartbeat_ms / 1000
        task_status.started()
        while True:
            await trio.sleep(interval)
            for session in list(self._sessions):
                session.flush_heads()

    async def shutdown(self) -> None:
        """Graceful shutdown of the sessions (PROTOCOL.md §8); returns once every session has ended.

        New connections are refused with ``going_away``; every session stops reading at once; the
        publishes already read are committed and acked; then sessions get ``going_away`` (1001), spread
        evenly over ``drain_timeout_ms`` so that clients do not all reconnect at once.
        """
        self._draining = True
        sessions = list(self._sessions)
        for session in sessions:
            session.stop_reading()
        step = self._ctx.settings.drain_timeout_ms / 1000 / max(len(sessions), 1)
        start = trio.current_time()
        for index, session in enumerate(sessions):
            await trio.sleep_until(start + index * step)
            session.close(GoingAway(), graceful=True)
        while self._sessions:
            self._session_ended = trio.Event()
            for session in list(self._sessions):
                if not session.closing:  # connected during the drain, before it was refused
                    session.close(GoingAway())
            await self._session_ended.wait()


def _query_refusal(query_string: bytes) -> BadRequest | None:
    """``/v1/ws`` takes no query parameter: the first one is refused like an unknown member (§1).

    The path is ``$.query.<name>``, the spelling the HTTP endpoints use.
    """
    names = [name for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)]
    if not names:
        return None
    return bad_request("unknown query parameter", ("query", names[0]))
