"""The codec: strict I-JSON frames (PROTOCOL.md §1), the tagged union on ``type``, encoding (§4)."""

from __future__ import annotations

import json
from typing import Any, cast

import attrs
import orjson
import pytest

from relay.errors import BadRequest, InvalidJson, RelayError, SeqConflict, UnknownType
from relay.protocol import codec, frames
from relay.protocol.codec import (
    MAX_PATH_CHARS,
    AnswerContext,
    answer_context,
    converter,
    decode_client,
    decode_server,
    encode_client,
    encode_error,
    encode_server,
    parse_object,
    structure_client,
)
from relay.protocol.frames import MAX_CLIENT_FRAME_DEPTH, MAX_FRAME_DEPTH
from relay.protocol.messages import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    Ack,
    Auth,
    Challenge,
    ClientMessage,
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
    ServerMessage,
    StoredEvent,
    Streams,
    StreamsPage,
    Welcome,
)

DEVICE = "8c6f1e9e-0a43-4a3f-9a53-1d2a7e3b4c5d"
OTHER_DEVICE = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
USER = "1b2c3d4e-5f60-4718-9a0b-c1d2e3f40516"
SESSION = "a0b1c2d3-e4f5-4607-8819-2a3b4c5d6e7f"
NONCE = "A" * 43

STORED = StoredEvent(
    stream="notes/a",
    seq=7,
    id="01HX0000000000000000000000",
    device_id=DEVICE,
    ts=1_764_000_000_000,
    received_at=1_764_000_000_100,
    expires_at=1_764_604_800_000,
    body='{"a":[1,2.5,"x"],"b":null,"c":true}',
)

CLIENT_SAMPLES: list[ClientMessage] = [
    Hello(v=1, device_id=DEVICE, nonce=NONCE),
    Hello(v=2, device_id=DEVICE, nonce=NONCE, ref="h"),
    Auth(sig="c2ln"),
    Auth(sig="c2ln", ref=""),
    Publish(id="e1", stream="notes/a", ts=1_764_000_000_000, body={"text": "hi", "n": [1, 2.5, None]}),
    Publish(id="e2", stream="s", ts=0, body=None, ttl=60, expect_seq=0, ref="r" * 64),
    Publish(id="e3", stream="s", ts=2**53 - 1, body="just a string"),
    Replay(stream="notes/a"),
    Replay(stream="notes/a", after=3, limit=50, ref="r"),
    ReplayNext(token="opaque.token"),
    Streams(),
    Streams(after="notes/a", limit=1000, ref="s"),
    Ping(),
    Ping(ref="p"),
]

SERVER_SAMPLES: list[ServerMessage] = [
    Challenge(session_id=SESSION, nonce=NONCE, server_time=1, server_key="k", server_sig="s"),
    Welcome(
        session_id=SESSION,
        user_id=USER,
        device_id=DEVICE,
        name="Alice's phone",
        server_time=1_764_000_000_000,
        heartbeat_ms=20_000,
        limits=Limits(max_ttl_s=86_400),
        streams={"notes/a": 7, "b": 0},
        streams_truncated=True,
        online=[OTHER_DEVICE],
    ),
    Ack(id="e1", stream="notes/a", seq=7, received_at=2, expires_at=3),
    Ack(id="e1", stream="notes/a", seq=7, received_at=2, expires_at=3, duplicate=True, ref="e1"),
    Event(event=STORED),
    Heads(streams={"notes/a": 7}),
    Heads(streams={}),
    ReplayPage(stream="notes/a", events=[STORED, STORED], head=9, next="tok", ref="r"),
    ReplayPage(stream="x", events=[], head=0, next=None),
    StreamsPage(streams={"a": 1}, next="a", ref="r"),
    StreamsPage(streams={}, next=None),
    Pong(server_time=5),
    Pong(server_time=5, ref="p"),
    Presence(device_id=DEVICE, online=False, at=3),
    DeviceNotice(change="renamed", device_id=DEVICE, name="Tablet", at=4),
    Error(code="seq_conflict", message="m", ref="e1", fields={"id": "e1", "stream": "s", "head": 4}),
    Error(code="internal", message="Internal server error", fields={"request_id": "abc"}),
]

PUBLISH = {"type": "publish", "id": "e1", "stream": "notes/a", "ts": 1_764_000_000_000, "body": {"x": 1}}


def frame(**members: Any) -> str:
    return json.dumps(members)


def publish(**changes: Any) -> str:
    return json.dumps({**PUBLISH, **changes})


def structure_as(obj: object, union: Any) -> Any:
    """The one converter's structure, with a union type mypy cannot express as ``type[T]``."""
    return converter.structure(obj, union)


def bad_request_path(data: str | bytes) -> str | None:
    with pytest.raises(BadRequest) as info:
        decode_client(data)
    return info.value.path


def nested(depth: int, inner: str = "1") -> str:
    """``depth`` levels of arrays around ``inner``."""
    return "[" * depth + inner + "]" * depth


