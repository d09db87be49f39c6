"""Browser clients (PROTOCOL.md §6): CORS for the origins of ``RELAY_CORS_ORIGINS``, and nothing for others.

With no origin configured (the default) nothing here runs. Otherwise, for a request whose ``Origin``
is one of the configured origins (compared exactly: browsers send the normal form the settings hold):

- a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) of a route that exists is answered
  ``204`` with ``Access-Control-Allow-Origin: <origin>``, ``Access-Control-Allow-Methods`` (the methods
  of the route), ``Access-Control-Allow-Headers: Authorization, Content-Type, X-Request-ID`` and
  ``Access-Control-Max-Age``; routing still comes first, so a preflight of an unknown route is ``404``;
- every other answer (errors included) carries ``Access-Control-Allow-Origin: <origin>`` and
  ``Access-Control-Expose-Headers: X-Request-ID, Retry-After, WWW-Authenticate``, so that a script can
  read the request id and the headers its errors come with.

No credentials mode: authentication is the signature, never a cookie. Every answer then also carries
``Vary: Origin``, so that a cache never hands one origin's answer to another. A request from any other
origin, or without ``Origin``, gets no ``Access-Control-*`` header at all (a preflight of it gets the
plain ``OPTIONS`` answer, which a browser treats as a refusal).
"""

from __future__ import annotations

from quart import Quart, Response, request
from quart.globals import request_ctx

from relay.config import Settings
from relay.http.errors import no_content

__all__ = ["ALLOWED_HEADERS", "EXPOSED_HEADERS", "PREFLIGHT_MAX_AGE_S", "install_cors"]

#: The request headers a browser may send (§6).
ALLOWED_HEADERS = "Authorization, Content-Type, X-Request-ID"
#: The answer headers a script may read.
EXPOSED_HEADERS = "X-Request-ID, Retry-After, WWW-Authenticate"
#: How long a browser may cache a preflight answer (seconds).
PREFLIGHT_MAX_AGE_S = 600


def _allowed_origin(origins: frozenset[str]) -> str | None:
    origin = request.headers.get("Origin")
    return origin if origin is not None and origin in origins else None


def install_cors(app: Quart, settings: Settings) -> None:
    """Answer preflights and label answers for ``settings.cors_origins`` (module docstring)."""
    origins = frozenset(settings.cors_origins)
    if not origins:
        return

    @app.before_request
    async def answer_preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = _allowed_origin(origins)
        if origin is None or request.routing_exception is not None or request.url_rule is None:
            return None  # routing (404) or the plain OPTIONS answer
        url_adapter = request_ctx.url_adapter
        assert url_adapter is not None
        methods = sorted(url_adapter.allowed_methods())
        response = no_content()
        response.headers["Access-Control-Allow-Methods"] = ", ".join(methods)
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
        return response

    @app.after_request
    async def label_for_origin(response: Response) -> Response:
        response.vary.add("Origin")
        origin = _allowed_origin(origins)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            if request.method != "OPTIONS":
                response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        return response
