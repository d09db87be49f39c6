"""Property tests: validation is total (a result or a RelayError, never anything else) and its
normalisations are stable."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import BadRequest, ClockSkew, Expired, RelayError, TooLarge
from relay.protocol.messages import Limits, Publish, Replay, Streams
from relay.protocol.names import ALLOWED_FORMAT_CHARS, WHITE_SPACE, device_name_key, normalize_device_name
from relay.protocol.validation import (
    check_publish_time,
    check_stream_name,
    check_streams,
    clamp_replay,
    is_expired,
    validate_publish,
)

NOW = 1_750_000_000_000
LIMITS = Limits(max_event_bytes=512)

# Every code point, lone surrogates included: the CLI can hand those in even if JSON cannot.
any_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=80)
# Text rich in what the rules are about: white space, controls, joiners, combining marks, case.
tricky_text = st.text(
    alphabet=st.sampled_from(
        list(WHITE_SPACE)
        + list("aAzZß0 .-_~:/")
        + ["\u200b", "\u200c", "\u200d", "\ufeff", "\u202e", "\x00", "\ud800"]
        + ["\u0301", "\u0308", "\u0323", "\u0345", "\u0399", "\u03b9", "\u1fb3", "\u01f0", "\ufb01", "\uff30"]
        + ["\u1100", "\u1161", "\u11a8", "\u2000", "\u2126", "\u212b", "\U0001f600", "\u0130", "\u0131"]
    ),
    max_size=80,
)
names = st.one_of(any_text, tricky_text)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(any_text, children, max_size=5)
    ),
    max_leaves=30,
)
anything = st.one_of(json_values, st.binary(max_size=8), st.integers())
ints = st.one_of(st.integers(min_value=-5, max_value=2**53 + 5), st.booleans(), st.none())

T = TypeVar("T")


def attempt(thunk: Callable[[], T]) -> T | RelayError:
    """The result of ``thunk()``, or the RelayError it raised; anything else propagates and fails."""
    try:
        return thunk()
    except RelayError as exc:
        return exc


STREAM = re.compile(r"[A-Za-z0-9._~:/-]{1,128}")


# --- totality ----------------------------------------------------------------------------------------


def mostly(good: st.SearchStrategy[Any], junk: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four, so that later checks are reached too."""
    return st.integers(min_value=0, max_value=3).flatmap(lambda i: junk if i == 0 else good)


@given(
    id=mostly(st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True), st.one_of(any_text, anything)),
    stream=mostly(st.from_regex(r"[A-Za-z0-9._~:/-]{1,128}", fullmatch=True), st.one_of(any_text, anything)),
    ts=mostly(st.integers(min_value=NOW - 10**10, max_value=NOW + 10**9), ints),
    ttl=mostly(st.one_of(st.none(), st.integers(min_value=1, max_value=2_592_000)), ints),
    expect_seq=mostly(st.none(), ints),
    body=json_values,
    ref=mostly(st.one_of(st.none(), st.text(max_size=64)), any_text),
    now=mostly(st.integers(min_value=NOW - 10**9, max_value=NOW + 10**10), st.integers(0, 2**53 - 1)),
)
@settings(max_examples=500, deadline=None)
def test_validate_publish_answers_a_result_or_a_relay_error(
    id: Any, stream: Any, ts: Any, ttl: Any, expect_seq: Any, body: Any, ref: Any, now: int
) -> None:
    msg = Publish(id=id, stream=stream, ts=ts, ttl=ttl, expect_seq=expect_seq, body=body, ref=ref)
    accepted = attempt(lambda: validate_publish(msg, limits=LIMITS, now_ms=now))
    if isinstance(accepted, RelayError):
        assert isinstance(accepted, BadRequest | TooLarge | Expired | ClockSkew)
        return
    assert accepted.body_size == len(accepted.body) <= LIMITS.max_event_bytes
    assert accepted.expires_at == accepted.ts + accepted.ttl * 1000


@given(body=json_values)
@settings(max_examples=300, deadline=None)
def test_any_body_is_accepted_canonically_or_refused_as_bad_request_or_too_large(body: Any) -> None:
    msg = Publish(id="ev-1", stream="notes", ts=NOW, body=body)
    accepted = attempt(lambda: validate_publish(msg, limits=LIMITS, now_ms=NOW))
    if isinstance(accepted, RelayError):
        assert isinstance(accepted, BadRequest | TooLarge)
        if isinstance(accepted, BadRequest):
            assert accepted.path == "$.body"
        return
    again = validate_publish(Publish(id="ev-1", stream="notes", ts=NOW, body=body), limits=LIMITS, now_ms=NOW)
    assert again.body == accepted.body
    accepted.body.decode("utf-8")