# --- strict I-JSON ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',
        '{"type": "ping", "type": "ping"}',
        '{"a": 1, "\\u0061": 2}',
        '{"type": "publish", "id": "e", "stream": "s", "ts": 1, "body": {"k": 1, "k": 1}}',
        '{"body": [{"x": {"y": [1, {"z": 1, "z": 2}]}}]}',
        '{"a": {"b": 1}, "a": {"b": 1}}',
        '{"a:": ":", "a:": ":"}',
        '{"a": "\\u003a", "a": "\\u003A"}',
    ],
)
def test_duplicate_member_names_at_any_depth_are_invalid_json(text: str) -> None:
    with pytest.raises(InvalidJson):
        parse_object(text)
    with pytest.raises(InvalidJson):
        decode_client(text)


def test_a_member_name_repeated_in_different_objects_is_fine() -> None:
    assert parse_object('{"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}]}') == {
        "a": {"a": 1},
        "b": [{"a": 2}, {"a": 3}],
    }


@pytest.mark.parametrize(
    "text",
    [
        '{"a:b": "c:d", "\\u003a": "\\u003A:"}',
        '{"a": "\\\\u003a"}',
        '{"k": "\\\\u003a", "l": 1}',
        '{"n": 12345678901234567890123, "s": "1234567890123456789012345"}',
    ],
)
def test_colons_escapes_and_digit_runs_do_not_confuse_the_duplicate_check(text: str) -> None:
    assert parse_object(text) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"x": NaN}',
        '{"x": Infinity}',
        '{"x": -Infinity}',
        '{"type": "publish", "id": "e", "stream": "s", "ts": 1, "body": [NaN]}',
        '{"x": 1e400}',
        '{"x": -1e400}',
        '{"x": 1' + "0" * 400 + "}",
        '{"x": -1' + "0" * 5000 + "}",
    ],
)
def test_non_finite_numbers_and_numbers_overflowing_a_double_are_invalid_json(text: str) -> None:
    with pytest.raises(InvalidJson):
        decode_client(text)


def test_numbers_that_underflow_or_are_as_large_as_a_double_allows_are_fine() -> None:
    assert parse_object('{"a": 1e-400, "b": 1.7976931348623157e308}') == {
        "a": 0.0,
        "b": 1.7976931348623157e308,
    }


@pytest.mark.parametrize(
    "text",
    [
        '{"x": "\\ud800"}',
        '{"x": "\\udc00"}',
        '{"x": "\\udc00\\ud800"}',
        '{"x": "\\ud83d\\u0041"}',
        '{"\\ud800": 1}',
        '{"type": "publish", "id": "e", "stream": "s", "ts": 1, "body": "\\udfff"}',
    ],
)
def test_escaped_unpaired_surrogates_are_invalid_json(text: str) -> None:
    with pytest.raises(InvalidJson):
        decode_client(text)


def test_raw_unpaired_surrogates_are_invalid_json_in_text_and_in_bytes() -> None:
    with pytest.raises(InvalidJson):
        decode_client('{"type": "ping", "ref": "\ud800"}')
    with pytest.raises(InvalidJson):
        decode_client(b'{"type": "ping", "ref": "\xed\xa0\x80"}')


def test_a_surrogate_pair_is_one_character() -> None:
    assert decode_client('{"type": "ping", "ref": "\\ud83d\\ude00"}') == Ping(ref="\U0001f600")


@pytest.mark.parametrize(
    "data",
    [
        b'{"type": "ping", "ref": "\xff"}',
        b'{"type": "ping", "ref": "\xc3"}',
        b'{"type": "ping", "ref": "\xc0\xaf"}',
        b'{"type": "ping", "ref": "\xe2\x82"}',
        b"\xef\xbb\xbf{}",
        b"\xff\xfe{\x00}\x00",
    ],
)
def test_invalid_utf8_and_byte_order_marks_are_invalid_json(data: bytes) -> None:
    with pytest.raises(InvalidJson):
        decode_client(data)


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "[{}]",
        '"x"',
        "1",
        "null",
        "true",
        "",
        "   ",
        "{",
        '{"a" 1}',
        "{} {}",
        "{}x",
        "{'a': 1}",
        '{"a": 1,}',
        '{"a": "\x01"}',
        "\ufeff{}",
        '{"a": 01}',
        '{"a": .5}',
    ],
)
def test_anything_but_one_json_object_is_invalid_json(text: str) -> None:
    with pytest.raises(InvalidJson):
        parse_object(text)


@pytest.mark.parametrize("data", [None, 5, ["{}"], {"type": "ping"}])
def test_a_frame_that_is_neither_text_nor_bytes_is_invalid_json(data: Any) -> None:
    with pytest.raises(InvalidJson):
        decode_client(data)


def test_bytearray_and_memoryview_are_read_like_bytes() -> None:
    assert decode_client(bytearray(b'{"type": "ping"}')) == Ping()  # type: ignore[arg-type]
    assert decode_client(memoryview(b'{"type": "ping"}')) == Ping()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"a": ' * 100_000 + "1" + "}" * 100_000,
        '{"type": "publish", "id": "e", "stream": "s", "ts": 1, "body": ' + nested(5_000) + "}",
        '{"a": ' + nested(1_000) + "}",
        '{"a": ' + nested(300) + "}",
    ],
)
def test_deep_nesting_is_invalid_json_and_never_a_crash(text: str) -> None:
    with pytest.raises(InvalidJson):
        decode_client(text)
    with pytest.raises(InvalidJson):
        decode_server(text)


