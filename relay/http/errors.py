"""The HTTP edge of the error tree (PROTOCOL.md §6): request ids, error bodies, query parameters.

Every response carries ``X-Request-ID``: the caller's own when it sent a valid one (1..128 of
``[A-Za-z0-9._-]``), else a new one. Every error is answered with
``{"error": {"code", "message", "request_id", ...fields}}`` (:func:`relay.errors.error_payload`), so that
``request_id`` equals the header. Routing refusals of Quart and Werkzeug (unknown route, wrong method,
body too large) become errors of our tree here; an exception that is not a :class:`RelayError` is a bare
``500 internal`` in production, logged with its request id.

Headers an error implies are added here too: ``Allow`` on 405, ``Retry-After`` (whole seconds, rounded
up) when the error carries ``retry_after_ms``, and ``WWW-Authenticate: Relay-Ed25519`` on
``401 unauthorized`` (§3).

Every answer also waits until the request's body has been received (:func:`finish_reading_the_body`),
whether the handler read it or not: an answer that left a body unread (``404``, ``405``, a ``401`` whose
header was refused before the body was read, a body sent with a ``GET``) would otherwise leave the
keep-alive connection in a state where Hypercorn 0.18 never answers the client's next request on it.
A body that does not arrive within :data:`BODY_DRAIN_S`, or is over ``max_frame_bytes``, gets its
answer with ``Connection: close`` instead, so that the client opens a new connection.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Collection, Mapping

import orjson
import trio
from quart import Quart, Response, g, has_request_context, has_websocket_context, request, websocket
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wrappers import Response as WerkzeugResponse

from relay.config import Settings
from relay.errors import (
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    RelayError,
    TooLarge,
    Unauthorized,
    error_payload,
)
from relay.protocol.codec import MAX_PATH_CHARS
from relay.protocol.signed_requests import AUTH_SCHEME
from relay.protocol.syntax import is_request_id

__all__ = [
    "BODY_DRAIN_S",
    "REQUEST_ID_HEADER",
    "check_query",
    "finish_reading_the_body",
    "install_error_handling",
    "json_response",
    "member_path",
    "no_content",
    "request_id",
]

log = logging.getLogger("relay.http")

REQUEST_ID_HEADER = "X-Request-ID"
#: How long an answer waits for the rest of a request body that its handler did not read (seconds).
BODY_DRAIN_S = 5.0

_MEMBER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "'": "\\'", "\\": "\\\\"}


def request_id() -> str:
    """The request id of the current request or WebSocket upgrade, chosen once per request."""
    known: str | None = g.get("request_id")
    if known is not None:
        return known
    headers = None
    if has_request_context():
        headers = request.headers
    elif has_websocket_context():
        headers = websocket.headers
    sent = headers.get(REQUEST_ID_HEADER) if headers is not None else None
    value = sent if sent is not None and is_request_id(sent) else uuid.uuid4().hex
    g.request_id = value
    return value


def json_response(
    body: Mapping[str, object], status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``body`` as ``application/json``, members in the order given (Quart's own encoder sorts them)."""
    response = Response(orjson.dumps(body), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def no_content() -> Response:
    """An empty ``204`` answer, without a ``Content-Type``."""
    response = Response(b"", status=204)
    del response.headers["Content-Type"]
    return response


def member_path(*segments: str) -> str:
    """The RFC 9535 normalized path of a member, in the spelling ``bad_request`` uses (``$.query.x``)."""
    parts = ["$"]
    for segment in segments:
        if _MEMBER_NAME.fullmatch(segment):
            parts.append(f".{segment}")
        else:
            escaped = "".join(
                _ESCAPES.get(char) or (f"\\u{ord(char):04x}" if char < " " else char) for char in segment
            )
            parts.append(f"['{escaped}']")
    text = "".join(parts)
    return text if len(text) <= MAX_PATH_CHARS else text[: MAX_PATH_CHARS - 1] + "…"


def check_query(allowed: Collection[str] = ()) -> None:
    """Refuse the first query parameter not in ``allowed`` with ``bad_request``, path ``$.query.<name>``.

    §1: unknown query parameters are refused like unknown members, so a typo never changes meaning.
    Call at the top of a handler: routing (404, 405) has already happened by then.
    """
    for name in request.args:
        if name not in allowed:
            path = member_path("query", name)
            raise BadRequest(f"{path}: unknown query parameter", path=path)


#: Werkzeug's refusals that have a code of their own in our tree (§6).
_HTTP_ERRORS: dict[int, type[RelayError]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: TooLarge,
}


def _from_werkzeug(exc: HTTPException) -> tuple[RelayError, int]:
    status = exc.code or 500
    known = _HTTP_ERRORS.get(status)
    if known is not None:
        return known(), status
    if 400 <= status < 500:
        # Any other refusal of the request itself (a body not received in time, a malformed request
        # line Werkzeug noticed): the request is malformed as a whole.
        return BadRequest(f"$: {exc.name.lower()}", path="$"), 400
    return InternalError(detail=f"{status} {exc.name}: {exc.description}"), 500


async def finish_reading_the_body(response: Response) -> Response:
    """Return ``response`` once the current request's body has been received whole (module docstring).

    Quart receives the body beside the handler, whether the handler reads it or not; this waits for the
    end of it, at most :data:`BODY_DRAIN_S`. A body still arriving then, or one over the size limit
    (whose rest Quart discards), gets ``Connection: close`` on the answer. A body already read, or
    none, costs nothing.
    """
    try:
        with trio.move_on_after(BODY_DRAIN_S) as waited:
            await request.body
    except RequestEntityTooLarge:
        response.headers["Connection"] = "close"
    else:
        if waited.cancelled_caught:
            response.headers["Connection"] = "close"
    return response


def _retry_after_seconds(retry_after_ms: object) -> str | None:
    if isinstance(retry_after_ms, int) and not isinstance(retry_after_ms, bool) and retry_after_ms >= 0:
        return str(-(-retry_after_ms // 1000))
    return None


def install_error_handling(app: Quart, settings: Settings) -> None:
    """Give every response of ``app`` a request id, and every error the §6 body and headers."""

    def error_response(exc: BaseException, status: int) -> Response:
        payload = error_payload(exc, request_id=request_id(), production=settings.production, http=True)
        headers: dict[str, str] = {}
        if isinstance(exc, RelayError):
            retry_after = _retry_after_seconds(exc.fields.get("retry_after_ms"))
            if retry_after is not None:
                headers["Retry-After"] = retry_after
            if isinstance(exc, Unauthorized):
                headers["WWW-Authenticate"] = AUTH_SCHEME
        return json_response({"error": payload}, status, headers)

    @app.before_request
    async def assign_request_id() -> None:
        request_id()

    @app.before_websocket
    async def assign_websocket_request_id() -> None:
        request_id()

    @app.after_request
    async def add_request_id(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = request_id()
        return response

    app.after_request(finish_reading_the_body)

    @app.after_websocket
    async def add_websocket_request_id(
        response: Response | WerkzeugResponse | None,
    ) -> Response | WerkzeugResponse | None:
        if response is not None:
            response.headers[REQUEST_ID_HEADER] = request_id()
        return response

    @app.errorhandler(RelayError)
    async def relay_error(exc: RelayError) -> Response:
        if isinstance(exc, InternalError):
            log.error("internal error (request id %s): %s", request_id(), exc.detail or exc.message)
        return error_response(exc, exc.http_status)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        error, status = _from_werkzeug(exc)
        if isinstance(error, InternalError):
            log.error("internal error (request id %s): %s", request_id(), error.detail)
        response = error_response(error, status)
        if status == 405:
            for name, value in exc.get_headers():
                if name.lower() == "allow":  # 405 names the methods the route has
                    response.headers["Allow"] = value
        return response

    @app.errorhandler(Exception)
    async def unexpected_error(exc: Exception) -> Response:
        log.exception("internal error (request id %s)", request_id())
        return error_response(exc, 500)
