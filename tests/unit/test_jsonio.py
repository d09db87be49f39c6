"""Canonical bodies: RFC 8785 form; numbers are doubles, so large integers round like in JavaScript."""

from __future__ import annotations

import pytest

from relay.errors import BadRequest
from relay.protocol.codec import decode_client, encode_client
from relay.protocol.jsonio import canonical_json
from relay.protocol.messages import JsonValue, Publish


def test_members_are_sorted_and_whitespace_removed() -> None:
    assert canonical_json({"b": [1, 2.5, "€"], "a": None}) == '{"a":null,"b":[1,2.5,"€"]}'.encode()


def test_a_large_integer_is_written_as_its_double_prints() -> None:
    # ECMAScript's Number.prototype.toString: the values a JavaScript client would show.
    assert canonical_json({"n": 10**20}) == b'{"n":100000000000000000000}'
    assert canonical_json([-(2**60)]) == b"[-1152921504606847000]"
    assert canonical_json([2**53 + 1]) == b"[9007199254740992]"


@pytest.mark.parametrize("n", [2**53, 2**53 + 1, 2**60, 3**40, 10**20 + 1, 2**1000])
def test_a_canonical_body_is_stable_when_published_again(n: int) -> None:
    once = canonical_json([n, -n])
    assert canonical_json(decode_body(once)) == once


def test_an_integer_beyond_the_double_range_is_refused_with_the_path() -> None:
    with pytest.raises(BadRequest) as info:
        canonical_json([10**400])
    assert info.value.path == "$.body"


def test_the_safe_integer_bounds_are_kept_as_integers() -> None:
    assert canonical_json([2**53 - 1, -(2**53 - 1)]) == b"[9007199254740991,-9007199254740991]"


def test_non_finite_floats_and_non_string_keys_are_refused_with_the_path() -> None:
    for bad in (float("nan"), float("inf"), {1: 2}):
        with pytest.raises(BadRequest) as info:
            canonical_json(bad, path="$.x")  # type: ignore[arg-type]
        assert info.value.path == "$.x"


def decode_body(body: bytes) -> JsonValue:
    frame = '{"type":"publish","id":"e","stream":"s","ts":1,"body":' + body.decode() + "}"
    message = decode_client(frame)
    assert isinstance(message, Publish)
    return message.body


def test_a_delivered_body_can_be_published_again_unchanged() -> None:
    body = canonical_json({"big": 10**20, "small": 1e-7})
    frame = encode_client(Publish(id="e1", stream="s", ts=1, body=None)).replace(
        '"body":null', '"body":' + body.decode()
    )
    message = decode_client(frame)
    assert isinstance(message, Publish)
    assert canonical_json(message.body) == body