def test_a_client_frame_may_nest_exactly_the_client_depth() -> None:
    # The frame's object is level 1, so the body may hold MAX_CLIENT_FRAME_DEPTH - 1 levels.
    head = '{"type": "publish", "id": "e", "stream": "s", "ts": 1, "body": '
    assert isinstance(decode_client(head + nested(MAX_CLIENT_FRAME_DEPTH - 1) + "}"), Publish)
    with pytest.raises(InvalidJson):
        decode_client(head + nested(MAX_CLIENT_FRAME_DEPTH) + "}")


def test_the_depth_limit_counts_empty_containers_and_objects() -> None:
    limit = MAX_CLIENT_FRAME_DEPTH
    assert parse_object('{"a": ' + nested(limit - 1, "") + "}")
    with pytest.raises(InvalidJson):
        parse_object('{"a": ' + nested(limit, "") + "}")
    assert parse_object('{"a": ' * (limit - 1) + "{}" + "}" * (limit - 1))
    with pytest.raises(InvalidJson):
        parse_object('{"a": ' * limit + "{}" + "}" * limit)
    # Wide at every level, deep in one place only.
    wide = '{"a": [1, {"b": [], "c": {}}, ' + nested(limit - 2) + ', "x"], "d": {"e": [[]]}}'
    assert parse_object(wide)
    with pytest.raises(InvalidJson):
        parse_object(wide.replace(nested(limit - 2), nested(limit - 1)))


def test_a_replay_page_of_the_deepest_body_a_client_may_send_fits_the_server_frame_depth() -> None:
    body = json.loads(nested(MAX_CLIENT_FRAME_DEPTH - 1))
    msg = decode_client(publish(body=body))
    assert isinstance(msg, Publish)
    stored = StoredEvent(**{**vars_of(STORED), "body": orjson.dumps(msg.body).decode()})
    page = encode_server(ReplayPage(stream="s", events=[stored], head=1, next=None))
    assert decode_server(page) == ReplayPage(stream="s", events=[stored], head=1, next=None)
    assert MAX_FRAME_DEPTH == MAX_CLIENT_FRAME_DEPTH + 2
    with pytest.raises(InvalidJson):
        parse_object(page)  # the client limit is stricter, on purpose


def vars_of(event: StoredEvent) -> dict[str, Any]:
    return {
        name: getattr(event, name)
        for name in ("stream", "seq", "id", "device_id", "ts", "received_at", "expires_at", "body")
    }


def test_str_and_bytes_frames_decode_alike() -> None:
    text = publish(body={"ü": "€", "n": [1, 2]}, ref="✓")
    assert decode_client(text) == decode_client(text.encode())


def test_huge_integers_stay_exact_in_the_body() -> None:
    big = 2**64
    msg = decode_client(publish(body={"n": big, "m": -(2**70), "k": [10**30]}))
    assert isinstance(msg, Publish)
    assert msg.body == {"n": big, "m": -(2**70), "k": [10**30]}
    assert type(msg.body["n"]) is int


@pytest.mark.parametrize(
    "n", [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30, -(10**300), 2**53 + 1]
)
def test_integers_of_any_size_a_double_holds_are_read_exactly(n: int) -> None:
    obj = parse_object(f'{{"n": {n}, "s": "1234567890123456789012"}}')
    assert type(obj["n"]) is int
    assert obj["n"] == n


def test_orjson_writes_every_float_from_1e16_up_with_an_exponent() -> None:
    # parse_object relies on it to rule out, cheaply, an integer beyond 64 bits read as a float.
    for x in (1e16, 2.0**63, 9.3e18, 2.0**64, 1.5e100, 1.7976931348623157e308):
        assert b"e+" in orjson.dumps(x)
        assert b"e+" in orjson.dumps(-x)


def test_the_body_is_passed_through_untouched() -> None:
    body = {"z": 1, "a": [1.0, 2.50, -0.0, 1e2, "\u00e9"], "m": {"": None}}
    msg = decode_client(publish(body=body))
    assert isinstance(msg, Publish)
    assert msg.body == body
    received: Any = msg.body
    assert list(received) == ["z", "a", "m"]
    assert type(received["a"][0]) is float


@pytest.mark.parametrize("body", [None, 0, "", [], {}, False, 1.5, "null"])
def test_any_json_value_is_a_body_even_null(body: Any) -> None:
    msg = decode_client(publish(body=body))
    assert isinstance(msg, Publish)
    assert msg.body == body
    assert type(msg.body) is type(body)


def test_the_fast_path_and_the_exact_parser_agree() -> None:
    text = '{"a": [1, 2.5, "x:y", {"b": null}], "\\u00e9": "\\u003a", "n": 1234567890123456789012}'
    assert frames._parse_exactly(text.encode()) == parse_object(text) == json.loads(text)


