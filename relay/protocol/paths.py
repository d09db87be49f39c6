"""Error paths of the codec: where in a frame a value is wrong, as a ``bad_request`` names it. No I/O.

Helpers of :mod:`relay.protocol.codec` (whose docstring states the contract); not for use elsewhere.
A path is an RFC 9535 normalized path (``$.ts``, ``$.streams['notes/a']``, ``$.events[2].seq``), cut to
:data:`MAX_PATH_CHARS` characters ending in ``…`` when longer. :func:`to_bad_request` follows the notes
cattrs attaches to its validation errors down to the one failure to report.
"""

from __future__ import annotations

import re
from typing import Final

from cattrs.errors import AttributeValidationNote, BaseValidationError, IterableValidationNote

from relay.errors import BadRequest

__all__ = ["MAX_PATH_CHARS", "Invalid", "Path", "bad_request", "format_path", "to_bad_request"]

#: The longest ``path`` a ``bad_request`` carries; a longer one is cut and ends with ``…``.
MAX_PATH_CHARS: Final = 256

#: Members (``str``) and array indexes (``int``) from the top of a frame down to a value.
Path = tuple[str | int, ...]


class Invalid(Exception):
    """A value of the wrong shape, ``at`` a path relative to the value the hook was given."""

    def __init__(self, problem: str, at: Path = ()) -> None:
        super().__init__(problem)
        self.problem = problem
        self.at = at


_MEMBER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "'": "\\'", "\\": "\\\\"}


def format_path(path: Path) -> str:
    parts = ["$"]
    for segment in path:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif isinstance(segment, str) and _MEMBER_NAME.fullmatch(segment):
            parts.append(f".{segment}")
        else:
            escaped = "".join(
                _ESCAPES.get(char) or (f"\\u{ord(char):04x}" if char < " " else char) for char in str(segment)
            )
            parts.append(f"['{escaped}']")
    text = "".join(parts)
    return text if len(text) <= MAX_PATH_CHARS else text[: MAX_PATH_CHARS - 1] + "…"


def bad_request(problem: str, path: Path) -> BadRequest:
    where = format_path(path)
    return BadRequest(f"{where}: {problem}", path=where)


def _first_failure(group: BaseValidationError, value: object) -> tuple[Exception, str | int | None]:
    """The failure of ``group`` to report, and the member or index of ``value`` it concerns.

    Present members come in document order (list items in index order), then missing ones.
    """
    positions = {key: i for i, key in enumerate(value)} if isinstance(value, dict) else {}
    best: tuple[tuple[int, int], Exception, str | int | None] | None = None
    for order, sub in enumerate(group.exceptions):
        key: str | int | None = None
        for note in getattr(sub, "__notes__", ()):
            if isinstance(note, AttributeValidationNote):
                key = note.name
            elif isinstance(note, IterableValidationNote):
                key = note.index
        if isinstance(key, int):
            rank = (0, key)
        elif key in positions:
            rank = (0, positions[key])
        else:
            rank = (1, order)
        if best is None or rank < best[0]:
            best = (rank, sub, key)
    if best is None:
        return group, None
    return best[1], best[2]


def to_bad_request(exc: Exception, obj: object) -> BadRequest:
    """Follow cattrs' notes down to the first failure, building its path as we go."""
    path: list[str | int] = []
    value = obj
    while isinstance(exc, BaseValidationError):
        sub, key = _first_failure(exc, value)
        if sub is exc:
            break
        if key is not None:
            path.append(key)
            value = _child(value, key)
        exc = sub
    if isinstance(exc, Invalid):
        return bad_request(exc.problem, (*path, *exc.at))
    if isinstance(exc, KeyError):
        return bad_request("missing member", tuple(path))
    return bad_request("invalid value", tuple(path))


def _child(value: object, key: str | int) -> object:
    if isinstance(value, dict):
        return value.get(key)
    if isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
        return value[key]
    return None
