"""The QuartTrio app: store, bus, gateway and routes, wired from Settings, with their lifespan.

:func:`create_app` builds the app; nothing runs until its lifespan starts (Hypercorn's, or
``app.test_app()`` in tests). Start-up, in order (:class:`Services`):

1. open the store when the app opens its own (PostgreSQL at ``RELAY_DATABASE_URL``, else SQLite in
   the data dir) and apply pending migrations (under the store's lock, so nodes starting together are
   safe);
2. load the server's secrets, creating them on the first start;
3. build the gateway and install its ASGI wrapper in front of Quart (``app.asgi_app``), so that the
   WebSocket scope of ``/v1/ws`` is served raw, without Quart's per-message machinery;
4. start this node's heartbeat in the store's registry, the bus (Redis at ``RELAY_REDIS_URL``, else
   in-process), the gateway (its ``heads`` ticker and revocation watcher) and the purge of expired
   rows, in one cancel scope of the app's nursery. The store and the bus sit behind circuit breakers
   (:mod:`relay.ops.breaker`); ``/readyz`` checks them (:mod:`relay.ops.readiness`).

A store that cannot be reached stops the start-up with :class:`StartupFailed` (one line for the
operator). When the server is asked to stop, :meth:`Services.begin_drain` starts the gateway's
graceful drain while Hypercorn lets connections finish; after that (lifespan shutdown), the services
are cancelled and awaited, then the store is closed. HTTP routes live in :mod:`relay.http`; serving
is :mod:`relay.serving`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

import attrs
import trio
from quart_trio import QuartTrio

from relay.bus.base import Bus
from relay.bus.local import LocalBus
from relay.clock import Clock, SystemClock
from relay.config import Settings
from relay.errors import StoreUnavailable
from relay.gateway import Gateway
from relay.http import devices, enroll, health, openapi, pairings, server, user
from relay.http.cors import install_cors
from relay.http.errors import install_error_handling
from relay.http.limits import ADDRESS_LIMIT, DEVICE_LIMIT, HttpLimits
from relay.http.observe import install_observation
from relay.http.runtime import EXTENSION, Runtime
from relay.ops.breaker import BreakerState, CircuitBreaker, guard
from relay.ops.ratelimit import Limiter, LocalLimiter, RateLimit
from relay.ops.readiness import Readiness
from relay.purge import PURGE_BATCH, PURGE_INTERVAL_S, purge_expired_events
from relay.store.base import Store

__all__ = [
    "PURGE_BATCH",
    "PURGE_INTERVAL_S",
    "RelayApp",
    "Services",
    "StartupFailed",
    "create_app",
    "open_default_store",
    "purge_expired_events",
]

log = logging.getLogger("relay")

#: How often a node records its heartbeat in the store's registry, and how long one lasts.
NODE_HEARTBEAT_S = 5.0
NODE_TTL_MS = 15_000
#: How long a stopping node tries to remove its heartbeat (it expires by itself otherwise).
NODE_FORGET_TIMEOUT_S = 2.0
#: Store methods left outside the circuit breaker: closing must always happen.
STORE_UNGUARDED = frozenset({"close"})
#: Bus methods left outside it: the background task, and leaving (presence must always be withdrawn).
BUS_UNGUARDED = frozenset({"run", "unsubscribe"})


class StartupFailed(Exception):
    """The app could not start (its database, its secrets); ``str()`` is one line for the operator."""


async def open_default_store(settings: Settings) -> Store:
    """Open the store ``settings`` ask for: PostgreSQL at ``RELAY_DATABASE_URL``, else SQLite in
    ``settings.data_dir`` (created if needed). Raises :class:`relay.errors.StoreUnavailable` when the
    database cannot be opened."""
    if settings.database_url is not None:
        from relay.store.postgres import PostgresStore

        return await PostgresStore.open(settings.database_url)
    from relay.store.sqlite import SqliteStore

    return await SqliteStore.open(settings.data_dir)


def default_bus(settings: Settings, clock: Clock, node_id: str) -> Bus:
    """The bus ``settings`` ask for: Redis at ``RELAY_REDIS_URL``, else the in-process bus."""
    if settings.redis_url is not None:
        from relay.bus.redis import RedisBus

        return RedisBus(settings.redis_url, node_id=node_id, heartbeat_ms=settings.heartbeat_ms, clock=clock)
    return LocalBus()


def shared_limits(settings: Settings) -> tuple[HttpLimits, Limiter | None]:
    """The HTTP limits and the handshake limiter: shared through Redis when it is configured."""
    if settings.redis_url is None:
        local = LocalLimiter(RateLimit(settings.handshake_rate, settings.handshake_burst))
        return HttpLimits(), local
    from relay.bus.redis_commands import Commands
    from relay.ops.ratelimit_redis import RedisLimiter

    commands = Commands.from_url(settings.redis_url, client_name="relay-limits")
    limits = HttpLimits(
        address=RedisLimiter(commands, "http_address", ADDRESS_LIMIT),
        device=RedisLimiter(commands, "http_device", DEVICE_LIMIT),
    )
    per_address = RateLimit(settings.handshake_rate, settings.handshake_burst)
    return limits, RedisLimiter(commands, "handshake", per_address)


def create_app(
    settings: Settings, *, store: Store | None = None, clock: Clock | None = None, bus: Bus | None = None
) -> RelayApp:
    """The whole app for ``settings``. Serve it with :func:`relay.serving.serve`, or in tests enter
    ``app.test_app()`` (which runs the start-up) and use ``app.test_client()``.

    ``store``, ``clock`` and ``bus`` replace the defaults (SQLite in the data dir, opened at start-up;
    the system clock; the in-process bus). The app owns its store, given or opened, and closes it on
    shutdown.
    """
    clock = clock if clock is not None else SystemClock()
    node_id = str(uuid.uuid4())
    limits, handshake_limiter = shared_limits(settings)
    runtime = Runtime(
        settings=settings,
        store=store,
        clock=clock,
        bus=bus if bus is not None else default_bus(settings, clock, node_id),
        limits=limits,
    )
    app = RelayApp("relay", static_folder=None)  # no static files: no /static route
    app.config["MAX_CONTENT_LENGTH"] = settings.max_frame_bytes
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.extensions[EXTENSION] = runtime
    install_error_handling(app, settings)
    install_observation(app, runtime.metrics)
    install_cors(app, settings)
    for module in (server, health, enroll, pairings, devices, user, openapi):
        app.register_blueprint(module.blueprint)
    app.services = Services(app=app, runtime=runtime, node_id=node_id, handshake_limiter=handshake_limiter)
    return app


class RelayApp(QuartTrio):
    """The QuartTrio app, with relay's :class:`Services` started before and stopped after serving.

    They are started here rather than as a ``before_serving`` hook so that a failure (the database
    cannot be opened) is reported once, as one line, instead of also as Quart's traceback.
    """

    services: Services

    async def startup(self) -> None:
        try:
            await self.services.start()
        except StartupFailed:
            raise
        except Exception:
            log.exception("cannot start")
            with trio.CancelScope(shield=True):
                await self.services.stop()
            raise
        try:
            await super().startup()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.services.stop()
            raise

    async def shutdown(self) -> None:
        try:
            await super().shutdown()
        finally:
            with trio.CancelScope(shield=True):
                await self.services.stop()


@attrs.define(eq=False)
class Services:
    """The long-running tasks of one app and their lifespan: one cancel scope in the app's nursery."""

    app: RelayApp
    runtime: Runtime
    #: This process's id among the nodes sharing the database (the bus's node id too).
    node_id: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    handshake_limiter: Limiter | None = None
    _scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _done: trio.Event = attrs.field(factory=trio.Event, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _plain_asgi: Any = attrs.field(default=None, init=False)
    #: The gateway, once started.
    gateway: Gateway | None = attrs.field(default=None, init=False)
    _stopped: bool = attrs.field(default=False, init=False)
    #: True once :meth:`start` has completed: the app serves.
    started: bool = attrs.field(default=False, init=False)

    async def start(self) -> None:
        """Open and migrate the store, load the secrets, install the gateway, start the services.

        A store that cannot be reached raises :class:`StartupFailed`, after closing the store.
        """
        runtime = self.runtime
        try:
            if not runtime.has_store:
                runtime.set_store(await open_default_store(runtime.settings))
            applied = await runtime.store.migrate()
            runtime.set_secrets(await runtime.store.load_or_create_secrets())
        except StoreUnavailable as exc:
            await self.stop()
            raise StartupFailed(f"the database is unavailable: {exc.detail or exc.message}") from exc
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        self._install_breakers()
        gateway = self._build_gateway()
        self._plain_asgi = self.app.asgi_app
        self.app.asgi_app = gateway.wrap_asgi(self._plain_asgi)  # type: ignore[method-assign,assignment]
        self.gateway = gateway
        runtime.readiness = Readiness(
            store=runtime.store,
            bus=runtime.bus,
            draining=lambda: gateway.draining,
            lonely_local_bus=None if self._shared_bus else self._another_node_shares_the_database,
        )
        await self.app.nursery.start(self._run, gateway)
        self.started = True

    @property
    def _shared_bus(self) -> bool:
        return self.runtime.settings.redis_url is not None

    async def _another_node_shares_the_database(self) -> bool:
        """True when another live node uses this database (and this one has only the local bus)."""
        nodes = await self.runtime.store.live_nodes(now_ms=self.runtime.clock.now_ms())
        return any(node.node_id != self.node_id for node in nodes)

    async def _heartbeat(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Record this node in the store's registry every :data:`NODE_HEARTBEAT_S` (until cancelled);
        a failure is logged and retried. The row goes when the node stops (:meth:`stop`)."""
        runtime = self.runtime
        task_status.started()
        failing = False
        while True:
            try:
                await runtime.store.heartbeat_node(
                    self.node_id,
                    shared_bus=self._shared_bus,
                    now_ms=runtime.clock.now_ms(),
                    ttl_ms=NODE_TTL_MS,
                )
                failing = False
            except StoreUnavailable as exc:
                if not failing:
                    log.warning("cannot record this node's heartbeat: %s", exc.detail or exc.message)
                failing = True
            await trio.sleep(NODE_HEARTBEAT_S)

    def _install_breakers(self) -> None:
        """Put the store and the bus behind circuit breakers (:mod:`relay.ops.breaker`), reported in
        ``relay_breaker_state`` and ``relay_{store,bus}_errors_total``."""
        runtime = self.runtime
        metrics = runtime.metrics

        def changed(name: str, state: BreakerState) -> None:
            metrics.breaker_state.labels(name).set(int(state))
            if state is BreakerState.OPEN:
                log.warning("the %s circuit is open: calls are refused until it answers again", name)
            elif state is BreakerState.CLOSED:
                log.info("the %s circuit is closed again", name)

        def failed(name: str, operation: str) -> None:
            (metrics.store_errors if name == "store" else metrics.bus_errors).labels(operation).inc()

        store_breaker = CircuitBreaker("store", on_change=changed, on_failure=failed)
        bus_breaker = CircuitBreaker("bus", on_change=changed, on_failure=failed)
        runtime.set_store(guard(runtime.store, store_breaker, passthrough=STORE_UNGUARDED), guarded=True)
        runtime.bus = guard(runtime.bus, bus_breaker, passthrough=BUS_UNGUARDED)

    def begin_drain(self) -> None:
        """The server was asked to stop: drain the WebSocket sessions gracefully (PROTOCOL.md §8).

        Call when the shutdown is triggered, while Hypercorn still lets connections finish: the gateway
        stops reading, acks what it accepted, and closes its sessions 1001 ``going_away`` spread over
        ``drain_timeout_ms``. Does nothing before start-up or after :meth:`stop`.
        """
        if self.gateway is not None and self._nursery is not None and not self._stopped:
            self._nursery.start_soon(self.gateway.shutdown)

    async def _run(
        self, gateway: Gateway, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        runtime = self.runtime
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self._heartbeat)
                    # Not awaited: a bus that cannot reach Redis yet must not keep the node from
                    # serving; until it delivers, handshakes close 1013 and /readyz answers 503.
                    nursery.start_soon(runtime.bus.run)
                    await nursery.start(gateway.run)
                    await nursery.start(purge_expired_events, runtime.store, runtime.clock, runtime.settings)
                    task_status.started()
        finally:
            self._done.set()

    def _build_gateway(self) -> Gateway:
        runtime = self.runtime
        return Gateway(
            settings=runtime.settings,
            store=runtime.store,
            bus=runtime.bus,
            clock=runtime.clock,
            server_key=runtime.server_key,
            token_secret=runtime.token_secret,
            metrics=runtime.metrics,
            handshake_limiter=self.handshake_limiter,
        )

    async def stop(self) -> None:
        """Cancel the services, wait until they have stopped, then close the store. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()
            await self._done.wait()
        if self._plain_asgi is not None:
            self.app.asgi_app = self._plain_asgi  # type: ignore[method-assign]
        if self.runtime.has_store:
            # Its heartbeat would expire by itself; removing it tells the other nodes at once.
            with trio.move_on_after(NODE_FORGET_TIMEOUT_S), contextlib.suppress(StoreUnavailable):
                await self.runtime.store.forget_node(self.node_id)
            await self.runtime.store.close()