# --- type and unknown members -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "members", [{}, {"type": None}, {"type": 5}, {"type": ["ping"]}, {"type": True}, {"ref": "x"}]
)
def test_a_missing_or_non_string_type_is_a_bad_request_at_type(members: dict[str, Any]) -> None:
    assert bad_request_path(json.dumps(members)) == "$.type"
    with pytest.raises(BadRequest) as info:
        decode_server(json.dumps(members))
    assert info.value.path == "$.type"


@pytest.mark.parametrize("kind", ["nope", "", "PING", "ack", "event", "publish "])
def test_an_unknown_type_is_unknown_type(kind: str) -> None:
    with pytest.raises(UnknownType):
        decode_client(frame(type=kind))


def test_a_client_type_is_unknown_to_the_server_decoder() -> None:
    with pytest.raises(UnknownType):
        decode_server(frame(type="ping"))


def test_an_unknown_member_is_a_bad_request_naming_it() -> None:
    assert bad_request_path(publish(expect_sq=3)) == "$.expect_sq"
    with pytest.raises(BadRequest) as info:
        decode_client(publish(expect_sq=3))
    assert "unknown member" in info.value.message


def test_the_first_unknown_member_in_document_order_is_named() -> None:
    text = '{"zz": 1, "type": "ping", "aa": 2}'
    assert bad_request_path(text) == "$.zz"


def test_an_unknown_member_is_named_before_a_wrong_type() -> None:
    assert bad_request_path(publish(ts="soon", extra=1)) == "$.extra"


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("a b", "$['a b']"),
        ("it's", "$['it\\'s']"),
        ("back\\slash", "$['back\\\\slash']"),
        ("new\nline", "$['new\\nline']"),
        ("\x01", "$['\\u0001']"),
        ("1abc", "$['1abc']"),
        ("notes/a", "$['notes/a']"),
        ("_ok9", "$._ok9"),
        ("é", "$['é']"),
        ("", "$['']"),
    ],
)
def test_paths_are_normalized_json_paths(key: str, path: str) -> None:
    assert bad_request_path(json.dumps({"type": "ping", key: 1})) == path


def test_a_very_long_path_is_cut() -> None:
    path = bad_request_path(json.dumps({"type": "ping", "k" * 10_000: 1}))
    assert path is not None
    assert len(path) == MAX_PATH_CHARS
    assert path.startswith("$.kkk")
    assert path.endswith("…")


# --- types and ranges -------------------------------------------------------------------------------------

INT_FIELDS = [
    (Hello, {"type": "hello", "v": 1, "device_id": DEVICE, "nonce": NONCE}, "v"),
    (Publish, PUBLISH, "ts"),
    (Publish, PUBLISH, "ttl"),
    (Publish, PUBLISH, "expect_seq"),
    (Replay, {"type": "replay", "stream": "s"}, "after"),
    (Replay, {"type": "replay", "stream": "s"}, "limit"),
    (Streams, {"type": "streams"}, "limit"),
]
NOT_PROTOCOL_INTS = [True, False, 1.0, 0.0, 1.5, 1e3, -1, -(2**53), 2**53, 2**64, 10**30, "1", [1], {"n": 1}]


@pytest.mark.parametrize(("cls", "base", "name"), INT_FIELDS)
@pytest.mark.parametrize("value", NOT_PROTOCOL_INTS)
def test_integer_fields_refuse_booleans_floats_and_values_outside_0_to_2_53(
    cls: type, base: dict[str, Any], name: str, value: Any
) -> None:
    assert bad_request_path(json.dumps({**base, name: value})) == f"$.{name}"


@pytest.mark.parametrize(("cls", "base", "name"), INT_FIELDS)
@pytest.mark.parametrize("value", [0, 1, 2**53 - 1])
def test_integer_fields_accept_0_to_2_53_minus_1(
    cls: type, base: dict[str, Any], name: str, value: int
) -> None:
    msg = decode_client(json.dumps({**base, name: value}))
    assert isinstance(msg, cls)
    assert getattr(msg, name) == value
    assert type(getattr(msg, name)) is int


STRING_FIELDS = [
    ({"type": "hello", "v": 1, "device_id": DEVICE, "nonce": NONCE}, "device_id"),
    ({"type": "hello", "v": 1, "device_id": DEVICE, "nonce": NONCE}, "nonce"),
    ({"type": "auth", "sig": "x"}, "sig"),
    (PUBLISH, "id"),
    (PUBLISH, "stream"),
    ({"type": "replay", "stream": "s"}, "stream"),
    ({"type": "replay.next", "token": "t"}, "token"),
    ({"type": "streams"}, "after"),
]


@pytest.mark.parametrize(("base", "name"), STRING_FIELDS)
@pytest.mark.parametrize("value", [1, True, ["x"], {"x": "y"}, 1.5])
def test_string_fields_refuse_other_types(base: dict[str, Any], name: str, value: Any) -> None:
    assert bad_request_path(json.dumps({**base, name: value})) == f"$.{name}"


REQUIRED = [
    ({"type": "hello", "v": 1, "device_id": DEVICE, "nonce": NONCE}, ["v", "device_id", "nonce"]),
    ({"type": "auth", "sig": "x"}, ["sig"]),
    (PUBLISH, ["id", "stream", "ts", "body"]),
    ({"type": "replay", "stream": "s"}, ["stream"]),
    ({"type": "replay.next", "token": "t"}, ["token"]),
]


