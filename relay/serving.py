"""Serving the app with Hypercorn's trio worker, in this process, and containing Hypercorn issue 225.

Hypercorn 0.18 runs every TCP connection as a task of one nursery shared by the whole server. An
exception that escapes one connection's handler (``TCPServer.run``) therefore cancels every other
connection and stops the server: upstream issue 225. One malformed WebSocket upgrade is enough, such as
an upgrade request followed by a stray byte in the same packet while the app accepts the upgrade (h11
ends in its ERROR state, and Hypercorn's attempt to answer 400 raises ``LocalProtocolError`` out of the
connection handler).

:func:`contain_connection_errors` replaces the connection handler Hypercorn's trio worker constructs
(``hypercorn.trio.run.TCPServer``) with a subclass whose ``run`` logs such an exception, closes that one
connection and returns; cancellation still propagates. It checks what it patches: the Hypercorn
version must be one this was tested with, and the handler must still be the class it expects;
otherwise it changes nothing and says so.

The same handler also closes a connection whose WebSocket upgrade Hypercorn refused with an error and
``connection: close`` before the app accepted it (a bad version, a stray byte): Hypercorn closes only
when the stream reports itself closed, which such a stream never does, so the socket would stay open
until the client left.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from importlib import metadata
from typing import Any, cast

import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.utils import LifespanFailureError

from relay import __version__
from relay.app import RelayApp, StartupFailed, create_app
from relay.config import Settings

__all__ = [
    "CONTAINED_HYPERCORN_VERSIONS",
    "StartupFailed",
    "contain_connection_errors",
    "hypercorn_config",
    "serve",
]

log = logging.getLogger("relay.serving")

#: Hypercorn versions whose ``hypercorn.trio.run`` builds connections as ``TCPServer(...)`` awaited
#: through ``TCPServer.run``: the shape the containment relies on (checked against 0.18.0's source, the
#: version uv.lock pins). Another version gets a warning and no patch, until it is checked too.
CONTAINED_HYPERCORN_VERSIONS = ("0.18.",)

#: Hypercorn's own bound on one WebSocket message, as a multiple of ``max_frame_bytes``. Hypercorn
#: counts characters of text (not bytes), so a frame the protocol allows (at most ``max_frame_bytes``
#: UTF-8 bytes) always passes, and frames somewhat over it reach the gateway, which refuses them with
#: ``frame_too_large`` (error frame, then 1009). Only absurd frames meet Hypercorn's bare 1009 first,
#: and no connection can make the server buffer more than this.
WEBSOCKET_MESSAGE_FACTOR = 4

#: Seconds Hypercorn waits for connections beyond ``drain_timeout_ms``: the gateway closes its last
#: session at the end of the drain, and that close needs a moment to reach the client.
DRAIN_MARGIN_S = 2.0


class ContainedTCPServer(TCPServer):
    """Hypercorn's per-connection handler, except that no exception of one connection escapes it."""

    async def run(self) -> None:
        peer = _peer(self.stream)  # now: once the handler has failed, the socket may be closed
        try:
            await super().run()
        except* Exception as group:
            # Cancelled (a BaseException) is not caught and propagates: shutdown still works.
            first: BaseException = group
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            log.warning(
                "closed a connection from %s that failed inside Hypercorn (issue 225): %s: %s",
                peer,
                type(first).__name__,
                first,
            )
            log.debug("the failure of that connection", exc_info=group)
            await trio.aclose_forcefully(self.stream)

    async def protocol_send(self, event: Any) -> None:
        await self._send_event(event)
        if type(event) is RawData and _refused_upgrade_done(self.protocol):
            # Hypercorn answered a WebSocket upgrade with an error and "connection: close", but it
            # only closes on the stream's StreamClosed, which a stream refused before the app
            # accepted never sends: the socket would stay open until the client hangs up. Close it
            # now; the app, if it was started, is told websocket.disconnect.
            await TCPServer.protocol_send(self, Closed())

    async def _send_event(self, event: Any) -> None:
        await TCPServer.protocol_send(self, event)


def _refused_upgrade_done(wrapper: Any) -> bool:
    """Whether ``wrapper``'s connection has wholly sent a refusal of a WebSocket upgrade and must close."""
    protocol = getattr(wrapper, "protocol", None)
    if not isinstance(protocol, H11Protocol) or not isinstance(protocol.stream, WSStream):
        return False
    # Once the upgrade request is read, Hypercorn wraps h11's connection (H11WSConnection, whose own
    # states are None); the answer's state is the wrapped connection's.
    connection = getattr(protocol.connection, "h11_connection", protocol.connection)
    return isinstance(connection, h11.Connection) and connection.our_state is h11.MUST_CLOSE


class FastTCPServer(ContainedTCPServer):
    """The contained handler, also sending synchronously when it can (:mod:`relay.gateway.fastpath`).

    When no other task of the connection is sending (its send lock is free) and the connection is plain
    TCP, the bytes are written with one non-blocking ``os.write``, without yielding. What the kernel did
    not take (a full socket buffer, ``EAGAIN``) goes Hypercorn's own locked path, so back-pressure is
    unchanged. Active only when the server's config says so (``config.relay_fast_send``), so one process
    can serve with it on and off.
    """

    async def _send_event(self, event: Any) -> None:
        if (
            type(event) is RawData
            and getattr(self.config, "relay_fast_send", False)
            and not self.send_lock.locked()
            and isinstance(stream := cast(object, self.stream), trio.SocketStream)
        ):
            data = event.data
            try:
                written = os.write(stream.socket.fileno(), data)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                if exc.errno not in _GONE:
                    raise
                await self.protocol.handle(Closed())
                return
            if written == len(data):
                FAST_SEND.direct += 1
                return
            FAST_SEND.partial += 1
            # Nothing yielded since the lock was seen free: no other send came in between.
            event = RawData(data=data[written:])
        await super()._send_event(event)


