"""The QuartTrio app: store, bus, gateway and routes, wired from Settings, with their lifespan.

:func:`create_app` builds the app; nothing runs until its lifespan starts (Hypercorn's, or
``app.test_app()`` in tests). Start-up, in order (:class:`Services`):

1. open the store when the app opens its own (SQLite in the data dir) and apply pending migrations
   (under the store's lock, so nodes starting together are safe);
2. load the server's secrets, creating them on the first start;
3. build the gateway and install its ASGI wrapper in front of Quart (``app.asgi_app``), so that the
   WebSocket scope of ``/v1/ws`` is served raw, without Quart's per-message machinery;
4. start the bus, the gateway (its ``heads`` ticker) and the purge of expired rows, in one cancel
   scope of the app's nursery.

A store that cannot be reached stops the start-up with :class:`StartupFailed` (one line for the
operator). When the server is asked to stop, :meth:`Services.begin_drain` starts the gateway's
graceful drain while Hypercorn lets connections finish; after that (lifespan shutdown), the services
are cancelled and awaited, then the store is closed. HTTP routes live in :mod:`relay.http`; serving
is :mod:`relay.serving`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
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
from relay.http import devices, enroll, health, pairings, server, user
from relay.http.cors import install_cors
from relay.http.errors import install_error_handling
from relay.http.observe import install_observation
from relay.http.runtime import EXTENSION, Runtime
from relay.ops.breaker import BreakerState, CircuitBreaker, guard
from relay.ops.readiness import Readiness
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

#: How often expired events are purged, in seconds of trio's clock.
PURGE_INTERVAL_S = 60
#: Events deleted per purge transaction: short transactions, so publishes never wait long behind one.
PURGE_BATCH = 1000
#: Store methods left outside the circuit breaker: closing must always happen.
STORE_UNGUARDED = frozenset({"close"})
#: Bus methods left outside it: the background task, and leaving (presence must always be withdrawn).
BUS_UNGUARDED = frozenset({"run", "unsubscribe"})


class StartupFailed(Exception):
    """The app could not start (its database, its secrets); ``str()`` is one line for the operator."""


async def open_default_store(settings: Settings) -> Store:
    """Open the store ``settings`` ask for: SQLite in ``settings.data_dir`` (created if needed).

    PostgreSQL (``RELAY_DATABASE_URL``) is not available in this version; :mod:`relay.cli` refuses to
    start with it set, so that data never lands in SQLite by mistake. Raises
    :class:`relay.errors.StoreUnavailable` when the database cannot be opened.
    """
    from relay.store.sqlite import SqliteStore

    return await SqliteStore.open(settings.data_dir)


def create_app(
    settings: Settings, *, store: Store | None = None, clock: Clock | None = None, bus: Bus | None = None
) -> RelayApp:
    """The whole app for ``settings``. Serve it with :func:`relay.serving.serve`, or in tests enter
    ``app.test_app()`` (which runs the start-up) and use ``app.test_client()``.

    ``store``, ``clock`` and ``bus`` replace the defaults (SQLite in the data dir, opened at start-up;
    the system clock; the in-process bus). The app owns its store, given or opened, and closes it on
    shutdown.
    """
    runtime = Runtime(
        settings=settings,
        store=store,
        clock=clock if clock is not None else SystemClock(),
        bus=bus if bus is not None else LocalBus(),
    )
    app = RelayApp("relay")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_frame_bytes
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.extensions[EXTENSION] = runtime
    install_error_handling(app, settings)
    install_observation(app, runtime.metrics)
    install_cors(app, settings)
    for module in (server, health, enroll, pairings, devices, user):
        app.register_blueprint(module.blueprint)
    app.services = Services(app=app, runtime=runtime)
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
        runtime.readiness = Readiness(store=runtime.store, bus=runtime.bus, draining=lambda: gateway.draining)
        await self.app.nursery.start(self._run, gateway)
        self.started = True

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
                    await nursery.start(runtime.bus.run)
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
            await self.runtime.store.close()


async def purge_expired_events(
    store: Store,
    clock: Clock,
    settings: Settings,
    *,
    interval_s: float = PURGE_INTERVAL_S,
    batch: int = PURGE_BATCH,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every ``interval_s``, delete expired events, then housekeeping rows, in transactions of ``batch``.

    Housekeeping (:meth:`Store.purge_housekeeping`) forgets expired nonces, expired memories of deleted
    devices, old revocation log entries and long-expired tokens. Each is repeated while a transaction
    deleted a whole ``batch``. Runs until cancelled. A store that is unavailable (or any other failure,
    logged) is tried again at the next interval, and a failing event purge does not keep the
    housekeeping from running; heads never decrease (the store keeps them).
    """
    task_status.started()
    while True:
        await trio.sleep(interval_s)
        events = await _purge_in_batches(
            "expired events",
            lambda: store.purge_expired(
                now_ms=clock.now_ms(), clock_skew_ms=settings.clock_skew_ms, batch=batch
            ),
            batch=batch,
            interval_s=interval_s,
        )
        if events:
            log.info("purged %d expired events", events)
        rows = await _purge_in_batches(
            "housekeeping rows",
            lambda: store.purge_housekeeping(now_ms=clock.now_ms(), batch=batch),
            batch=batch,
            interval_s=interval_s,
        )
        if rows:
            log.debug("forgot %d housekeeping rows (nonces, deleted devices, log entries, tokens)", rows)


async def _purge_in_batches(
    what: str, purge: Callable[[], Awaitable[int]], *, batch: int, interval_s: float
) -> int:
    """Call ``purge`` while it deletes a whole ``batch``; how many rows went. Failures are logged only."""
    total = 0
    try:
        while True:
            deleted = await purge()
            total += deleted
            if deleted < batch:
                break
            await trio.lowlevel.checkpoint()  # let other work in between batches
    except StoreUnavailable as exc:
        log.warning("purge of %s postponed: %s", what, exc.detail or exc.message)
    except Exception:
        # A bug here must not stop the server: expired events are never served anyway (every read
        # filters them), expired nonces and memories are never trusted; they only take room until a
        # later purge succeeds.
        log.exception("purge of %s failed; trying again in %s s", what, interval_s)
    return total