@pytest.mark.parametrize(("base", "name"), [(base, name) for base, names in REQUIRED for name in names])
def test_a_missing_required_member_is_a_bad_request_at_its_path(base: dict[str, Any], name: str) -> None:
    members = {key: value for key, value in base.items() if key != name}
    assert bad_request_path(json.dumps(members)) == f"$.{name}"
    with pytest.raises(BadRequest) as info:
        decode_client(json.dumps(members))
    assert "missing member" in info.value.message


@pytest.mark.parametrize(
    ("base", "name"), [(base, name) for base, names in REQUIRED for name in names if name != "body"]
)
def test_null_is_not_a_value_for_a_required_member(base: dict[str, Any], name: str) -> None:
    assert bad_request_path(json.dumps({**base, name: None})) == f"$.{name}"


def test_optional_members_may_be_null_or_absent_with_the_same_meaning() -> None:
    nulls = decode_client(publish(ttl=None, expect_seq=None, ref=None))
    assert (
        nulls
        == decode_client(publish())
        == Publish(id="e1", stream="notes/a", ts=1_764_000_000_000, body={"x": 1})
    )
    assert decode_client(frame(type="replay", stream="s", after=None, limit=None, ref=None)) == Replay(
        stream="s"
    )
    assert decode_client(frame(type="streams", after=None, limit=None)) == Streams()
    assert decode_client(frame(type="ping", ref=None)) == Ping()


def test_a_missing_body_is_a_bad_request_but_a_null_body_is_a_body() -> None:
    assert bad_request_path(json.dumps({k: v for k, v in PUBLISH.items() if k != "body"})) == "$.body"
    msg = decode_client(publish(body=None))
    assert isinstance(msg, Publish)
    assert msg.body is None


@pytest.mark.parametrize("ref", ["", "r", "r" * 64, "é" * 64, "\U0001f600" * 64])
def test_a_ref_of_at_most_64_characters_is_accepted(ref: str) -> None:
    assert decode_client(frame(type="ping", ref=ref)) == Ping(ref=ref)


@pytest.mark.parametrize("ref", ["r" * 65, 1, True, ["r"], {"r": 1}])
def test_any_other_ref_is_a_bad_request_at_ref(ref: Any) -> None:
    assert bad_request_path(frame(type="ping", ref=ref)) == "$.ref"
    assert bad_request_path(publish(ref=ref)) == "$.ref"


def test_the_first_failing_member_in_document_order_is_named() -> None:
    text = '{"type": "publish", "ts": "soon", "id": 5, "stream": "s"}'
    assert bad_request_path(text) == "$.ts"
    text = '{"type": "publish", "stream": 5, "ts": "soon", "body": 1, "id": "x"}'
    assert bad_request_path(text) == "$.stream"


def test_a_wrong_type_is_named_before_a_missing_member() -> None:
    assert bad_request_path('{"type": "publish", "id": "e", "ts": true}') == "$.ts"


def test_a_bad_request_message_names_the_path_and_the_rule() -> None:
    with pytest.raises(BadRequest) as info:
        decode_client(publish(ts=1.0))
    assert info.value.message == "$.ts: must be an integer in 0..2^53-1"
    assert info.value.to_wire() == {"code": "bad_request", "message": info.value.message, "path": "$.ts"}


@pytest.mark.parametrize("obj", [[], "ping", None, 5])
def test_structure_client_refuses_what_is_not_an_object(obj: Any) -> None:
    with pytest.raises(BadRequest) as info:
        structure_client(obj)
    assert info.value.path == "$"


def test_structure_client_takes_what_parse_object_gives() -> None:
    obj = parse_object(publish(ttl=60))
    assert structure_client(obj) == decode_client(publish(ttl=60))


def test_the_converter_structures_the_tagged_unions() -> None:
    assert structure_as({"type": "ping", "ref": "x"}, ClientMessage) == Ping(ref="x")
    assert structure_as({"type": "pong", "server_time": 1}, ServerMessage) == Pong(server_time=1)
    with pytest.raises(UnknownType):
        structure_as({"type": "pong"}, ClientMessage)


# --- server messages -------------------------------------------------------------------------------------

WELCOME: dict[str, Any] = json.loads(encode_server(SERVER_SAMPLES[1]))


