"""The metrics registry (relay.ops.metrics): every family exported, apps never share counters, and
every metric is documented for operators."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from relay.ops.metrics import METRIC_NAMES, Metrics

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_every_metric_family_is_exported() -> None:
    metrics = Metrics()
    metrics.handshakes.labels("welcome").inc()
    metrics.events_refused.labels("seq_conflict").inc(2)
    metrics.publish_commit_seconds.observe(0.002)
    text = metrics.render().decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    exposed = {n.removesuffix("_total") for n in METRIC_NAMES}
    assert exposed <= names
    assert 'relay_events_refused_total{code="seq_conflict"} 2.0' in text
    assert 'relay_breaker_state{component="store"} 0.0' in text


def test_two_apps_in_one_process_do_not_share_counters() -> None:
    first, second = Metrics(), Metrics()
    first.events_published.inc()
    assert "relay_events_published_total 1.0" in first.render().decode()
    assert "relay_events_published_total 0.0" in second.render().decode()


def test_every_metric_is_documented_for_operators() -> None:
    text = DOCS.read_text()
    missing = [name for name in METRIC_NAMES if f"`{name}`" not in text]
    assert missing == []
