"""Fixtures shared by the whole suite.

Services: a test that needs PostgreSQL or Redis asks for ``postgres_url`` or ``redis_url``. The URLs
come from ``RELAY_TEST_POSTGRES_URL`` and ``RELAY_TEST_REDIS_URL``, which ``bash scripts/test`` sets
after starting throwaway servers. When one is missing the test FAILS, in CI and everywhere else: a
suite that skips what it cannot reach would report success without having tested the store or the bus.
Run ``bash scripts/test``, or set the variable to a server of your own.

Tracing: ``spans`` gives a test the in-memory exporter of the test session's tracer provider. The
provider is installed once per test session (OpenTelemetry refuses to replace a global provider), on
first use; its sampler records only while a test holds ``spans``, so other tests trace nothing, as
with tracing off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes


def _service_url(variable: str, what: str) -> str:
    url = os.environ.get(variable, "")
    if not url:
        pytest.fail(
            f"{variable} is not set: this test needs a real {what}. Run the suite with `bash scripts/test`, "
            f"which starts one, or set {variable} to a {what} URL.",
            pytrace=False,
        )
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a PostgreSQL database the tests may use freely (fails the test when unset)."""
    return _service_url("RELAY_TEST_POSTGRES_URL", "PostgreSQL")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a Redis server the tests may use freely (fails the test when unset)."""
    return _service_url("RELAY_TEST_REDIS_URL", "Redis")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests that call ``relay.cli.main``, which configures the root logger of this process."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class SwitchSampler(Sampler):
    """Records every span while ``enabled``, none otherwise."""

    def __init__(self) -> None:
        self.enabled = False

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        decision = Decision.RECORD_AND_SAMPLE if self.enabled else Decision.DROP
        return SamplingResult(decision, attributes if self.enabled else None, trace_state)

    def get_description(self) -> str:
        return "SwitchSampler"


@pytest.fixture(scope="session")
def span_capture() -> tuple[InMemorySpanExporter, SwitchSampler]:
    """The test session's tracer provider (installed here, once) and its exporter and sampler."""
    exporter = InMemorySpanExporter()
    sampler = SwitchSampler()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.fail("another tracer provider was installed before the gateway tests' own")
    return exporter, sampler


@pytest.fixture
def spans(span_capture: tuple[InMemorySpanExporter, SwitchSampler]) -> Iterator[InMemorySpanExporter]:
    """The exporter of finished spans, empty at the start; spans are recorded during the test only."""
    exporter, sampler = span_capture
    exporter.clear()
    sampler.enabled = True
    try:
        yield exporter
    finally:
        sampler.enabled = False
        exporter.clear()