def server_path(obj: dict[str, Any], *, strict: bool = False) -> str | None:
    with pytest.raises(BadRequest) as info:
        decode_server(json.dumps(obj), strict=strict)
    return info.value.path


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        ({**WELCOME, "limits": {**WELCOME["limits"], "max_ttl_s": "1"}}, "$.limits.max_ttl_s"),
        ({**WELCOME, "limits": {**WELCOME["limits"], "max_ttl_s": 1.0}}, "$.limits.max_ttl_s"),
        ({**WELCOME, "limits": [1]}, "$.limits"),
        ({**WELCOME, "streams": {"foo": True}}, "$.streams.foo"),
        ({**WELCOME, "streams": {"a": 1, "notes/b": -1}}, "$.streams['notes/b']"),
        ({**WELCOME, "streams": ["foo"]}, "$.streams"),
        ({**WELCOME, "online": [DEVICE, 5]}, "$.online[1]"),
        ({**WELCOME, "online": "x"}, "$.online"),
        ({**WELCOME, "streams_truncated": 0}, "$.streams_truncated"),
        ({"type": "heads", "streams": {"s": 2**53}}, "$.streams.s"),
        ({"type": "presence", "device_id": DEVICE, "online": 1, "at": 1}, "$.online"),
        ({"type": "device", "change": "moved", "device_id": DEVICE, "name": "n", "at": 1}, "$.change"),
        ({"type": "ack", "id": "e", "stream": "s", "seq": 1, "received_at": 1}, "$.expires_at"),
        ({"type": "replay.page", "stream": "s", "events": [], "head": 0}, "$.next"),
        ({"type": "replay.page", "stream": "s", "events": {}, "head": 0, "next": None}, "$.events"),
        ({"type": "error", "message": "m"}, "$.code"),
        ({"type": "error", "code": 5, "message": "m"}, "$.code"),
        ({"type": "error", "code": "c", "message": "m", "ref": 5}, "$.ref"),
        ({"type": "event", **{**vars_of(STORED), "body": 1, "seq": None}}, "$.seq"),
    ],
)
def test_server_messages_are_checked_with_paths_into_nested_members(obj: dict[str, Any], path: str) -> None:
    assert server_path(obj) == path


def test_a_bad_event_inside_a_replay_page_is_named_by_index() -> None:
    good = {**vars_of(STORED), "body": {"x": 1}}
    page = {
        "type": "replay.page",
        "stream": "s",
        "events": [good, {**good, "seq": "8"}],
        "head": 8,
        "next": None,
    }
    assert server_path(page) == "$.events[1].seq"
    page["events"] = [good, [good]]
    assert server_path(page) == "$.events[1]"


def test_clients_ignore_unknown_members_of_server_messages() -> None:
    welcome = {**WELCOME, "new_thing": 1, "limits": {**WELCOME["limits"], "max_new": 5}}
    assert decode_server(json.dumps(welcome)) == SERVER_SAMPLES[1]
    event = {
        "type": "event",
        **vars_of(STORED),
        "body": {"c": True, "b": None, "a": [1, 2.5, "x"]},
        "trace": "t",
    }
    assert decode_server(json.dumps(event)) == Event(event=STORED)


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        ({**WELCOME, "new_thing": 1}, "$.new_thing"),
        ({**WELCOME, "limits": {**WELCOME["limits"], "max_new": 5}}, "$.limits.max_new"),
        (
            {
                "type": "replay.page",
                "stream": "s",
                "events": [{**vars_of(STORED), "type": "event"}],
                "head": 1,
                "next": None,
            },
            "$.events[0].type",
        ),
        ({"type": "event", **vars_of(STORED), "trace": 1}, "$.trace"),
        ({"type": "pong", "server_time": 1, "ref": None, "x": 1}, "$.x"),
    ],
)
def test_strict_server_decoding_refuses_unknown_members(obj: dict[str, Any], path: str) -> None:
    assert server_path(obj, strict=True) == path


def test_error_members_beyond_code_message_and_ref_are_its_fields() -> None:
    text = '{"type": "error", "code": "seq_conflict", "message": "m", "head": 4, "id": "e", "future": [1]}'
    for strict in (False, True):
        assert decode_server(text, strict=strict) == Error(
            code="seq_conflict", message="m", fields={"head": 4, "id": "e", "future": [1]}
        )


def test_integers_beyond_2_53_in_a_delivered_body_are_read_as_doubles() -> None:
    # RFC 8785 writes the double 1e20 as 100000000000000000000: a client must read its own canonical text.
    body = [100000000000000000000, 2**53 + 1, {"a": 2**64}]
    msg = decode_server(frame(type="event", **{**vars_of(STORED), "body": body}))
    assert isinstance(msg, Event)
    assert msg.event.body == '[100000000000000000000,9007199254740992,{"a":18446744073709552000}]'


def test_a_body_without_canonical_form_is_a_bad_request_at_its_path() -> None:
    obj = {"type": "event", **vars_of(STORED), "body": [float("nan")]}
    with pytest.raises(BadRequest) as info:
        structure_as(obj, ServerMessage)
    assert info.value.path == "$.body"


def test_decoding_an_event_canonicalises_its_body() -> None:
    text = frame(type="event", **{**vars_of(STORED), "body": {"b": [1.0, 1e2, "\u00e9"], "a": None}})
    msg = decode_server(text)
    assert isinstance(msg, Event)
    assert msg.event.body == '{"a":null,"b":[1,100,"é"]}'


# --- encoding ---------------------------------------------------------------------------------------------


def test_an_ack_is_encoded_with_duplicate_always_and_ref_only_when_set() -> None:
    ack = Ack(id="e1", stream="s", seq=3, received_at=4, expires_at=5)
    assert encode_server(ack) == (
        '{"type":"ack","id":"e1","stream":"s","seq":3,"received_at":4,"expires_at":5,"duplicate":false}'
    )
    assert encode_server(
        Ack(id="e1", stream="s", seq=3, received_at=4, expires_at=5, duplicate=True, ref="r")
    ) == (
        '{"type":"ack","id":"e1","stream":"s","seq":3,"received_at":4,"expires_at":5,"duplicate":true,"ref":"r"}'
    )


