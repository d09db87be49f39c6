"""Every HTTP request is a server span (OpenTelemetry), named by its route, never its path."""

from __future__ import annotations

import trio.testing
from http_support import Relay
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from signed_support import first_device, signed


async def test_a_request_is_one_server_span_named_by_its_route(
    relay: Relay, autojump_clock: trio.testing.MockClock, spans: InMemorySpanExporter
) -> None:
    device = await first_device(relay)
    spans.clear()
    await signed(relay, device, "PATCH", f"/v1/devices/{device.device_id}", json={"name": "Renamed"})
    await relay.request("GET", "/healthz")
    finished = spans.get_finished_spans()
    http = [s for s in finished if s.name.startswith("http ")]
    assert [s.name for s in http] == ["http PATCH /v1/devices/<device_id:device_id>", "http GET /healthz"]
    patch = http[0]
    assert patch.kind is SpanKind.SERVER
    assert patch.attributes is not None
    assert patch.attributes["http.response.status_code"] == 200
    assert device.device_id not in patch.name  # the route, not the path: no ids
    assert patch.status.status_code is not StatusCode.ERROR
