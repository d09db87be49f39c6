"""The QuartTrio app, and serving it with Hypercorn's trio worker.

For now the app answers ``GET /healthz`` only (PROTOCOL.md §6), gives every response an
``X-Request-ID`` and answers errors with the §6 error body. The store, the bus, the gateway and the
other routes are wired here later.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, g, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from relay import __version__
from relay.config import Settings
from relay.errors import (
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    RelayError,
    TooLarge,
    error_payload,
)
from relay.protocol.syntax import is_request_id

__all__ = ["create_app", "hypercorn_config", "serve"]

log = logging.getLogger("relay")

REQUEST_ID_HEADER = "X-Request-ID"

#: Werkzeug's routing and body-size refusals, as errors of our tree (§6).
_HTTP_ERRORS: dict[int, type[RelayError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: TooLarge,
}


def _request_id() -> str:
    known: str | None = g.get("request_id")
    if known is not None:
        return known
    sent = request.headers.get(REQUEST_ID_HEADER)
    value = sent if sent is not None and is_request_id(sent) else uuid.uuid4().hex
    g.request_id = value
    return value


def create_app(settings: Settings) -> QuartTrio:
    """The app for ``settings``; serve it with :func:`serve` (or drive it with ``app.test_client()``)."""
    app = QuartTrio("relay")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_frame_bytes
    app.config["PROPAGATE_EXCEPTIONS"] = False

    def error_response(exc: BaseException, status: int) -> Response:
        payload = error_payload(exc, request_id=_request_id(), production=settings.production, http=True)
        response = jsonify({"error": payload})
        response.status_code = status
        return response

    @app.before_request
    async def assign_request_id() -> None:
        _request_id()

    @app.after_request
    async def add_request_id(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = _request_id()
        return response

    @app.errorhandler(RelayError)
    async def relay_error(exc: RelayError) -> Response:
        return error_response(exc, exc.http_status)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        known = _HTTP_ERRORS.get(status)
        error: RelayError = known() if known is not None else InternalError(detail=str(exc))
        response = error_response(error, status if known is not None else 500)
        for name, value in exc.get_headers():
            if name.lower() == "allow":  # 405 names the methods the route has
                response.headers["Allow"] = value
        return response

    @app.errorhandler(Exception)
    async def unexpected_error(exc: Exception) -> Response:
        log.exception("internal error (request id %s)", _request_id())
        return error_response(exc, 500)

    @app.get("/healthz")
    async def healthz() -> Response:
        return jsonify({"status": "ok"})

    return app


def hypercorn_config(settings: Settings) -> Config:
    """Hypercorn's configuration for ``settings``: one loopback or public bind, our logging."""
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.drain_timeout_ms / 1000
    config.include_server_header = False
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the app until ``shutdown_trigger`` returns, then shut down gracefully and return.

    Reports the bound URLs (``["http://127.0.0.1:8080"]``) through ``task_status`` once listening;
    ``--port 0`` binds a free port, which the URL shows. An address that cannot be bound raises
    :class:`OSError` before ``started``.
    """
    app = create_app(settings)
    config = hypercorn_config(settings)
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(
            partial(hypercorn_serve, app, config, shutdown_trigger=shutdown_trigger)
        )
        log.info("relay %s listening on %s", __version__, ", ".join(urls))
        task_status.started(urls)
