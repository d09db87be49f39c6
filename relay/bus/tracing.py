"""Trace context across the bus: a publish on one node and its delivery on another are one trace.

The node that makes an :class:`~relay.bus.base.EventNote` puts the current span's W3C
``traceparent`` into it (:func:`current_traceparent`: the gateway's ``fanout`` span, child of
``ws.publish``). Every node that hands such a note to its :class:`~relay.bus.local.Fanout` does so
inside a short ``ws.deliver`` span whose parent is that context (:func:`deliver`), the publishing
node included (the in-process bus delivers inside the ``fanout`` span itself).

Costs when tracing is off: one look at the current span per event published (no span is recording,
so the note's ``trace`` stays empty), and nothing at all per note received, since a note with an
empty ``trace`` is delivered without a span. Span attributes name the stream's length, never ids,
names or bodies (as everywhere in relay).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import trace

from relay.bus.base import EventNote, Note
from relay.ops.tracing import extract, inject, tracer

if TYPE_CHECKING:
    from relay.bus.local import Fanout

__all__ = ["DELIVER_SPAN", "current_traceparent", "deliver"]

#: The span a node makes around handing a traced event to its own sessions.
DELIVER_SPAN = "ws.deliver"


def current_traceparent() -> str:
    """The ``traceparent`` of the current span, or ``""`` when no span is recording (tracing off, or
    this publish not sampled)."""
    if not trace.get_current_span().is_recording():
        return ""
    return inject().get("traceparent", "")


def deliver(fanout: Fanout, note: Note) -> None:
    """Hand ``note`` to ``fanout``; a traced event inside a ``ws.deliver`` span, child of its trace."""
    if not isinstance(note, EventNote) or not note.trace:
        fanout.apply(note)
        return
    with tracer.start_as_current_span(
        DELIVER_SPAN,
        context=extract({"traceparent": note.trace}),
        kind=trace.SpanKind.CONSUMER,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        span.set_attribute("relay.stream_length", len(note.stream))
        fanout.apply(note)
