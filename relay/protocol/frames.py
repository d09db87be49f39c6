"""Strict I-JSON parsing of frames and HTTP bodies (PROTOCOL.md §1).

:func:`parse_object` accepts exactly one I-JSON (RFC 7493) object in UTF-8 and refuses everything else
with :class:`~relay.errors.InvalidJson`: invalid UTF-8 (a byte order mark included), text that is not
JSON, a top level that is not an object, a member name repeated in any object at any depth (also inside
``body``), ``NaN``/``Infinity``, an unpaired surrogate (escaped or not), a number that overflows a double
(``1e400``, or an integer literal of that size), and nesting deeper than the limit below. It never raises
anything else, whatever the input.

How, and what it costs. orjson parses, and already refuses everything above but two things: it keeps
the last of repeated member names, and it turns integers beyond 64 bits into floats. Both are caught
by cheap C-speed checks on the raw text and on a re-encoding of the parsed value, and only a suspicious
frame is parsed again by the standard library with a hook that sees every member:

- *duplicates*: every member contributes exactly one ``:`` outside strings. The raw text holds
  ``members + colons inside strings`` colons (an escaped ``\\u003a`` counts as one); re-encoding the
  parsed value holds ``surviving members + colons inside surviving strings``. The two are equal exactly
  when no member was dropped, so any difference sends the frame to the exact parser;
- *big integers*: orjson writes every float of magnitude 1e16 or more with an exponent, so a
  re-encoding without ``+`` holds no integer orjson turned into a float. Otherwise a run of 19 digits
  in the raw text (the shortest literal beyond 64 bits; inside a string too) sends the frame to the
  exact parser, which keeps the integer exact: the protocol fields then refuse it as out of range, the
  body's canonicalisation as having no canonical form;
- *depth*: the re-encoding is indented (``OPT_INDENT_2``), so its deepest line tells the depth at no
  extra cost; only a frame near the limit is measured exactly.

Measured on CPython 3.11 with orjson 3.13 (``parse_object`` / orjson alone / the standard library with a
duplicate hook): a 102-byte publish 1.6 / 0.34 / 3.6 µs; a 49 KB publish whose body holds 1,200 objects
and arrays 230 / 135 / 545 µs; a 7 KB publish of ``\\u``-escaped text 13.6 / 3.3 / 11.8 µs; a small frame
that needs the exact parse (a repeated member, an integer beyond 64 bits) about 5 µs.

Depth. A frame a client sends may nest at most :data:`MAX_CLIENT_FRAME_DEPTH` (62) levels of objects and
arrays, the frame's own object included; a frame the server sends at most :data:`MAX_FRAME_DEPTH` (64),
the default limit of some common JSON libraries (System.Text.Json). The two differ because a
``replay.page`` wraps an event body in three levels (page, ``events``, event) where a ``publish`` wraps it
in one: every body the server accepts can therefore be delivered in a frame any client can read.
"""

from __future__ import annotations

import json
from typing import Final, NoReturn, cast

import orjson

from relay.errors import InvalidJson
from relay.protocol.messages import JsonValue

__all__ = ["MAX_CLIENT_FRAME_DEPTH", "MAX_FRAME_DEPTH", "parse_object"]

#: The deepest nesting of objects and arrays in any frame (the outer object is level 1).
MAX_FRAME_DEPTH: Final = 64
#: The deepest nesting of a frame or HTTP body a client sends (see the module docstring).
MAX_CLIENT_FRAME_DEPTH: Final = MAX_FRAME_DEPTH - 2

#: Integer literals shorter than this always fit orjson's 64-bit integers.
_LONG_DIGIT_RUN: Final = b"0" * 19
#: Maps every ASCII digit to ``0`` and every other byte to a space, so digit runs survive as ``0`` runs.
_DIGITS_ONLY: Final = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))


def parse_object(data: str | bytes, *, max_depth: int = MAX_CLIENT_FRAME_DEPTH) -> dict[str, JsonValue]:
    """The I-JSON object ``data`` holds, or :class:`InvalidJson`.

    ``data`` is a WebSocket text frame (``str``) or a raw HTTP body (``bytes``, which must be UTF-8).
    ``max_depth`` is the deepest nesting accepted: keep the default for what clients send, and use
    :data:`MAX_FRAME_DEPTH` for frames the server sent (at most 250: orjson encodes no deeper). Integers
    are exact Python ints of any size a double can hold; the caller applies the protocol's 0..2^53-1 rule
    where it applies.
    """
    raw = _utf8(data)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        _refuse(exc.msg)
    if type(value) is not dict:
        _refuse("the top level is not an object")
    try:
        # Indented, so that nesting shows as leading spaces (see the module docstring).
        encoded = orjson.dumps(value, option=orjson.OPT_INDENT_2)
    except orjson.JSONEncodeError:
        # The only failure a parsed value can meet: orjson encodes at most ~250 levels.
        _refuse("nested too deeply")
    # A line indented 2 * max_depth spaces is an element of a container at level max_depth; only then
    # can a container sit deeper than max_depth.
    if b"\n" + b" " * (2 * max_depth) in encoded and _deeper_than(value, max_depth):
        _refuse(f"nested more than {max_depth} levels deep")
    colons = raw.count(b":")
    if b"\\" in raw and b"\\u003" in raw:
        colons += raw.count(b"\\u003a") + raw.count(b"\\u003A")
    if encoded.count(b":") != colons or _may_hold_a_long_integer(raw, encoded):
        return _parse_exactly(raw)
    return cast("dict[str, JsonValue]", value)


def _may_hold_a_long_integer(raw: bytes, encoded: bytes) -> bool:
    """Whether ``raw`` may hold an integer literal beyond 64 bits, which orjson read as a float.

    orjson writes every float of magnitude 1e16 or more with an exponent (``1.8446744073709552e+19``),
    so an ``encoded`` without ``+`` has none. Otherwise look for a run of 19 digits in ``raw`` (inside
    strings too), the shortest such literal: a run of 19 covers two multiples of 9 side by side, so a
    sample of every 9th byte without two digits in a row rules the frame out at a ninth of the cost.
    """
    if b"+" not in encoded or b"00" not in raw[::9].translate(_DIGITS_ONLY):
        return False
    return _LONG_DIGIT_RUN in raw.translate(_DIGITS_ONLY)


def _utf8(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        try:
            return data.encode("utf-8")
        except UnicodeEncodeError:
            _refuse("the text holds an unpaired surrogate")
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    _refuse(f"a frame is text or bytes, not {type(data).__name__}")


def _refuse(detail: str) -> NoReturn:
    raise InvalidJson(detail=detail) from None


class _DuplicateMember(Exception):
    pass


def _unique_members(pairs: list[tuple[str, object]]) -> dict[str, object]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise _DuplicateMember
    return members


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _parse_exactly(raw: bytes) -> dict[str, JsonValue]:
    """The slow, exact parse; ``raw`` already passed orjson, so only duplicates can fail here."""
    try:
        value = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_unique_members, parse_constant=_refuse_constant
        )
    except _DuplicateMember:
        _refuse("a member name is repeated")
    except (ValueError, RecursionError) as exc:  # defensive: orjson accepted this text
        _refuse(str(exc))
    if type(value) is not dict:  # defensive, as above
        _refuse("the top level is not an object")
    return cast("dict[str, JsonValue]", value)


def _deeper_than(value: object, max_depth: int) -> bool:
    """Whether ``value`` nests objects and arrays more than ``max_depth`` levels; without recursion."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > max_depth:
            return True
        children = container.values() if isinstance(container, dict) else cast("list[object]", container)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