def test_an_event_is_flat_and_its_body_is_spliced_verbatim() -> None:
    # Not canonical on purpose: the codec must not re-encode what the store holds.
    body = '{ "b" : [1.0, 1e2],"a":"\\u00e9" }'
    event = StoredEvent(
        stream="s", seq=1, id="e", device_id=DEVICE, ts=2, received_at=3, expires_at=4, body=body
    )
    assert encode_server(Event(event=event)) == (
        f'{{"type":"event","stream":"s","seq":1,"id":"e","device_id":"{DEVICE}","ts":2,"received_at":3,'
        f'"expires_at":4,"body":{body}}}'
    )


def test_a_replay_page_lists_events_without_type_and_writes_next_null() -> None:
    text = encode_server(ReplayPage(stream="s", events=[STORED], head=7, next=None))
    obj = json.loads(text)
    assert list(obj) == ["type", "stream", "events", "head", "next"]
    assert obj["next"] is None
    assert "type" not in obj["events"][0]
    assert obj["events"][0]["body"] == json.loads(STORED.body)
    assert f'"body":{STORED.body}' in text


def test_a_streams_page_writes_next_null() -> None:
    assert encode_server(StreamsPage(streams={"a": 1}, next=None)) == (
        '{"type":"streams.page","streams":{"a":1},"next":null}'
    )
    assert encode_server(StreamsPage(streams={}, next="a", ref="r")) == (
        '{"type":"streams.page","streams":{},"next":"a","ref":"r"}'
    )


def test_a_welcome_carries_every_limit() -> None:
    obj = json.loads(encode_server(SERVER_SAMPLES[1]))
    assert obj["limits"] == {
        "max_event_bytes": 65_536,
        "max_frame_bytes": 131_072,
        "replay_page": 100,
        "clock_skew_ms": 300_000,
        "max_ttl_s": 86_400,
        "default_ttl_s": 604_800,
        "publish_rate": 200,
        "publish_burst": 400,
        "max_replays": 4,
        "max_inflight": 64,
    }
    assert obj["streams_truncated"] is True


def test_an_error_message_merges_its_fields_and_keeps_its_declared_members() -> None:
    error = Error(code="seq_conflict", message="m", ref="r", fields={"head": 4, "code": "other", "type": "x"})
    assert encode_server(error) == '{"type":"error","code":"seq_conflict","message":"m","ref":"r","head":4}'
    assert encode_server(Error(code="c", message="m", fields={"ref": "not mine"})) == (
        '{"type":"error","code":"c","message":"m"}'
    )


def test_optional_members_are_omitted_from_client_frames_when_none() -> None:
    assert encode_client(Replay(stream="s")) == '{"type":"replay","stream":"s"}'
    assert encode_client(Publish(id="e", stream="s", ts=1, body=None)) == (
        '{"type":"publish","id":"e","stream":"s","ts":1,"body":null}'
    )
    assert encode_client(Publish(id="e", stream="s", ts=1, body=[], ttl=5, ref="r")) == (
        '{"type":"publish","id":"e","stream":"s","ts":1,"body":[],"ttl":5,"ref":"r"}'
    )
    assert encode_client(Ping()) == '{"type":"ping"}'


def test_each_direction_encodes_only_its_own_messages() -> None:
    with pytest.raises(TypeError):
        encode_server(Ping())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_client(Pong(server_time=1))  # type: ignore[arg-type]


def expected_members(msg: ClientMessage | ServerMessage) -> list[str]:
    """``type``, then every member in declaration order, but optional members that are ``None``."""
    if isinstance(msg, Event):
        return ["type", *attrs.fields_dict(StoredEvent)]
    if isinstance(msg, Error):
        return ["type", "code", "message", *(["ref"] if msg.ref is not None else []), *msg.fields]
    fields = attrs.fields(type(msg))
    return ["type", *(f.name for f in fields if f.default is not None or getattr(msg, f.name) is not None)]


@pytest.mark.parametrize("msg", [*CLIENT_SAMPLES, *SERVER_SAMPLES], ids=lambda m: type(m).__name__)
def test_encoding_writes_type_first_then_every_member_but_optional_nones(
    msg: ClientMessage | ServerMessage,
) -> None:
    text = encode_server(msg) if isinstance(msg, SERVER_MESSAGES) else encode_client(cast(ClientMessage, msg))
    encoded = json.loads(text)
    assert list(encoded) == expected_members(msg)
    assert encoded["type"] == type(msg).TYPE


# --- round trips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("msg", CLIENT_SAMPLES, ids=lambda m: type(m).__name__)
def test_every_client_message_round_trips(msg: ClientMessage) -> None:
    text = encode_client(msg)
    assert decode_client(text) == msg
    assert decode_client(text.encode()) == msg
    assert structure_as(converter.unstructure(msg), ClientMessage) == msg


