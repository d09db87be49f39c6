"""Prometheus metrics of one relay process (prometheus-client), served at ``/metrics``.

:class:`Metrics` owns its own :class:`~prometheus_client.CollectorRegistry` (not the library's global
one), so several apps in one process (the tests) never share counters. Every metric is listed, with
what it means and what to do about it, in ``docs/operations.md``; :data:`METRIC_NAMES` is the list the
tests hold that document to. Labels are bounded sets (outcome codes, operation names), never ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

__all__ = ["CONTENT_TYPE", "METRIC_NAMES", "Metrics"]

#: The media type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Latency buckets in seconds, from 100 µs (an in-memory fan-out) to 10 s (a commit given up on).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    10,
)
#: Revocation to close: the goal is well under 100 ms, the promise 1 s (PROTOCOL.md §5).
REVOCATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2.5, 5)


class Metrics:
    """Every metric relay exports. Build one per app; :meth:`render` is the ``/metrics`` body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions_open = Gauge("relay_sessions_open", "Live WebSocket sessions on this node.", registry=r)
        self.handshakes = Counter(
            "relay_handshakes",
            "WebSocket handshakes by outcome (welcome or the error code).",
            ["outcome"],
            registry=r,
        )
        self.events_published = Counter(
            "relay_events_published", "Events committed by this node.", registry=r
        )
        self.events_duplicate = Counter(
            "relay_events_duplicate", "Publishes answered with the original ack (retries).", registry=r
        )
        self.events_delivered = Counter(
            "relay_events_delivered", "Event frames queued for live sessions of this node.", registry=r
        )
        self.events_refused = Counter(
            "relay_events_refused", "Publishes refused, by error code.", ["code"], registry=r
        )
        self.publish_commit_seconds = Histogram(
            "relay_publish_commit_seconds",
            "Time from a publish being read to its commit (store append).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fanout_seconds = Histogram(
            "relay_fanout_seconds",
            "Time to hand a committed event to the bus (local: to every recipient's queue).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.replay_pages = Counter(
            "relay_replay_pages", "Replay and streams pages served.", ["kind"], registry=r
        )
        self.revocation_close_seconds = Histogram(
            "relay_revocation_close_seconds",
            "Time from a revocation or deletion being known to this node to its sessions being closed.",
            ["path"],
            buckets=REVOCATION_BUCKETS,
            registry=r,
        )
        self.sessions_closed = Counter(
            "relay_sessions_closed", "Sessions closed, by the error code of the close.", ["code"], registry=r
        )
        self.store_errors = Counter(
            "relay_store_errors",
            "Store calls that failed (unavailable), by operation.",
            ["operation"],
            registry=r,
        )
        self.bus_errors = Counter(
            "relay_bus_errors",
            "Bus calls that failed (unavailable), by operation.",
            ["operation"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "relay_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["component"],
            registry=r,
        )
        self.rate_limited = Counter(
            "relay_rate_limited", "Requests refused by a rate limit, by limit.", ["limit"], registry=r
        )
        self.http_requests = Counter(
            "relay_http_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.http_request_seconds = Histogram(
            "relay_http_request_seconds",
            "HTTP request handling time, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_write_queue = Gauge(
            "relay_store_write_queue", "Write requests waiting for the store's writer.", registry=r
        )
        self.ready = Gauge("relay_ready", "1 when /readyz answers 200, else 0.", registry=r)
        for component in ("store", "bus"):
            self.breaker_state.labels(component).set(0)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)


#: Every metric family relay exports (their exposition names: counters get ``_total``).
METRIC_NAMES = (
    "relay_sessions_open",
    "relay_handshakes_total",
    "relay_events_published_total",
    "relay_events_duplicate_total",
    "relay_events_delivered_total",
    "relay_events_refused_total",
    "relay_publish_commit_seconds",
    "relay_fanout_seconds",
    "relay_replay_pages_total",
    "relay_revocation_close_seconds",
    "relay_sessions_closed_total",
    "relay_store_errors_total",
    "relay_bus_errors_total",
    "relay_breaker_state",
    "relay_rate_limited_total",
    "relay_http_requests_total",
    "relay_http_request_seconds",
    "relay_store_write_queue",
    "relay_ready",
)
