"""What every HTTP request leaves behind: its request id in the logs' context, two metrics, a span.

``relay_http_requests_total{route, status}`` and ``relay_http_request_seconds{route}``, where the route
is the URL rule that matched (``/v1/devices/<device_id:device_id>``), never the path as sent (which would
put ids in labels), or ``unmatched``. With tracing on (:mod:`relay.ops.tracing`) each request is a
``http <METHOD> <route>`` server span carrying the method, the route and the status.
"""

from __future__ import annotations

import trio
from opentelemetry import trace
from quart import Quart, Response, g, request

from relay.http.errors import request_id
from relay.ops import logs
from relay.ops.metrics import Metrics
from relay.ops.tracing import tracer

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
        route = _route()
        span = tracer.start_span(f"http {request.method} {route}", kind=trace.SpanKind.SERVER)
        if span.is_recording():
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("http.route", route)
        g.relay_span = span

    @app.after_request
    async def count(response: Response) -> Response:
        route = _route()
        metrics.http_requests.labels(route, str(response.status_code)).inc()
        started = g.get("relay_started")
        if isinstance(started, float):
            metrics.http_request_seconds.labels(route).observe(trio.current_time() - started)
        span = g.get("relay_span")
        if isinstance(span, trace.Span):
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                span.set_status(trace.StatusCode.ERROR)
            span.end()
        return response
