"""Property tests of the codec: decoding is total (a message or a RelayError, never anything else), the
fast duplicate and depth checks agree with exact ones, and every valid message round-trips."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.errors import InvalidJson, RelayError
from relay.protocol import frames
from relay.protocol.codec import (
    answer_context,
    decode_client,
    decode_server,
    encode_client,
    encode_error,
    encode_server,
    parse_object,
    structure_client,
)
from relay.protocol.jsonio import canonical_json
from relay.protocol.messages import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    Ack,
    Auth,
    Challenge,
    DeviceNotice,
    Error,
    Event,
    Heads,
    Hello,
    Limits,
    Ping,
    Pong,
    Presence,
    Publish,
    Replay,
    ReplayNext,
    ReplayPage,
    StoredEvent,
    Streams,
    StreamsPage,
    Welcome,
)

FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TYPE_NAMES = [cls.TYPE for cls in (*CLIENT_MESSAGES, *SERVER_MESSAGES)]
MEMBER_NAMES = sorted(
    {
        field.name
        for cls in (*CLIENT_MESSAGES, *SERVER_MESSAGES, Limits, StoredEvent)
        for field in attrs.fields(cls)
    }
)

# --- JSON values -----------------------------------------------------------------------------------------

text = st.text(max_size=20)
keys = st.one_of(st.sampled_from(["a", "b", ":", "a:b", "\u00e9", ""]), text)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)),
    max_leaves=25,
)
json_objects = st.dictionaries(keys, json_values, max_size=6)

# Values a protocol field might meet: right, wrong and borderline.
protocol_ish = st.one_of(
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([2**53 - 1, 2**53, 2**64, True, False, 1.0, -0.0, "", "x", None, [], {}]),
    text,
    json_values,
)
message_like = st.builds(
    lambda kind, members, extra: (
        {"type": kind, **members, **extra} if kind is not None else {**members, **extra}
    ),
    st.one_of(st.none(), st.sampled_from([*TYPE_NAMES, "bogus", ""]), protocol_ish),
    st.dictionaries(st.sampled_from(MEMBER_NAMES), protocol_ish, max_size=8),
    st.dictionaries(keys, json_values, max_size=2),
)


def only_relay_errors(decode: Any, data: Any) -> None:
    """Run ``decode``: a RelayError is a fine answer; anything else fails the test."""
    with contextlib.suppress(RelayError):
        decode(data)


# --- (a) arbitrary JSON objects ----------------------------------------------------------------------------


@FAST
@given(message_like)
def test_decoding_any_json_object_gives_a_message_or_a_relay_error(obj: dict[str, Any]) -> None:
    data = json.dumps(obj)
    only_relay_errors(decode_client, data)
    only_relay_errors(decode_server, data)
    only_relay_errors(lambda d: decode_server(d, strict=True), data)
    only_relay_errors(structure_client, obj)
    ctx = answer_context(obj)
    encode_error(InvalidJson(), ctx)


@FAST
@given(json_values)
def test_decoding_any_json_value_gives_a_message_or_a_relay_error(value: Any) -> None:
    data = orjson.dumps(value)
    only_relay_errors(decode_client, data)
    only_relay_errors(decode_server, data)
    if not isinstance(value, dict):
        with pytest.raises(InvalidJson):
            parse_object(data)


# --- (b) arbitrary text and bytes ---------------------------------------------------------------------------

VALID_FRAMES = [
    '{"type": "publish", "id": "e", "stream": "s", "ts": 1, "body": {"a": [1, 2.5, "\\u003a"]}, "ref": "r"}',
    '{"type": "hello", "v": 1, "device_id": "d", "nonce": "n"}',
    '{"type": "replay.page", "stream": "s", "events": [], "head": 0, "next": null}',
]


@st.composite
def mutated_frames(draw: st.DrawFn) -> str:
    """A valid frame with a few characters inserted, deleted or replaced: close to valid, often not."""
    chars = list(draw(st.sampled_from(VALID_FRAMES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(chars)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from([*'{}[]",:\\0123456789.eE-+ntfu', "\ud800", "\x00", "é", "NaN"]))
        if action == "insert":
            chars.insert(at, piece)
        elif chars and at < len(chars):
            if action == "delete":
                del chars[at]
            else:
                chars[at] = piece
    return "".join(chars)


@FAST
@given(st.one_of(st.text(max_size=200), mutated_frames()))
def test_decoding_any_text_gives_a_message_or_a_relay_error(data: str) -> None:
    only_relay_errors(decode_client, data)
    only_relay_errors(decode_server, data)


@FAST
@given(st.one_of(st.binary(max_size=200), mutated_frames().map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_decoding_any_bytes_gives_a_message_or_a_relay_error(data: bytes) -> None:
    only_relay_errors(decode_client, data)
    only_relay_errors(decode_server, data)


# --- the fast checks agree with exact ones --------------------------------------------------------------


def same_json(a: object, b: object) -> bool:
    """Equal, with the same types all the way down (``1 == 1.0 == True`` hides what matters here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same_json(a[k], b[k]) for k in a)
    return a == b


