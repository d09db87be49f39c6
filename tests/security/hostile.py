"""Hypothesis strategies for hostile input: values, client messages, frames and HTTP requests.

Every strategy starts from something well-formed and breaks it a little or a lot, because a fuzzer that
only sends noise never gets past the first check: members of the right name with values of the wrong
type, size or sign; unknown members; missing members; another ``type``; numbers at and beyond every
bound (2^53, 2^64, 1e308); strings of every kind of Unicode (controls, bidi overrides, unpaired
surrogates, astral planes) and of every length; bodies nested deep and wide.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from relay import crypto

#: Integers at and around every bound a protocol field has.
HOSTILE_INTS = [
    0,
    1,
    -1,
    2**31,
    2**32,
    2**53 - 1,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    10**30,
    -(2**63),
]
#: Strings that have broken parsers, validators, loggers and templates before.
HOSTILE_STRINGS = [
    "",
    " ",
    "\x00",
    "\x7f",
    "\n",
    "\r\n",
    "\t",
    "\u202e",  # right-to-left override
    "\u200b",
    "\ufeff",  # byte order mark
    "\ud800",  # an unpaired surrogate (json.dumps escapes it; the server must refuse it)
    "\udfff\ud800",
    "\U0001f600" * 40,
    "é" * 64,
    "e\u0301" * 40,
    "a" * 64,
    "a" * 65,
    "a" * 128,
    "a" * 129,
    "x" * 5000,
    "../../../etc/passwd",
    "%s%s%n%x",
    "{{7*7}}${7*7}",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "Traceback (most recent call last):",
    "notes\u0000/x",
    "NOTES",
    "0f8fad5b-d9cb-469f-a165-70867728950e",
    "0F8FAD5B-D9CB-469F-A165-70867728950E",
    "ERERERERERERERERERERERERERERERERERERERERERE",
    "ERERERERERERERERERERERERERERERERERERERERERE=",
    "ERERERERERERERERERERERERERERERERERERERERERF",
]
#: Floats at the edges of the double range (orjson and json.dumps write them as JSON numbers).
HOSTILE_FLOATS = [0.0, -0.0, 1.0, 0.5, 1e308, -1e308, 5e-324, 1.7976931348623157e308, 2.0**53, 2.0**64]

#: The characters of a stream name and of an event id (§1).
EVENT_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
STREAM_ALPHABET = EVENT_ID_ALPHABET + "~/"

leaves: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(HOSTILE_INTS),
    st.integers(),
    st.sampled_from(HOSTILE_FLOATS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(HOSTILE_STRINGS),
    st.text(max_size=40),
)

json_values: st.SearchStrategy[Any] = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.one_of(st.text(max_size=12), st.sampled_from(HOSTILE_STRINGS)), children, max_size=5
        ),
    ),
    max_leaves=12,
)


def nested(depth: int, leaf: Any = 1) -> Any:
    """A value nesting arrays and objects ``depth`` levels deep."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@st.composite
def bodies(draw: st.DrawFn) -> Any:
    """Event bodies: any JSON value, deep ones (around the 62-level limit), wide ones, big ones."""
    kind = draw(st.sampled_from(["value", "value", "value", "deep", "wide", "big"]))
    if kind == "deep":
        return nested(draw(st.integers(min_value=55, max_value=70)))
    if kind == "wide":
        leaf = draw(leaves)
        return {f"k{n}": leaf for n in range(draw(st.sampled_from([100, 1000, 3000])))}
    if kind == "big":  # around max_event_bytes (65,536) in canonical form
        return "x" * draw(st.sampled_from([65_000, 65_534, 65_535, 65_536, 70_000, 140_000]))
    return draw(json_values)


def _stream_names() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["notes", "a", "notes/2024:x.y~z-w", "s" * 128]),
        st.text(alphabet=STREAM_ALPHABET, min_size=1, max_size=20),
    )


def _event_ids() -> st.SearchStrategy[str]:
    uuids = st.uuids().map(str)  # mostly fresh ids, so that well-formed publishes are stored
    return st.one_of(uuids, uuids, uuids, st.text(alphabet=EVENT_ID_ALPHABET, min_size=1, max_size=64))


def _refs() -> st.SearchStrategy[str]:
    return st.text(max_size=64)


def base_messages(now_ms: int) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    """A well-formed message of each type a client sends (the handshake's with random values)."""
    return {
        "hello": st.fixed_dictionaries(
            {
                "type": st.just("hello"),
                "v": st.just(1),
                "device_id": st.uuids(version=4).map(str),
                "nonce": st.binary(min_size=32, max_size=32).map(crypto.b64encode),
            }
        ),
        "auth": st.fixed_dictionaries(
            {"type": st.just("auth"), "sig": st.binary(min_size=64, max_size=64).map(crypto.b64encode)}
        ),
        "publish": st.fixed_dictionaries(
            {
                "type": st.just("publish"),
                "id": _event_ids(),
                "stream": _stream_names(),
                "ts": st.just(now_ms),
                "body": bodies(),
            },
            optional={
                "ttl": st.integers(min_value=1, max_value=2_592_000),
                "expect_seq": st.integers(min_value=0, max_value=5),
                "ref": _refs(),
            },
        ),
        "replay": st.fixed_dictionaries(
            {"type": st.just("replay"), "stream": _stream_names()},
            optional={
                "after": st.integers(min_value=0, max_value=10),
                "limit": st.integers(min_value=1, max_value=200),
                "ref": _refs(),
            },
        ),
        "replay.next": st.fixed_dictionaries(
            {
                "type": st.just("replay.next"),
                "token": st.binary(min_size=40, max_size=80).map(crypto.b64encode),
            },
            optional={"ref": _refs()},
        ),
        "streams": st.fixed_dictionaries(
            {"type": st.just("streams")},
            optional={
                "after": _stream_names(),
                "limit": st.integers(min_value=1, max_value=1000),
                "ref": _refs(),
            },
        ),
        "ping": st.fixed_dictionaries({"type": st.just("ping")}, optional={"ref": _refs()}),
    }


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """``base`` with some members replaced by hostile values, some removed, some unknown ones added,
    and now and then another ``type``."""
    message = dict(draw(base))
    for name in list(message):
        action = draw(st.sampled_from(["keep", "keep", "keep", "replace", "drop"]))
        if action == "replace":
            message[name] = draw(json_values)
        elif action == "drop":
            del message[name]
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        message[draw(st.sampled_from(["expect_sq", "Type", "__proto__", "body ", "v"]))] = draw(leaves)
    if draw(st.integers(min_value=0, max_value=14)) == 0:
        message["type"] = draw(
            st.one_of(st.sampled_from(["event", "welcome", "subscribe", "PING", "ping ", ""]), leaves)
        )
    return message


def client_messages(now_ms: int, kinds: list[str] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Messages of the given types (default all), well-formed or mutated, half and half."""
    bases = base_messages(now_ms)
    chosen = [bases[kind] for kind in (kinds or list(bases))]
    return st.one_of(*chosen, *(mutated(base) for base in chosen))


def encode(message: dict[str, Any]) -> str:
    """The frame text (``json.dumps``: escapes unpaired surrogates, writes big integers exactly)."""
    return json.dumps(message, ensure_ascii=False) if _encodable(message) else json.dumps(message)


def _encodable(value: Any) -> bool:
    """Whether ``value`` can be written as UTF-8 text without escaping (no unpaired surrogate)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
