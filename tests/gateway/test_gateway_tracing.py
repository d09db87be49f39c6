"""Spans of the WebSocket side (OpenTelemetry, with the SDK's in-memory exporter: the ``spans`` fixture).

``ws.handshake``, ``ws.publish`` with ``validate``, ``commit`` and ``fanout``, ``ws.replay_page``, and
``ws.deliver`` on every node that hands a traced event to its sessions, in the publish's trace: through
the local bus, and from one node to another through Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import trio
from gateway_harness import Client, Device, Relay, RelayFactory
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from trio.testing import MockClock, wait_all_tasks_blocked

from relay.bus.redis import RedisBus
from relay.store.memory import MemoryStore

#: Real time: the cross-node test runs threads and sockets.
REAL_CAP_S = 10


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def one(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, [s.name for s in spans.get_finished_spans()]
    return found[0]


def children(spans: InMemorySpanExporter, parent: ReadableSpan) -> list[str]:
    return [
        s.name
        for s in spans.get_finished_spans()
        if s.parent is not None and parent.context is not None and s.parent.span_id == parent.context.span_id
    ]


def same_trace(*found: ReadableSpan) -> bool:
    ids = {s.context.trace_id for s in found if s.context is not None}
    return len(ids) == 1 and len(found) > 0


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def pair(relay: Relay) -> tuple[Device, Client, Client]:
    user = await relay.user()
    phone, laptop = await relay.device(user), await relay.device(user)
    phone_client = await relay.connect(phone)
    laptop_client = await relay.connect(laptop)
    await phone_client.expect("presence")
    return phone, phone_client, laptop_client


async def test_a_publish_is_a_ws_publish_span_with_validate_commit_and_fanout_and_its_delivery_follows(
    relay: Relay, autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    _, phone_client, laptop_client = await pair(relay)
    spans.clear()

    assert (await relay.publish(phone_client, "notes", "e1", {"a": 1}))["type"] == "ack"
    await laptop_client.expect("event")
    await wait_all_tasks_blocked()

    publish = one(spans, "ws.publish")
    assert children(spans, publish) == ["validate", "commit", "fanout"]
    assert publish.attributes is not None
    assert dict(publish.attributes) == {"relay.stream_length": len("notes"), "relay.duplicate": False}
    fanout = one(spans, "fanout")
    deliver = one(spans, "ws.deliver")  # the local bus hands the event over inside the fanout span
    assert parent_of(deliver) == span_id(fanout)
    assert same_trace(publish, fanout, deliver, one(spans, "validate"), one(spans, "commit"))
    assert deliver.attributes is not None
    assert deliver.attributes["relay.stream_length"] == len("notes")


async def test_a_duplicate_and_a_refusal_are_attributes_of_their_publish_span(
    relay: Relay, autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    _, phone_client, _ = await pair(relay)
    await relay.publish(phone_client, "notes", "e1")
    spans.clear()

    assert (await relay.publish(phone_client, "notes", "e1"))["duplicate"] is True
    assert (await relay.publish(phone_client, "notes", "e2", expect_seq=5))["code"] == "seq_conflict"
    assert (await relay.publish(phone_client, "notes!", "e3"))["code"] == "bad_request"
    await wait_all_tasks_blocked()

    duplicate, conflict, malformed = named(spans, "ws.publish")
    assert duplicate.attributes is not None
    assert conflict.attributes is not None
    assert malformed.attributes is not None
    assert duplicate.attributes["relay.duplicate"] is True
    assert children(spans, duplicate) == ["validate", "commit"]  # a duplicate is not fanned out again
    assert conflict.attributes["relay.refusal"] == "seq_conflict"
    assert dict(malformed.attributes) == {"relay.refusal": "bad_request"}
    assert named(spans, "ws.deliver") == []


async def test_handshakes_are_spans_with_their_outcome(
    relay: Relay, autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    user = await relay.user()
    device = await relay.device(user)
    await relay.connect(device)
    stalled = await relay.open()
    await stalled.expect_close()
    await wait_all_tasks_blocked()

    outcomes = [s.attributes["relay.outcome"] for s in named(spans, "ws.handshake") if s.attributes]
    assert outcomes == ["welcome", "handshake_timeout"]


async def test_each_page_served_is_a_ws_replay_page_span(
    relay: Relay, autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    _, phone_client, _ = await pair(relay)
    await relay.publish(phone_client, "notes", "e1")
    spans.clear()

    await phone_client.send({"type": "replay", "stream": "notes"})
    await phone_client.expect("replay.page")
    await phone_client.send({"type": "streams"})
    await phone_client.expect("streams.page")
    await phone_client.send({"type": "replay.next", "token": "nonsense"})
    await phone_client.expect("error")
    await wait_all_tasks_blocked()

    pages = [dict(s.attributes or {}) for s in named(spans, "ws.replay_page")]
    assert pages == [
        {"relay.kind": "replay", "relay.stream_length": len("notes")},
        {"relay.kind": "streams"},
        {"relay.kind": "replay", "relay.refusal": "invalid_token"},
    ]


async def test_a_gateway_built_without_tracing_makes_no_spans_and_its_events_carry_no_trace(
    make_relay: RelayFactory, autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    relay = await make_relay(tracing=False)
    assert relay.gateway.context.tracing is False
    _, phone_client, laptop_client = await pair(relay)
    await relay.publish(phone_client, "notes", "e1")
    await laptop_client.expect("event")
    await wait_all_tasks_blocked()
    assert spans.get_finished_spans() == ()


async def test_a_gateway_built_with_a_tracer_provider_installed_traces_by_default(
    relay: Relay, spans: InMemorySpanExporter
) -> None:
    assert relay.gateway.context.tracing is True


async def eventually_spans(spans: InMemorySpanExporter, name: str, count: int) -> Sequence[ReadableSpan]:
    with trio.fail_after(REAL_CAP_S):
        while len(found := named(spans, name)) < count:  # noqa: ASYNC110 (spans have no event to wait on)
            await trio.sleep(0.005)
    return found


async def test_an_event_delivered_on_another_node_through_redis_is_in_the_trace_of_its_publish(
    make_relay: RelayFactory, nursery: trio.Nursery, redis_url: str, spans: InMemorySpanExporter
) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    memory = MemoryStore()  # one database, two nodes
    buses = [RedisBus(redis_url, prefix=prefix) for _ in range(2)]
    with trio.fail_after(REAL_CAP_S):
        for bus in buses:
            await nursery.start(bus.run)
    node_a = await make_relay(memory=memory, bus=buses[0])
    node_b = await make_relay(memory=memory, bus=buses[1])
    user = await node_a.user()
    phone, laptop = await node_a.device(user), await node_a.device(user)
    phone_client = await node_a.connect(phone)
    laptop_client = await node_b.connect(laptop)
    await phone_client.expect("presence")
    spans.clear()

    assert (await node_a.publish(phone_client, "notes", "e1", {"a": 1}))["type"] == "ack"
    assert (await laptop_client.expect("event"))["id"] == "e1"

    publish = (await eventually_spans(spans, "ws.publish", 1))[0]
    fanout = one(spans, "fanout")
    # Node A holds a session of the user too, so it hears its own note: one ws.deliver per node.
    deliveries = await eventually_spans(spans, "ws.deliver", 2)
    assert len(deliveries) == 2
    assert same_trace(publish, fanout, *deliveries)
    assert {parent_of(d) for d in deliveries} == {span_id(fanout)}
    assert parent_of(fanout) == span_id(publish)