# Integers of any size a double holds, written by the standard library (orjson cannot write them all).
wide_values = st.recursive(
    st.one_of(json_scalars, st.integers(min_value=-(10**40), max_value=10**40)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)),
    max_leaves=25,
)


@FAST
@given(st.dictionaries(keys, wide_values, max_size=6), st.booleans())
def test_parse_object_gives_back_any_object_exactly(obj: dict[str, Any], ascii_only: bool) -> None:
    data = json.dumps(obj, ensure_ascii=ascii_only)
    assert same_json(parse_object(data), obj)
    assert same_json(parse_object(data.encode()), obj)
    assert same_json(frames._parse_exactly(data.encode()), obj)


@st.composite
def objects_with_a_duplicate(draw: st.DrawFn) -> str:
    """The JSON text of an object with one member name repeated in an object at some depth.

    Each spelling of a name is escaped or not at random, so ``"é"`` and ``"\\u00e9"`` must collide too.
    """
    name = draw(keys)
    others = draw(st.dictionaries(keys.filter(lambda k: k != name), json_values, max_size=3))
    members = draw(st.permutations([(name, draw(json_values)), (name, draw(json_values)), *others.items()]))
    text_ = (
        "{"
        + ", ".join(
            f"{json.dumps(key, ensure_ascii=draw(st.booleans()))}: {json.dumps(value)}"
            for key, value in members
        )
        + "}"
    )
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        sibling = json.dumps(draw(json_values))
        text_ = f"[{sibling}, {text_}]" if draw(st.booleans()) else f'{{"s": {sibling}, "v": {text_}}}'
    return f'{{"top": {text_}}}'


@FAST
@given(objects_with_a_duplicate())
def test_a_repeated_member_name_is_always_found(text_: str) -> None:
    with pytest.raises(InvalidJson):
        parse_object(text_)


