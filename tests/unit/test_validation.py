"""Field rules of PROTOCOL.md §1 and the ordered publish checks of §4.2 steps 1-2, at and past each bound."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from relay import crypto
from relay.errors import BadRequest, ClockSkew, Expired, RelayError, TooLarge
from relay.protocol.messages import Limits, Publish, Replay, Streams
from relay.protocol.validation import (
    STREAMS_PAGE_MAX,
    AcceptedPublish,
    canonical_body,
    check_b64,
    check_event_id,
    check_expect_seq,
    check_publish_time,
    check_ref,
    check_stream_name,
    check_streams,
    check_ts,
    check_uuid,
    clamp_replay,
    is_expired,
    publish_echo,
    resolve_ttl,
    validate_publish,
)

LIMITS = Limits()
NOW = 1_750_000_000_000
SKEW = LIMITS.clock_skew_ms
DAY_MS = 86_400_000
MAX_SAFE = 2**53 - 1


def publish(**overrides: Any) -> Publish:
    fields: dict[str, Any] = {"id": "01J8ZK3Q", "stream": "notes", "ts": NOW, "body": {"text": "hi"}}
    fields.update(overrides)
    return Publish(**fields)


def bad_request_path(excinfo: pytest.ExceptionInfo[BadRequest]) -> str | None:
    assert excinfo.value.code == "bad_request"
    return excinfo.value.path


# --- stream names ------------------------------------------------------------------------------------


def test_a_stream_name_of_128_characters_is_accepted_and_129_refused() -> None:
    assert check_stream_name("s" * 128) == "s" * 128
    with pytest.raises(BadRequest) as info:
        check_stream_name("s" * 129)
    assert bad_request_path(info) == "$.stream"


@pytest.mark.parametrize(
    "name", ["A", "Z", "a", "z", "0", "9", ".", "_", "~", ":", "/", "-", "app/notes:v1.2_x~y-z"]
)
def test_every_allowed_stream_character_class_is_accepted(name: str) -> None:
    assert check_stream_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        "a b",
        "+",
        "@",
        "#",
        "%",
        "?",
        "*",
        "\\",
        ",",
        "=",
        "é",
        "\u0130",
        "\uff21",
        "\x00",
        "a\n",
        "\n",
    ],
)
def test_forbidden_stream_characters_and_the_empty_name_are_refused(name: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_stream_name(name)
    assert bad_request_path(info) == "$.stream"


@pytest.mark.parametrize("value", [None, 1, b"notes", ["notes"]])
def test_a_stream_that_is_not_a_string_is_refused(value: object) -> None:
    with pytest.raises(BadRequest):
        check_stream_name(value)


# --- event ids, refs, UUIDs, b64 ---------------------------------------------------------------------


def test_an_event_id_of_64_characters_is_accepted_and_65_refused() -> None:
    assert check_event_id("i" * 64) == "i" * 64
    with pytest.raises(BadRequest) as info:
        check_event_id("i" * 65)
    assert bad_request_path(info) == "$.id"


@pytest.mark.parametrize("value", ["a", "Z9", "01J8ZK3Q-x_y.z:w", "550e8400-e29b-41d4-a716-446655440000"])
def test_allowed_event_ids_are_accepted(value: str) -> None:
    assert check_event_id(value) == value


@pytest.mark.parametrize("value", ["", "a~b", "a/b", "a b", "é", "a\n", 7, None])
def test_forbidden_event_ids_are_refused(value: object) -> None:
    with pytest.raises(BadRequest):
        check_event_id(value)


def test_a_ref_is_optional_and_holds_at_most_64_characters() -> None:
    assert check_ref(None) is None
    assert check_ref("") == ""
    assert check_ref("r" * 64) == "r" * 64
    with pytest.raises(BadRequest) as info:
        check_ref("r" * 65)
    assert bad_request_path(info) == "$.ref"
    with pytest.raises(BadRequest):
        check_ref(5)


def test_a_lowercase_hyphenated_uuid_is_accepted_and_other_spellings_refused() -> None:
    good = "550e8400-e29b-41d4-a716-446655440000"
    assert check_uuid(good, path="$.device_id") == good
    for bad in [good.upper(), good.replace("-", ""), "{" + good + "}", "urn:uuid:" + good, good + "\n", 5]:
        with pytest.raises(BadRequest) as info:
            check_uuid(bad, path="$.device_id")
        assert bad_request_path(info) == "$.device_id"


def test_canonical_b64_of_the_stated_length_is_decoded() -> None:
    key = bytes(range(32))
    assert check_b64(crypto.b64encode(key), length=32, path="$.public_key") == key


@pytest.mark.parametrize(
    "text",
    [
        crypto.b64encode(bytes(32)) + "=",  # padding
        crypto.b64encode(bytes(31)),  # wrong length
        crypto.b64encode(bytes(33)),
        "A" * 42 + "B",  # 43 characters, non-zero trailing bits
        "+" + "A" * 42,  # standard alphabet
        " " + "A" * 42,
        "",
        None,
    ],
)
def test_non_canonical_b64_is_refused_with_the_path(text: object) -> None:
    with pytest.raises(BadRequest) as info:
        check_b64(text, length=32, path="$.public_key")
    assert bad_request_path(info) == "$.public_key"


# --- ts, ttl, expect_seq -----------------------------------------------------------------------------


def test_ts_must_be_a_protocol_integer() -> None:
    assert check_ts(0) == 0
    assert check_ts(MAX_SAFE) == MAX_SAFE
    for bad in [-1, MAX_SAFE + 1, True, 1.0, "1", None]:
        with pytest.raises(BadRequest) as info:
            check_ts(bad)
        assert bad_request_path(info) == "$.ts"


def test_ttl_is_refused_at_0_and_past_max_and_accepted_from_1_to_max() -> None:
    assert resolve_ttl(1, limits=LIMITS) == 1
    assert resolve_ttl(LIMITS.max_ttl_s, limits=LIMITS) == LIMITS.max_ttl_s
    for bad in [0, LIMITS.max_ttl_s + 1, -1, True, 1.5, "60"]:
        with pytest.raises(BadRequest) as info:
            resolve_ttl(bad, limits=LIMITS)
        assert bad_request_path(info) == "$.ttl"


def test_an_absent_ttl_means_the_default() -> None:
    assert resolve_ttl(None, limits=LIMITS) == 604_800
    assert resolve_ttl(None, limits=Limits(default_ttl_s=60)) == 60


def test_the_ttl_bound_follows_the_configured_limit() -> None:
    limits = Limits(max_ttl_s=3600)
    assert resolve_ttl(3600, limits=limits) == 3600
    with pytest.raises(BadRequest):
        resolve_ttl(3601, limits=limits)


def test_expect_seq_is_absent_or_a_protocol_integer_including_zero() -> None:
    assert check_expect_seq(None) is None
    assert check_expect_seq(0) == 0
    assert check_expect_seq(MAX_SAFE) == MAX_SAFE
    for bad in [-1, MAX_SAFE + 1, False, "3"]:
        with pytest.raises(BadRequest) as info:
            check_expect_seq(bad)
        assert bad_request_path(info) == "$.expect_seq"


# --- body --------------------------------------------------------------------------------------------


def test_a_body_of_exactly_max_event_bytes_is_accepted_and_one_more_is_too_large() -> None:
    limit = LIMITS.max_event_bytes
    exact = "x" * (limit - 2)  # two bytes of quotes
    assert len(canonical_body(exact, max_event_bytes=limit)) == limit
    with pytest.raises(TooLarge) as info:
        canonical_body(exact + "x", max_event_bytes=limit)
    assert info.value.code == "too_large"


def test_the_size_is_utf8_bytes_of_the_canonical_form_not_code_points() -> None:
    body = "\u00e9" * 49  # 98 UTF-8 bytes plus 2 quotes
    assert len(canonical_body(body, max_event_bytes=100)) == 100
    with pytest.raises(TooLarge):
        canonical_body(body + "e", max_event_bytes=100)


def test_a_body_sent_with_spaces_is_measured_after_canonicalisation() -> None:
    sent = '{ "b" : [ 1.0 , 2e0 ] ,  "a" : "x" }'
    value = json.loads(sent)
    canonical = b'{"a":"x","b":[1,2]}'
    assert len(sent.encode()) > len(canonical)
    assert canonical_body(value, max_event_bytes=len(canonical)) == canonical
    with pytest.raises(TooLarge):
        canonical_body(value, max_event_bytes=len(canonical) - 1)


@pytest.mark.parametrize("body", [10**400, -(10**400), {"n": 10**400}, float("nan"), float("inf"), "\ud800"])
def test_a_body_without_a_canonical_form_is_a_bad_request_at_body(body: Any) -> None:
    with pytest.raises(BadRequest) as info:
        canonical_body(body, max_event_bytes=LIMITS.max_event_bytes)
    assert bad_request_path(info) == "$.body"


@pytest.mark.parametrize("body", [None, True, 0, -1.5, "", [], {}, {"a": [None, {"b": "\u2028"}]}])
def test_any_i_json_value_is_a_body(body: Any) -> None:
    assert canonical_body(body, max_event_bytes=LIMITS.max_event_bytes)


# --- time --------------------------------------------------------------------------------------------


def test_is_expired_is_strictly_past_expires_at_plus_skew() -> None:
    assert not is_expired(1000, now_ms=1000 + SKEW, clock_skew_ms=SKEW)
    assert is_expired(1000, now_ms=1001 + SKEW, clock_skew_ms=SKEW)
    assert not is_expired(1000, now_ms=1000, clock_skew_ms=0)
    assert is_expired(1000, now_ms=1001, clock_skew_ms=0)


def test_a_ts_exactly_clock_skew_ahead_is_accepted_and_one_ms_more_refused() -> None:
    accepted = validate_publish(publish(ts=NOW + SKEW), limits=LIMITS, now_ms=NOW)
    assert accepted.ts == NOW + SKEW
    with pytest.raises(ClockSkew) as info:
        validate_publish(publish(ts=NOW + SKEW + 1), limits=LIMITS, now_ms=NOW)
    assert info.value.code == "clock_skew"
    assert info.value.fields == {"server_time": NOW}


def test_an_event_at_its_expiry_bound_is_accepted_and_one_ms_later_expired() -> None:
    ts, ttl = NOW - 10 * DAY_MS, 60
    expires_at = ts + ttl * 1000
    at_bound = expires_at + SKEW
    assert validate_publish(publish(ts=ts, ttl=ttl), limits=LIMITS, now_ms=at_bound).expires_at == expires_at
    with pytest.raises(Expired) as info:
        validate_publish(publish(ts=ts, ttl=ttl), limits=LIMITS, now_ms=at_bound + 1)
    assert info.value.code == "expired"
    assert info.value.fields == {"server_time": at_bound + 1}


def test_an_old_but_unexpired_ts_is_accepted() -> None:
    ts = NOW - 6 * DAY_MS  # queued offline six days ago; the default ttl is seven days
    accepted = validate_publish(publish(ts=ts), limits=LIMITS, now_ms=NOW)
    assert accepted.expires_at == ts + 7 * DAY_MS


def test_check_publish_time_returns_expires_at() -> None:
    assert check_publish_time(NOW, 10, limits=LIMITS, now_ms=NOW) == NOW + 10_000


# --- the whole publish, and the order of its checks --------------------------------------------------


def test_an_accepted_publish_holds_resolved_and_canonical_values() -> None:
    msg = publish(ttl=None, body={"b": 1, "a": [1.0]}, expect_seq=0, ref=None)
    accepted = validate_publish(msg, limits=LIMITS, now_ms=NOW)
    assert accepted == AcceptedPublish(
        id="01J8ZK3Q",
        stream="notes",
        ts=NOW,
        ttl=LIMITS.default_ttl_s,
        expires_at=NOW + LIMITS.default_ttl_s * 1000,
        expect_seq=0,
        body=b'{"a":[1],"b":1}',
        body_size=15,
        ref="01J8ZK3Q",
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        accepted.ttl = 1  # type: ignore[misc]


def test_the_ref_of_an_accepted_publish_is_the_requests_own_when_given() -> None:
    assert validate_publish(publish(ref="r1"), limits=LIMITS, now_ms=NOW).ref == "r1"


def test_an_event_both_too_large_and_expired_answers_too_large() -> None:
    msg = publish(ts=0, ttl=1, body="x" * 200)
    with pytest.raises(TooLarge):
        validate_publish(msg, limits=Limits(max_event_bytes=100), now_ms=NOW)


def test_an_event_both_too_large_and_ahead_of_the_clock_answers_too_large() -> None:
    with pytest.raises(TooLarge):
        validate_publish(
            publish(ts=NOW + DAY_MS, body="x" * 200), limits=Limits(max_event_bytes=100), now_ms=NOW
        )


def test_a_malformed_field_of_an_expired_event_answers_bad_request() -> None:
    with pytest.raises(BadRequest) as info:
        validate_publish(publish(ts=0, ttl=1, expect_seq=-1), limits=LIMITS, now_ms=NOW)
    assert bad_request_path(info) == "$.expect_seq"


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"ref": "r" * 65, "id": "bad id"}, "$.ref"),
        ({"id": "bad id", "stream": "bad stream"}, "$.id"),
        ({"stream": "bad stream", "ts": -1}, "$.stream"),
        ({"ts": -1, "ttl": 0}, "$.ts"),
        ({"ttl": 0, "expect_seq": -1}, "$.ttl"),
        ({"expect_seq": -1, "body": 10**400}, "$.expect_seq"),
        ({"body": [10**400, "x" * 70_000]}, "$.body"),
    ],
)
def test_the_first_malformed_field_in_spec_order_answers(overrides: dict[str, Any], path: str) -> None:
    with pytest.raises(BadRequest) as info:
        validate_publish(publish(**overrides), limits=LIMITS, now_ms=NOW)
    assert bad_request_path(info) == path


def test_every_refusal_of_a_publish_is_a_relay_error_that_keeps_the_session_open() -> None:
    refused: list[dict[str, Any]] = [
        {"id": ""},
        {"body": "x" * 70_000},
        {"ts": 0, "ttl": 1},
        {"ts": NOW + DAY_MS},
    ]
    for overrides in refused:
        with pytest.raises(RelayError) as info:
            validate_publish(publish(**overrides), limits=LIMITS, now_ms=NOW)
        assert info.value.keeps_session_open


# --- what answers echo -------------------------------------------------------------------------------


def test_answers_echo_id_stream_and_ref_when_valid() -> None:
    echo = publish_echo(publish(ref="r1"))
    assert (echo.id, echo.stream, echo.ref) == ("01J8ZK3Q", "notes", "r1")


def test_without_a_ref_answers_echo_the_event_id_as_ref() -> None:
    assert publish_echo(publish()).ref == "01J8ZK3Q"


def test_invalid_members_are_not_echoed() -> None:
    echo = publish_echo(publish(id="bad id", stream="bad stream"))
    assert (echo.id, echo.stream, echo.ref) == (None, None, None)
    assert publish_echo(publish(ref="r" * 65)).ref == "01J8ZK3Q"
    assert publish_echo(publish(id="bad id", ref="r1")).ref == "r1"


# --- replay and streams ------------------------------------------------------------------------------


def test_replay_defaults_to_after_0_and_a_full_page() -> None:
    assert clamp_replay(Replay(stream="notes"), LIMITS) == (0, 100)


def test_replay_limit_is_clamped_to_the_page_size() -> None:
    assert clamp_replay(Replay(stream="s", after=5, limit=1), LIMITS) == (5, 1)
    assert clamp_replay(Replay(stream="s", limit=100), LIMITS) == (0, 100)
    assert clamp_replay(Replay(stream="s", limit=101), LIMITS) == (0, 100)
    assert clamp_replay(Replay(stream="s", limit=MAX_SAFE), LIMITS) == (0, 100)
    assert clamp_replay(Replay(stream="s", limit=500), Limits(replay_page=250)) == (0, 250)


def test_replay_limit_0_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as info:
        clamp_replay(Replay(stream="s", limit=0), LIMITS)
    assert bad_request_path(info) == "$.limit"


@pytest.mark.parametrize(
    ("after", "limit", "path"), [(-1, None, "$.after"), (True, None, "$.after"), (0, -1, "$.limit")]
)
def test_replay_after_and_limit_must_be_protocol_integers(after: Any, limit: Any, path: str) -> None:
    with pytest.raises(BadRequest) as info:
        clamp_replay(Replay(stream="s", after=after, limit=limit), LIMITS)
    assert bad_request_path(info) == path


def test_streams_defaults_to_the_start_and_1000() -> None:
    assert STREAMS_PAGE_MAX == 1000
    assert check_streams(Streams()) == (None, 1000)


def test_streams_limit_is_accepted_from_1_to_1000_and_refused_outside() -> None:
    assert check_streams(Streams(limit=1)) == (None, 1)
    assert check_streams(Streams(limit=1000)) == (None, 1000)
    for bad in [0, 1001, -1, True]:
        with pytest.raises(BadRequest) as info:
            check_streams(Streams(limit=bad))
        assert bad_request_path(info) == "$.limit"


def test_streams_after_must_be_a_valid_stream_name() -> None:
    assert check_streams(Streams(after="app/notes", limit=5)) == ("app/notes", 5)
    for bad in ["", "a b", "s" * 129]:
        with pytest.raises(BadRequest) as info:
            check_streams(Streams(after=bad))
        assert bad_request_path(info) == "$.after"
