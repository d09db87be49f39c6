"""The JSON form of bus notes with the trace context of events (relay.bus.base, relay.bus.tracing).

Pure: no Redis. A node of the previous version refuses members it does not know, so an event without
a trace must be written exactly as before, and a note from such a node (no ``trace``) must parse.
"""

from __future__ import annotations

import orjson
import pytest

from relay.bus.base import EventNote, note_from_json, note_to_json
from relay.bus.tracing import current_traceparent

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def event_note(trace: str = "") -> EventNote:
    return EventNote(
        user_id="u", origin_session_id="s", stream="notes", seq=3, frame='{"type":"event"}', trace=trace
    )


def test_an_event_note_with_a_trace_round_trips() -> None:
    note = event_note(TRACEPARENT)
    assert note_from_json(note_to_json(note)) == note
    assert orjson.loads(note_to_json(note))["trace"] == TRACEPARENT


def test_an_event_note_without_a_trace_is_written_as_the_previous_version_wrote_it() -> None:
    assert orjson.loads(note_to_json(event_note())) == {
        "kind": "event",
        "user_id": "u",
        "origin_session_id": "s",
        "stream": "notes",
        "seq": 3,
        "frame": '{"type":"event"}',
    }


def test_an_event_note_of_the_previous_version_parses_with_an_empty_trace() -> None:
    old = b'{"kind":"event","user_id":"u","origin_session_id":"s","stream":"notes","seq":3,"frame":"f"}'
    note = note_from_json(old)
    assert isinstance(note, EventNote)
    assert note.trace == ""


@pytest.mark.parametrize("trace", [1, None, True, ["x"]])
def test_a_trace_that_is_not_a_string_is_refused(trace: object) -> None:
    obj = orjson.loads(note_to_json(event_note()))
    with pytest.raises(ValueError, match="trace"):
        note_from_json(orjson.dumps({**obj, "trace": trace}))


def test_no_span_is_recording_here_so_a_note_carries_no_trace() -> None:
    assert current_traceparent() == ""