def depth_of(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


@st.composite
def deep_objects(draw: st.DrawFn) -> dict[str, Any]:
    """An object whose depth is near the client limit, with siblings at random levels."""
    depth = draw(
        st.integers(min_value=frames.MAX_CLIENT_FRAME_DEPTH - 3, max_value=frames.MAX_CLIENT_FRAME_DEPTH + 2)
    )
    value: Any = draw(st.sampled_from([1, [], {}, "x"]))
    for _ in range(depth - 1):
        sibling: Any = draw(st.sampled_from([None, [], {}, [1], {"k": []}]))
        if draw(st.booleans()):
            value = [value] if sibling is None else [sibling, value]
        else:
            value = {"v": value} if sibling is None else {"s": sibling, "v": value}
    return {"top": value}


@FAST
@given(deep_objects())
def test_the_depth_limit_is_exact(obj: dict[str, Any]) -> None:
    data = orjson.dumps(obj)
    if depth_of(obj) <= frames.MAX_CLIENT_FRAME_DEPTH:
        assert parse_object(data) == obj
    else:
        with pytest.raises(InvalidJson):
            parse_object(data)


# --- (c) valid messages round-trip ----------------------------------------------------------------------

protocol_ints = st.integers(min_value=0, max_value=2**53 - 1)
optional_ints = st.none() | protocol_ints
refs = st.none() | st.text(max_size=64)
heads = st.dictionaries(text, protocol_ints, max_size=4)
canonical_bodies = json_values.filter(lambda v: all(abs(n) < 2**53 for n in _ints(v))).map(
    lambda v: canonical_json(v).decode()
)


def _ints(value: object) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [n for item in value for n in _ints(item)]
    if isinstance(value, dict):
        return [n for item in value.values() for n in _ints(item)]
    return []


stored_events = st.builds(
    StoredEvent,
    stream=text,
    seq=protocol_ints,
    id=text,
    device_id=text,
    ts=protocol_ints,
    received_at=protocol_ints,
    expires_at=protocol_ints,
    body=canonical_bodies,
)

client_messages = st.one_of(
    st.builds(Hello, v=protocol_ints, device_id=text, nonce=text, ref=refs),
    st.builds(Auth, sig=text, ref=refs),
    st.builds(
        Publish,
        id=text,
        stream=text,
        ts=protocol_ints,
        body=json_values,
        ttl=optional_ints,
        expect_seq=optional_ints,
        ref=refs,
    ),
    st.builds(Replay, stream=text, after=optional_ints, limit=optional_ints, ref=refs),
    st.builds(ReplayNext, token=text, ref=refs),
    st.builds(Streams, after=st.none() | text, limit=optional_ints, ref=refs),
    st.builds(Ping, ref=refs),
)

limits = st.builds(Limits, **{field.name: protocol_ints for field in attrs.fields(Limits)})
error_fields = st.dictionaries(
    text.filter(lambda k: k not in {"type", "code", "message", "ref"}), json_values, max_size=4
)

server_messages = st.one_of(
    st.builds(
        Challenge, session_id=text, nonce=text, server_time=protocol_ints, server_key=text, server_sig=text
    ),
    st.builds(
        Welcome,
        session_id=text,
        user_id=text,
        device_id=text,
        name=text,
        server_time=protocol_ints,
        heartbeat_ms=protocol_ints,
        limits=limits,
        streams=heads,
        streams_truncated=st.booleans(),
        online=st.lists(text, max_size=3),
    ),
    st.builds(
        Ack,
        id=text,
        stream=text,
        seq=protocol_ints,
        received_at=protocol_ints,
        expires_at=protocol_ints,
        duplicate=st.booleans(),
        ref=st.none() | text,
    ),
    st.builds(Event, event=stored_events),
    st.builds(Heads, streams=heads),
    st.builds(
        ReplayPage,
        stream=text,
        events=st.lists(stored_events, max_size=3),
        head=protocol_ints,
        next=st.none() | text,
        ref=st.none() | text,
    ),
    st.builds(StreamsPage, streams=heads, next=st.none() | text, ref=st.none() | text),
    st.builds(Pong, server_time=protocol_ints, ref=st.none() | text),
    st.builds(Presence, device_id=text, online=st.booleans(), at=protocol_ints),
    st.builds(
        DeviceNotice,
        change=st.sampled_from(["enrolled", "renamed", "revoked"]),
        device_id=text,
        name=text,
        at=protocol_ints,
    ),
    st.builds(Error, code=text, message=text, ref=st.none() | text, fields=error_fields),
)


@FAST
@given(client_messages)
def test_every_valid_client_message_round_trips(msg: Any) -> None:
    frame = encode_client(msg)
    assert decode_client(frame) == msg
    assert decode_client(frame.encode()) == msg


@FAST
@given(server_messages)
def test_every_valid_server_message_round_trips(msg: Any) -> None:
    frame = encode_server(msg)
    assert decode_server(frame, strict=True) == msg
    assert decode_server(frame.encode()) == msg
