"""The gateway's metrics (``docs/operations.md``), bound once so that a message costs no label lookup.

:class:`GatewayInstruments` wraps the app's :class:`~relay.ops.metrics.Metrics`: the children of the
labelled metrics the hot paths use (``welcome``, the replay kinds, the revocation paths, the two rate
limits) are bound when the gateway is built, the unlabelled ones are used through their bound
methods, and the children of the outcome and error-code labels, a small fixed set, are bound the
first time each code is seen. Durations are differences of trio's clock (:func:`trio.current_time`),
so they are exact under :class:`trio.testing.MockClock`.

What is counted where:

=================================== ===========================================================
``relay_sessions_open``             :meth:`Gateway.handle`: up when a session is made, down when it ends
``relay_handshakes_total``          ``welcome`` when the welcome is queued; else, when the session
                                    ends, the code it ended with (:meth:`session_ended`)
``relay_sessions_closed_total``     when the session ends, the code of its close
``relay_events_*``                  the publisher (``delivered``: :meth:`Session.send_live`)
``relay_publish_commit_seconds``    the publisher: from the frame read to the append returning
``relay_fanout_seconds``            the publisher: the hand-over to the bus
``relay_replay_pages_total``        the pager, per page queued
``relay_revocation_close_seconds``  the session's writer, once the close of a revocation is sent
``relay_rate_limited_total``        the publisher (``publish``) and :meth:`Gateway.handle`
                                    (``handshake``)
=================================== ===========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

import attrs
from prometheus_client import Counter

from relay.errors import RelayError
from relay.ops.metrics import Metrics

__all__ = [
    "CANCELLED",
    "DISCONNECTED",
    "GatewayInstruments",
    "PageKind",
    "RevocationPath",
    "error_code",
]

#: The ``code`` (and handshake ``outcome``) of a session whose peer went away before any close of ours.
DISCONNECTED = "disconnected"
#: The ``code`` of a session cancelled from outside (the server stopped) without a close of its own.
CANCELLED = "cancelled"

#: How a revocation reached the session: the bus (``Session.end``) or the store's revocation log.
RevocationPath: TypeAlias = Literal["bus", "log"]
#: ``replay`` for ``replay`` and ``replay.next``, ``streams`` for ``streams``.
PageKind: TypeAlias = Literal["replay", "streams"]


def error_code(error: BaseException) -> str:
    """The wire code an error is answered with (``internal`` for anything that is not a RelayError)."""
    return error.code if isinstance(error, RelayError) else "internal"


@attrs.define(eq=False)
class GatewayInstruments:
    """The gateway's side of :class:`~relay.ops.metrics.Metrics` (see the module docstring)."""

    metrics: Metrics
    #: Bound methods of the unlabelled metrics, for the per-message paths.
    delivered: Callable[[], None] = attrs.field(init=False)
    published: Callable[[], None] = attrs.field(init=False)
    duplicate: Callable[[], None] = attrs.field(init=False)
    commit_seconds: Callable[[float], None] = attrs.field(init=False)
    fanout_seconds: Callable[[float], None] = attrs.field(init=False)
    publish_rate_limited: Callable[[], None] = attrs.field(init=False)
    handshake_rate_limited: Callable[[], None] = attrs.field(init=False)
    _welcome: Callable[[], None] = attrs.field(init=False)
    _pages: dict[str, Callable[[], None]] = attrs.field(init=False)
    _revocations: dict[str, Callable[[float], None]] = attrs.field(init=False)
    _refused: dict[str, Callable[[], None]] = attrs.field(factory=dict, init=False)
    _closed: dict[str, Callable[[], None]] = attrs.field(factory=dict, init=False)
    _handshakes: dict[str, Callable[[], None]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        m = self.metrics
        self.delivered = m.events_delivered.inc
        self.published = m.events_published.inc
        self.duplicate = m.events_duplicate.inc
        self.commit_seconds = m.publish_commit_seconds.observe
        self.fanout_seconds = m.fanout_seconds.observe
        self.publish_rate_limited = m.rate_limited.labels("publish").inc
        self.handshake_rate_limited = m.rate_limited.labels("handshake").inc
        self._welcome = m.handshakes.labels("welcome").inc
        self._pages = {kind: m.replay_pages.labels(kind).inc for kind in ("replay", "streams")}
        self._revocations = {
            path: m.revocation_close_seconds.labels(path).observe for path in ("bus", "log")
        }

    # --- sessions -------------------------------------------------------------------------------------

    def session_opened(self) -> None:
        self.metrics.sessions_open.inc()

    def welcomed(self) -> None:
        """A handshake ended with ``welcome``."""
        self._welcome()

    def session_ended(self, code: str, *, welcomed: bool) -> None:
        """A session ended with ``code``; a session never welcomed also counts as a handshake that
        ended so. Called once per session, after :meth:`session_opened`."""
        self.metrics.sessions_open.dec()
        _bound(self._closed, self.metrics.sessions_closed, code)()
        if not welcomed:
            _bound(self._handshakes, self.metrics.handshakes, code)()

    def revocation_closed(self, path: RevocationPath, seconds: float) -> None:
        """The close of a revoked session was sent, ``seconds`` after this node learned of it."""
        self._revocations[path](seconds)

    # --- publishes and pages --------------------------------------------------------------------------

    def refused(self, code: str) -> None:
        """A publish was answered with the error ``code`` (nothing was stored)."""
        _bound(self._refused, self.metrics.events_refused, code)()

    def page(self, kind: PageKind) -> None:
        self._pages[kind]()


def _bound(cache: dict[str, Callable[[], None]], counter: Counter, label: str) -> Callable[[], None]:
    """The ``inc`` of ``counter``'s child for ``label``, bound the first time (labels are codes: few)."""
    inc = cache.get(label)
    if inc is None:
        inc = cache[label] = counter.labels(label).inc
    return inc
