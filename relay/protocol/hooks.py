"""The cattrs hooks for the leaf values of a frame: integers, strings, booleans, bodies, maps. No I/O.

Helpers of :mod:`relay.protocol.codec` (whose docstring states the type rules); not for use elsewhere.
A structure hook returns the value when it has the right shape and raises :class:`Invalid` otherwise,
with the problem as ``bad_request`` words it and, for a failure inside the value, the path below it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

from relay.errors import RelayError
from relay.protocol import syntax
from relay.protocol.jsonio import canonical_json
from relay.protocol.messages import DeviceChange, JsonValue
from relay.protocol.paths import Invalid

__all__ = [
    "array_hook",
    "object_hook",
    "pass_through",
    "structure_bool",
    "structure_canonical_body",
    "structure_change",
    "structure_heads",
    "structure_int",
    "structure_ref",
    "structure_str",
    "structure_strings",
]

T = TypeVar("T")

_INT_PROBLEM: Final = "must be an integer in 0..2^53-1"


def structure_int(value: object, _: object) -> int:
    if type(value) is int and 0 <= value <= syntax.MAX_SAFE_INTEGER:
        return value
    raise Invalid(_INT_PROBLEM)


def structure_str(value: object, _: object) -> str:
    if type(value) is str:
        return value
    raise Invalid("must be a string")


def structure_bool(value: object, _: object) -> bool:
    if type(value) is bool:
        return value
    raise Invalid("must be true or false")


_CHANGES: Final = ("enrolled", "renamed", "revoked")


def structure_change(value: object, _: object) -> DeviceChange:
    if type(value) is str and value in _CHANGES:
        return cast("DeviceChange", value)
    raise Invalid(f"must be one of {', '.join(_CHANGES)}")


def structure_ref(value: object, _: object) -> str | None:
    if value is None or (isinstance(value, str) and syntax.is_ref(value)):
        return value
    raise Invalid(f"must be a string of at most {syntax.MAX_REF_CHARS} characters")


def pass_through(value: T, _: object = None) -> T:
    return value


def structure_canonical_body(value: object, _: object) -> str:
    """The RFC 8785 text of a delivered body.

    RFC 8785 reads every number as a double and writes integral doubles below 1e21 without exponent, so
    a canonical body may hold an integer literal beyond 2^53 (``1e20`` is written
    ``100000000000000000000``). Such a literal is read back as the double it denotes.
    """
    try:
        return canonical_json(cast("JsonValue", value)).decode()
    except RelayError:
        pass
    try:
        return canonical_json(_big_ints_as_doubles(value)).decode()
    except (RelayError, OverflowError):
        raise Invalid("has no canonical JSON form") from None


def _big_ints_as_doubles(value: object) -> JsonValue:
    if type(value) is int and not -syntax.MAX_SAFE_INTEGER <= value <= syntax.MAX_SAFE_INTEGER:
        return float(value)
    if isinstance(value, list):
        return [_big_ints_as_doubles(item) for item in value]
    if isinstance(value, dict):
        return {key: _big_ints_as_doubles(item) for key, item in value.items()}
    return cast("JsonValue", value)


def structure_heads(value: object, _: object) -> dict[str, int]:
    """``{"<stream>": <head>, ...}``, checked member by member (paths ``$.streams['notes/a']``)."""
    if type(value) is not dict:
        raise Invalid("must be an object")
    for name, head in value.items():
        if not (type(head) is int and 0 <= head <= syntax.MAX_SAFE_INTEGER):
            raise Invalid(_INT_PROBLEM, (name,))
    return dict(value)


def structure_strings(value: object, _: object) -> list[str]:
    if type(value) is not list:
        raise Invalid("must be an array")
    for index, item in enumerate(value):
        if type(item) is not str:
            raise Invalid("must be a string", (index,))
    return list(value)


def object_hook(inner: Callable[[Any, Any], T]) -> Callable[[object, object], T]:
    """Refuse anything but a JSON object before cattrs' generated hook looks into it."""

    def structure(value: object, cls: object) -> T:
        if type(value) is not dict:
            raise Invalid("must be an object")
        return inner(value, cls)

    return structure


def array_hook(inner: Callable[[Any, Any], T]) -> Callable[[object, object], T]:
    def structure(value: object, cls: object) -> T:
        if type(value) is not list:
            raise Invalid("must be an array")
        return inner(value, cls)

    return structure
