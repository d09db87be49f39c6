"""The client's merge of live delivery and replay (relay.client.ordering): pure, so tested directly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.client.ordering import MAX_BUFFERED_EVENTS, StreamOrder
from relay.protocol.messages import StoredEvent


def event(seq: int, stream: str = "s") -> StoredEvent:
    return StoredEvent(
        stream=stream, seq=seq, id=f"e{seq}", device_id="d", ts=0, received_at=0, expires_at=1, body="null"
    )


def seqs(events: list[StoredEvent]) -> list[int]:
    return [e.seq for e in events]


def test_events_in_order_are_delivered_at_once() -> None:
    order = StreamOrder("s")
    assert seqs(order.offer(event(1))) == [1]
    assert seqs(order.offer(event(2))) == [2]
    assert (order.delivered, order.gap) == (2, False)


def test_an_event_ahead_of_a_missing_one_waits_for_it() -> None:
    order = StreamOrder("s")
    assert order.offer(event(2)) == []
    assert order.offer(event(3)) == []
    assert (order.gap, order.buffered) == (True, 2)
    assert seqs(order.offer(event(1))) == [1, 2, 3]
    assert (order.gap, order.buffered) == (False, 0)


def test_duplicates_from_replay_and_live_are_dropped() -> None:
    order = StreamOrder("s")
    order.offer(event(1))
    assert order.offer(event(1)) == []
    order.offer(event(3))
    assert order.offer(event(3)) == []
    assert order.buffered == 1


def test_a_replay_that_covered_a_missing_seq_passes_over_it_as_expired() -> None:
    order = StreamOrder("s", delivered=4)
    order.offer(event(7))
    order.offer(event(9))
    assert seqs(order.covered(7)) == [7]  # 5 and 6 expired; 8 is still missing
    assert (order.delivered, order.gap) == (7, True)
    assert seqs(order.covered(9)) == [9]
    assert (order.delivered, order.gap) == (9, False)


def test_a_replay_reaching_the_head_releases_what_follows_on() -> None:
    order = StreamOrder("s")
    order.offer(event(3))
    order.offer(event(4))
    assert seqs(order.covered(2)) == [3, 4]
    assert order.delivered == 4


def test_heads_reveal_a_gap_without_any_event() -> None:
    order = StreamOrder("s", delivered=10)
    order.note_head(12)
    assert order.gap
    order.note_head(5)  # heads never move back
    assert order.known_head == 12


def test_events_of_another_stream_are_refused() -> None:
    with pytest.raises(ValueError, match="stream"):
        StreamOrder("s").offer(event(1, stream="t"))


def test_the_buffer_is_bounded_and_the_replay_brings_back_what_it_dropped() -> None:
    order = StreamOrder("s")
    for seq in range(2, MAX_BUFFERED_EVENTS + 10):
        order.offer(event(seq))
    assert order.buffered == MAX_BUFFERED_EVENTS
    assert order.known_head == MAX_BUFFERED_EVENTS + 9


steps = st.lists(
    st.tuples(st.sampled_from(["offer", "offer", "offer", "cover"]), st.integers(min_value=1, max_value=40)),
    max_size=150,
)


@given(steps)
def test_whatever_arrives_the_application_sees_each_seq_at_most_once_in_increasing_order(
    script: list[tuple[str, int]],
) -> None:
    order = StreamOrder("s")
    out: list[int] = []
    for kind, value in script:
        out += seqs(order.offer(event(value)) if kind == "offer" else order.covered(value))
    offered = {value for kind, value in script if kind == "offer"}
    assert out == sorted(set(out))
    assert set(out) <= offered
    assert order.delivered >= max(out, default=0)


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=150))
def test_without_a_replay_exactly_the_arrived_prefix_is_delivered(arrivals: list[int]) -> None:
    order = StreamOrder("s")
    out = [e.seq for seq in arrivals for e in order.offer(event(seq))]
    prefix = 0
    while prefix + 1 in set(arrivals):
        prefix += 1
    assert out == list(range(1, prefix + 1))
    assert order.gap == (max(arrivals, default=0) > prefix)
