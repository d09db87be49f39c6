"""RFC 8785 canonical JSON for event bodies (PROTOCOL.md §1).

A body is measured, compared and stored in its canonical form. The parser of frames (I-JSON rules:
duplicates, NaN, surrogates) lives beside this in the codec.
"""

from __future__ import annotations

import rfc8785

from relay.errors import BadRequest
from relay.protocol.messages import JsonValue


def canonical_json(value: JsonValue, *, path: str = "$.body") -> bytes:
    """The RFC 8785 canonical UTF-8 encoding of ``value``.

    Raises :class:`BadRequest` (with ``path``) for a value that has no canonical form: an integer
    outside the range a double holds exactly, a non-finite float, a non-string key.
    """
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, ValueError, TypeError, RecursionError) as exc:
        raise BadRequest("The body has no canonical JSON form", path=path, detail=str(exc)) from None
