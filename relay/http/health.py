"""``GET /readyz`` and ``GET /metrics`` (PROTOCOL.md §6); ``/healthz`` is in :mod:`relay.http.server`.

``/readyz`` answers ``200 {"status": "ready", "components": {...}}``, or ``503`` with the same
``components`` (each ``ok`` or what failed) beside the error object every HTTP error carries:
``{"error": {"code": "unavailable", ...}, "status": "not_ready", "components": {...}}``
(:mod:`relay.ops.readiness` says what is checked). ``/metrics`` is the Prometheus text format; with
``RELAY_METRICS_BIND`` set it is served only on that address (:mod:`relay.serving`).
"""

from __future__ import annotations

from quart import Blueprint, Response

from relay.errors import Unavailable, error_payload
from relay.http.errors import check_query, json_response, request_id
from relay.http.runtime import current_runtime
from relay.ops.metrics import CONTENT_TYPE
from relay.ops.readiness import Readiness

__all__ = ["blueprint"]

blueprint = Blueprint("health", __name__)


@blueprint.get("/readyz")
async def readyz() -> Response:
    check_query()
    runtime = current_runtime()
    readiness = runtime.readiness
    if not isinstance(readiness, Readiness):
        components = {"database": "not_started", "bus": "not_started", "draining": "no", "cluster": "ok"}
        ready = False
    else:
        report = await readiness.report()
        components, ready = report.components, report.ready
    runtime.metrics.ready.set(1 if ready else 0)
    if ready:
        return json_response({"status": "ready", "components": components})
    error = error_payload(
        Unavailable("Not ready"), request_id=request_id(), production=runtime.settings.production, http=True
    )
    return json_response({"error": error, "status": "not_ready", "components": components}, 503)


@blueprint.get("/metrics")
async def metrics() -> Response:
    check_query()
    runtime = current_runtime()
    return Response(runtime.metrics.render(), status=200, content_type=CONTENT_TYPE)
