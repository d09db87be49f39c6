"""The gateway's spans (OpenTelemetry; :mod:`relay.ops.tracing` installs a provider, off by default).

``ws.handshake`` (attribute ``relay.outcome``: ``welcome`` or the code that ended it), ``ws.publish``
with the children ``validate``, ``commit`` and ``fanout`` (attributes ``relay.stream_length``,
``relay.duplicate``, ``relay.refusal``), and ``ws.replay_page`` (``relay.kind``,
``relay.stream_length``, ``relay.refusal``). The ``fanout`` span is current while the event is handed
to the bus, which carries its context to every node's ``ws.deliver`` (:mod:`relay.bus.tracing`).
Attributes are lengths and codes, never ids, names or bodies; exceptions are not recorded (their
text could quote a client's input).

Whether a gateway makes spans is decided when it is built (``GatewayContext.tracing``): with no
tracer provider installed, even OpenTelemetry's no-op spans cost several microseconds each, so a
gateway that does not trace skips them (:func:`span` returns a shared null context).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import Span

from relay.gateway.inbound import PeerGone
from relay.gateway.instruments import CANCELLED, DISCONNECTED, error_code
from relay.ops.tracing import tracer

if TYPE_CHECKING:
    from relay.gateway.session import Session

__all__ = ["handshake_span", "span", "tracing_installed"]

_NO_SPAN: contextlib.AbstractContextManager[Span] = contextlib.nullcontext(trace.INVALID_SPAN)


def tracing_installed() -> bool:
    """Whether a tracer provider other than OpenTelemetry's default (the no-op proxy) is installed."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def span(tracing: bool, name: str) -> contextlib.AbstractContextManager[Span]:
    """A span ``name``, current inside the block, when ``tracing``; else a null context (its span
    is OpenTelemetry's invalid span, whose methods do nothing)."""
    if not tracing:
        return _NO_SPAN
    return tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False)


@contextlib.contextmanager
def handshake_span(session: Session) -> Iterator[None]:
    """``ws.handshake`` around the block, its outcome the code of whatever ends it (or ``welcome``)."""
    with span(session.ctx.tracing, "ws.handshake") as current:
        try:
            yield
        except PeerGone:
            current.set_attribute("relay.outcome", DISCONNECTED)
            raise
        except BaseException as exc:  # Cancelled: the session was closed meanwhile, by its request
            current.set_attribute("relay.outcome", _cancelled_outcome(session, exc))
            raise
        current.set_attribute("relay.outcome", "welcome")


def _cancelled_outcome(session: Session, exc: BaseException) -> str:
    if isinstance(exc, Exception):
        return error_code(exc)
    code = session.end_code
    return CANCELLED if code is None else code
