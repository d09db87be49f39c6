"""Tracing with OpenTelemetry, configured by the standard ``OTEL_*`` variables and off by default.

:func:`configure_tracing` installs an SDK :class:`~opentelemetry.sdk.trace.TracerProvider` when the
environment asks for traces: ``OTEL_TRACES_EXPORTER`` set to ``otlp`` or ``console`` (``none``, or unset,
means off), unless ``OTEL_SDK_DISABLED=true``. The exporter then reads its own standard variables
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``, ...). Without a
provider, :data:`tracer` is OpenTelemetry's no-op tracer and spans cost next to nothing.

Spans relay makes: ``http <route>`` for HTTP requests, ``ws.handshake``, ``ws.publish`` with children
``validate``, ``commit`` and ``fanout``, ``ws.replay_page``, and ``ws.deliver`` on the node that
delivers an event it received from the bus. The trace context of a publish travels with its event on
the bus (:func:`inject` / :func:`extract`, W3C ``traceparent``), so a publish on node A and its delivery
on node B are one trace. Span attributes name streams' lengths and codes, never ids, names or bodies.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from relay import __version__

__all__ = ["configure_tracing", "extract", "inject", "tracer", "tracing_wanted"]

tracer = trace.get_tracer("relay", __version__)


def tracing_wanted(environ: Mapping[str, str]) -> str | None:
    """The exporter the environment asks for (``otlp``, ``console``), or None when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter in ("", "none"):
        return None
    if exporter not in ("otlp", "console"):
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r}: relay supports otlp, console or none")
    return exporter


def configure_tracing(
    environ: Mapping[str, str], *, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Install a tracer provider when ``environ`` asks for one (or ``exporter`` is given: tests pass
    the SDK's in-memory exporter). Returns the provider, or None when tracing stays off."""
    kind = tracing_wanted(environ)
    if exporter is None and kind is None:
        return None
    if exporter is None:
        if kind == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
    name = environ.get("OTEL_SERVICE_NAME", "relay")
    provider = TracerProvider(
        resource=Resource.create({"service.name": name, "service.version": __version__})
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def inject() -> dict[str, str]:
    """The current trace context as carrier headers (``traceparent``...), for a bus note; empty when
    no span is recording."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str]) -> context.Context:
    """The trace context a bus note carried (use as the parent of the delivery's span)."""
    return propagate.extract(dict(carrier))