_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN})


class _FastSendCounts:
    """How the fast path fared (``statistics``-style counters, for tests and benchmarks)."""

    def __init__(self) -> None:
        self.direct = 0  # written whole, without yielding
        self.partial = 0  # the kernel took less: the rest went the stock path


FAST_SEND = _FastSendCounts()


def _peer(stream: Any) -> str:
    try:
        socket = getattr(stream, "transport_stream", stream).socket
        host, port = socket.getpeername()[:2]
    except (AttributeError, OSError, TypeError, ValueError):
        return "an unknown peer"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def contain_connection_errors() -> bool:
    """Make Hypercorn's trio worker contain per-connection exceptions; True when it is in force.

    Idempotent. Changes nothing (and logs a warning) when the installed Hypercorn is not a version
    this was checked against or no longer has the expected shape.
    """
    current = getattr(hypercorn_run, "TCPServer", None)
    if current is FastTCPServer:
        return True
    version = metadata.version("hypercorn")
    if not version.startswith(CONTAINED_HYPERCORN_VERSIONS):
        log.warning(
            "Hypercorn %s is not a version relay's containment of issue 225 was checked against; "
            "not applied: one malformed request may stop this server",
            version,
        )
        return False
    if current is not TCPServer or not callable(getattr(TCPServer, "run", None)):
        log.warning(
            "hypercorn.trio.run.TCPServer is not Hypercorn's own TCPServer; containment of issue 225 "
            "not applied"
        )
        return False
    hypercorn_run.TCPServer = FastTCPServer  # type: ignore[attr-defined]
    return True


def hypercorn_config(settings: Settings, fds: tuple[int, ...] = ()) -> Config:
    """Hypercorn's configuration for ``settings``: the bind (and ``RELAY_METRICS_BIND``), our logging,
    the drain bound. ``fds``: listening sockets inherited from ``relay serve --workers`` instead."""
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    if fds:
        config.bind = [f"fd://{fd}" for fd in fds]
    else:
        config.bind = [f"{host}:{settings.port}"]
        if settings.metrics_bind is not None:
            config.bind.append(settings.metrics_bind)
    config.graceful_timeout = settings.drain_timeout_ms / 1000 + DRAIN_MARGIN_S
    config.websocket_max_message_size = WEBSOCKET_MESSAGE_FACTOR * settings.max_frame_bytes
    config.include_server_header = False
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.relay_fast_send = settings.fast_send  # type: ignore[attr-defined]  # read by FastTCPServer
    return config


def _startup_failure(group: BaseExceptionGroup[LifespanFailureError]) -> StartupFailed:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    text = str(first)
    # Hypercorn's text is "Lifespan failure in startup. '<the app's message>'": keep the message.
    _, sep, message = text.partition(". '")
    return StartupFailed(message.removesuffix("'") if sep else text)


def split_metrics(app: Any, metrics_bind: str | None) -> Any:
    """The ASGI app to serve: ``app`` itself, or, with ``RELAY_METRICS_BIND``, one that answers only
    ``/metrics`` on the metrics address and everything but ``/metrics`` on the others (404 otherwise).

    The address a request came in on is the ASGI scope's ``server`` (the listening socket's).
    """
    if metrics_bind is None:
        return app
    metrics_port = int(metrics_bind.rpartition(":")[2])

    async def routed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            server = scope.get("server") or ("", 0)
            # The listening port tells the binds apart (the configuration refuses the same port twice).
            on_metrics_bind = int(server[1]) == metrics_port
            wants_metrics = scope.get("path") == "/metrics"
            if on_metrics_bind != wants_metrics:
                scope = {**scope, "path": "/metrics-not-here", "raw_path": b"/metrics-not-here"}
        await app(scope, receive, send)

    return routed


async def serve(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    app: RelayApp | None = None,
    fds: tuple[int, ...] = (),
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (default: :func:`relay.app.create_app` of ``settings``) until ``shutdown_trigger``
    returns, then shut down gracefully and return.

    Reports the bound URLs (``["http://127.0.0.1:8080"]``) through ``task_status`` once the app has
    started (migrations applied, secrets loaded) and the socket listens; ``--port 0`` binds a free port,
    which the URL shows. An address that cannot be bound raises :class:`OSError`, and an app that cannot
    start :class:`StartupFailed`, both before ``started`` (inside an exception group).
    """
    contain_connection_errors()
    config = hypercorn_config(settings, fds)

    served = app if app is not None else create_app(settings)

    async def trigger() -> None:
        await shutdown_trigger()
        served.services.begin_drain()  # beside Hypercorn's own graceful stop, which starts on return

    try:
        async with trio.open_nursery() as nursery:
            urls: list[str] = await nursery.start(
                partial(
                    hypercorn_serve,
                    split_metrics(served, settings.metrics_bind),
                    config,
                    shutdown_trigger=trigger,
                )
            )
            if not served.services.started:
                # Hypercorn 0.18 binds and reports itself started even when the app's start-up failed;
                # its lifespan task is about to raise that failure into this nursery. Wait for it.
                await trio.sleep_forever()
            log.info("relay %s listening on %s", __version__, ", ".join(urls))
            task_status.started(urls)
    except* LifespanFailureError as group:
        raise _startup_failure(group) from None