@pytest.mark.parametrize("msg", SERVER_SAMPLES, ids=lambda m: type(m).__name__)
def test_every_server_message_round_trips(msg: ServerMessage) -> None:
    text = encode_server(msg)
    assert decode_server(text, strict=True) == msg
    assert decode_server(text.encode()) == msg


def test_the_samples_cover_every_message_class() -> None:
    assert {type(m) for m in CLIENT_SAMPLES} == set(CLIENT_MESSAGES)
    assert {type(m) for m in SERVER_SAMPLES} == set(SERVER_MESSAGES)


# --- answer context and error frames -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "ctx"),
    [
        (PUBLISH, AnswerContext(ref="e1", id="e1", stream="notes/a")),
        ({**PUBLISH, "ref": "mine"}, AnswerContext(ref="mine", id="e1", stream="notes/a")),
        ({**PUBLISH, "ref": "x" * 65}, AnswerContext(ref="e1", id="e1", stream="notes/a")),
        ({**PUBLISH, "ref": 5, "id": "bad id"}, AnswerContext(stream="notes/a")),
        ({**PUBLISH, "id": "bad id", "ref": "r"}, AnswerContext(ref="r", stream="notes/a")),
        ({**PUBLISH, "id": 5, "stream": "bad stream"}, AnswerContext()),
        ({**PUBLISH, "ts": "broken", "extra": 1}, AnswerContext(ref="e1", id="e1", stream="notes/a")),
        ({"type": "replay", "stream": "notes/a", "ref": "r"}, AnswerContext(ref="r", stream="notes/a")),
        ({"type": "replay", "stream": "", "ref": "r"}, AnswerContext(ref="r")),
        ({"type": "replay.next", "token": "t", "ref": "r"}, AnswerContext(ref="r")),
        ({"type": "streams", "ref": "r", "id": "e1", "stream": "s"}, AnswerContext(ref="r")),
        ({"type": "ping", "ref": "r" * 65}, AnswerContext()),
        ({"type": "whatever", "ref": "r"}, AnswerContext(ref="r")),
        ({"ref": "r"}, AnswerContext(ref="r")),
        ({}, AnswerContext()),
    ],
)
def test_answer_context_echoes_what_was_valid(obj: dict[str, Any], ctx: AnswerContext) -> None:
    assert answer_context(obj) == ctx


@pytest.mark.parametrize("obj", [None, [], "publish", 5])
def test_answer_context_of_a_non_object_is_empty(obj: Any) -> None:
    assert answer_context(obj) == AnswerContext()


def test_an_error_answer_to_a_refused_publish_carries_its_context() -> None:
    obj = parse_object(publish(ts=True))
    with pytest.raises(BadRequest) as info:
        structure_client(obj)
    text = encode_error(info.value, answer_context(obj))
    assert text == (
        '{"type":"error","code":"bad_request","message":"$.ts: must be an integer in 0..2^53-1",'
        '"ref":"e1","id":"e1","stream":"notes/a","path":"$.ts"}'
    )
    assert decode_server(text, strict=True) == Error(
        code="bad_request",
        message="$.ts: must be an integer in 0..2^53-1",
        ref="e1",
        fields={"id": "e1", "stream": "notes/a", "path": "$.ts"},
    )


def test_an_error_frame_carries_code_specific_fields() -> None:
    text = encode_error(SeqConflict(head=4), AnswerContext(ref="r"))
    assert json.loads(text) == {
        "type": "error",
        "code": "seq_conflict",
        "message": SeqConflict.safe_message,
        "ref": "r",
        "head": 4,
    }
    assert (
        encode_error(UnknownType())
        == '{"type":"error","code":"unknown_type","message":"Unknown message type"}'
    )


def test_an_unexpected_exception_is_an_internal_error_without_detail_in_production() -> None:
    text = encode_error(ValueError("secret"), AnswerContext(ref="r"), request_id="req-1")
    assert json.loads(text) == {
        "type": "error",
        "code": "internal",
        "message": "Internal server error",
        "ref": "r",
        "request_id": "req-1",
    }
    development = json.loads(encode_error(ValueError("secret"), None, production=False))
    assert "secret" in development["detail"]


# --- decoding raises only relay errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        "",
        b"",
        "{}",
        '{"type": "publish", "body": {"a": [1, {"b": 2}]}, "ts": {"n": "o"}, "id": [], "stream": {}}',
        '{"type": "welcome", "limits": 1}',
        '{"type": "event", "body": ' + nested(40) + "}",
        '{"type": "replay.page", "events": [1, "x", null, []], "next": 5}',
        '{"type": "error", "code": {}, "message": []}',
    ],
)
def test_decoding_garbage_raises_only_relay_errors(data: str | bytes) -> None:
    for decode in (decode_client, decode_server):
        with pytest.raises(RelayError):
            decode(data)


def test_the_public_api_lives_in_the_codec_module() -> None:
    # parse_object is implemented in relay.protocol.frames and re-exported.
    assert codec.parse_object is frames.parse_object
    assert {
        "decode_client",
        "encode_server",
        "encode_client",
        "decode_server",
        "parse_object",
        "structure_client",
        "answer_context",
        "encode_error",
        "AnswerContext",
    } <= set(codec.__all__)