@given(raw=st.one_of(names, anything))
@settings(max_examples=500, deadline=None)
def test_normalize_device_name_answers_a_name_or_bad_request(raw: Any) -> None:
    name = attempt(lambda: normalize_device_name(raw))
    if isinstance(name, RelayError):
        assert isinstance(name, BadRequest)
        assert name.path == "$.name"
    else:
        assert isinstance(name, str)


@given(raw=st.one_of(any_text, anything))
def test_check_stream_name_accepts_exactly_the_spec_syntax(raw: Any) -> None:
    expected = isinstance(raw, str) and STREAM.fullmatch(raw) is not None
    try:
        assert check_stream_name(raw) == raw
    except BadRequest:
        assert not expected
    else:
        assert expected


@given(after=ints, limit=ints)
def test_clamp_replay_is_total_and_stays_within_the_page(after: Any, limit: Any) -> None:
    try:
        got_after, got_limit = clamp_replay(Replay(stream="s", after=after, limit=limit), Limits())
    except BadRequest:
        return
    assert got_after >= 0
    assert 1 <= got_limit <= Limits().replay_page


@given(after=st.one_of(st.none(), any_text, anything), limit=ints)
def test_check_streams_is_total(after: Any, limit: Any) -> None:
    try:
        got_after, got_limit = check_streams(Streams(after=after, limit=limit))
    except BadRequest:
        return
    assert got_after is None or STREAM.fullmatch(got_after)
    assert 1 <= got_limit <= 1000


# --- names: what the stored name and its key satisfy -------------------------------------------------


@given(raw=names)
@settings(max_examples=500, deadline=None)
def test_a_stored_name_is_nfc_trimmed_bounded_clean_and_a_fixed_point(raw: str) -> None:
    try:
        name = normalize_device_name(raw)
    except BadRequest:
        return
    assert unicodedata.is_normalized("NFC", name)
    assert 1 <= len(name) <= 64
    assert name[0] not in WHITE_SPACE
    assert name[-1] not in WHITE_SPACE
    assert "\n" not in name
    assert all(unicodedata.category(c) not in {"Cc", "Cf", "Cs"} or c in ALLOWED_FORMAT_CHARS for c in name)
    assert normalize_device_name(name) == name


@given(raw=names)
@settings(max_examples=500, deadline=None)
def test_the_name_key_is_idempotent(raw: str) -> None:
    key = device_name_key(raw)
    assert device_name_key(key) == key


@given(raw=names)
@settings(max_examples=500, deadline=None)
def test_canonically_equivalent_names_collide(raw: str) -> None:
    key = device_name_key(raw)
    assert device_name_key(unicodedata.normalize("NFD", raw)) == key
    assert device_name_key(unicodedata.normalize("NFC", raw)) == key


@given(raw=names)
@settings(max_examples=300, deadline=None)
def test_names_differing_only_in_case_of_ascii_letters_collide(raw: str) -> None:
    ascii_upper = "".join(c.upper() if c.isascii() else c for c in raw)
    assert device_name_key(ascii_upper) == device_name_key(raw)


# --- time --------------------------------------------------------------------------------------------


@given(
    ts=st.integers(min_value=0, max_value=2**53 - 1),
    ttl=st.integers(min_value=1, max_value=2_592_000),
    now=st.integers(min_value=0, max_value=2**53 - 1),
    skew=st.integers(min_value=0, max_value=10**7),
)
def test_publish_time_is_refused_exactly_when_expired_or_ahead_and_never_both(
    ts: int, ttl: int, now: int, skew: int
) -> None:
    limits = Limits(clock_skew_ms=skew)
    expired = is_expired(ts + ttl * 1000, now_ms=now, clock_skew_ms=skew)
    ahead = ts > now + skew
    assert not (expired and ahead)
    result = attempt(lambda: check_publish_time(ts, ttl, limits=limits, now_ms=now))
    if expired:
        assert isinstance(result, Expired)
    elif ahead:
        assert isinstance(result, ClockSkew)
    else:
        assert result == ts + ttl * 1000
    if isinstance(result, RelayError):
        assert result.fields == {"server_time": now}
