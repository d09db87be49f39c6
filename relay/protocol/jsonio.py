"""RFC 8785 canonical JSON for event bodies (PROTOCOL.md §1).

A body is measured, compared and stored in its canonical form. The parser of frames (I-JSON rules:
duplicates, NaN, surrogates) is :mod:`relay.protocol.frames`.

Numbers. RFC 8785 treats every number as an IEEE 754 double, and so does every JavaScript client. An
integer literal beyond ±(2^53-1) therefore stands for the nearest double and is written as that double
prints: ``1152921504606846976`` (2^60) is stored as ``1152921504606847000``, and ``9007199254740993``
(2^53 + 1) as ``9007199254740992``. This is the only rule under which every stored body, published
again exactly as it was delivered, has the same canonical form (I-JSON, RFC 7493 §2.2, already asks
senders not to use more precision than a double has: send such values as strings). Literals beyond the
double range (``1e400``) are refused by the frame parser; integers beyond it here, as having no form.
"""

from __future__ import annotations

import rfc8785

from relay.errors import BadRequest
from relay.protocol.messages import JsonValue
from relay.protocol.syntax import MAX_SAFE_INTEGER


def canonical_json(value: JsonValue, *, path: str = "$.body") -> bytes:
    """The RFC 8785 canonical UTF-8 encoding of ``value``.

    Raises :class:`BadRequest` (with ``path``) for a value that has no canonical form: a number beyond
    the double range, a non-finite float, a non-string key.
    """
    try:
        return rfc8785.dumps(value)
    except rfc8785.IntegerDomainError:
        pass  # retry below with the large integers as the doubles they equal, when they do
    except (rfc8785.CanonicalizationError, ValueError, TypeError, RecursionError) as exc:
        raise _no_canonical_form(path, exc) from None
    try:
        return rfc8785.dumps(_large_ints_as_doubles(value))
    except (rfc8785.CanonicalizationError, ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise _no_canonical_form(path, exc) from None


def _no_canonical_form(path: str, exc: BaseException) -> BadRequest:
    return BadRequest("The body has no canonical JSON form", path=path, detail=str(exc))


def _large_ints_as_doubles(value: JsonValue) -> JsonValue:
    """``value`` with every integer beyond ±(2^53-1) replaced by the nearest double.

    Raises :class:`OverflowError` beyond the double range. Recursion is safe: the frame parser bounds
    nesting depth well below the recursion limit (and RecursionError is caught by the caller).
    """
    if type(value) is int and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return float(value)
    if isinstance(value, list):
        return [_large_ints_as_doubles(item) for item in value]
    if isinstance(value, dict):
        return {key: _large_ints_as_doubles(item) for key, item in value.items()}
    return value
