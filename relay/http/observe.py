"""What every HTTP request leaves behind: its request id in the logs' context, and two metrics.

``relay_http_requests_total{route, status}`` and ``relay_http_request_seconds{route}``, where the route
is the URL rule that matched (``/v1/devices/<uuid:device_id>``), never the path as sent (which would
put ids in labels), or ``unmatched``.
"""

from __future__ import annotations

import trio
from quart import Quart, Response, g, request

from relay.http.errors import request_id
from relay.ops import logs
from relay.ops.metrics import Metrics

__all__ = ["install_observation"]


def _route() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


def install_observation(app: Quart, metrics: Metrics) -> None:
    """Put the request id into :data:`relay.ops.logs.request_id` and count every answer."""

    @app.before_request
    async def begin() -> None:
        logs.request_id.set(request_id())
        g.relay_started = trio.current_time()

    @app.after_request
    async def count(response: Response) -> Response:
        route = _route()
        metrics.http_requests.labels(route, str(response.status_code)).inc()
        started = g.get("relay_started")
        if isinstance(started, float):
            metrics.http_request_seconds.labels(route).observe(trio.current_time() - started)
        return response
