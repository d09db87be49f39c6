"""The codec: frames ⇄ messages (PROTOCOL.md §1, §4). No I/O.

Decoding is strict I-JSON parsing (:mod:`relay.protocol.frames`) followed by the one cattrs
:data:`converter`, a tagged union on ``type``. It never raises anything but :class:`~relay.errors.RelayError`
subclasses, whatever the input:

- a frame that is not one I-JSON object: :class:`InvalidJson`;
- ``type`` missing or not a string: :class:`BadRequest` with ``path`` ``$.type``; a string naming no
  message: :class:`UnknownType`;
- otherwise :class:`BadRequest` naming one path (RFC 9535 normalized path: ``$.ts``,
  ``$.limits.max_ttl_s``, ``$.streams['notes/a']``, ``$.events[2].seq``; cut to
  :data:`MAX_PATH_CHARS` characters ending in ``…`` when longer). The path named is the first of: an
  unknown member (client messages only), in document order; a member of the wrong type or out of range,
  in document order; a missing required member, in declaration order.

Type rules: integers are JSON integers in 0..2^53-1 (booleans and floats such as ``1.0`` are not
integers); strings and booleans are exactly that; an optional member may be absent or ``null``
(→ ``None``); a request's ``ref`` is a string of at most 64 characters; ``Publish.body`` is required and
may be any JSON value, ``null`` included, passed through untouched (:mod:`relay.protocol.validation`
canonicalises it).

The two directions are not symmetric on purpose (§1: "clients ignore members ... they do not know, so
the server can add them"):

- messages a client sends (:func:`decode_client`, :func:`structure_client`) refuse unknown members;
- messages the server sends (:func:`decode_server`) ignore unknown members, also inside ``limits`` and
  inside the events of a ``replay.page``, unless ``strict=True`` (for tests of the server itself). An
  ``error`` keeps every member it does not declare in :attr:`Error.fields`. An unknown ``type`` raises
  :class:`UnknownType`, which a client should ignore.

Encoding writes members in the order of the classes (``type`` first), omits an optional member whose
value is ``None`` (``ref``, ``ttl``, ``expect_seq``, ``after``, ``limit``), and writes the members the
spec shows as possibly null explicitly (``next`` of ``replay.page`` and ``streams.page``). ``Ack.duplicate``
is always written. An ``event`` is written flat, ``{"type": "event", <StoredEvent members>}``, and each
event of a ``replay.page`` without ``type``; ``StoredEvent.body`` (canonical JSON text) is spliced into
the frame verbatim (:class:`orjson.Fragment`), never parsed. Decoding a server frame sets
``StoredEvent.body`` to the RFC 8785 canonical text of the value received, reading an integer literal
beyond 2^53 as the double it denotes (RFC 8785 writes the double ``1e20`` as ``100000000000000000000``).
Encoding a value that has no JSON form (an integer beyond 64 bits, nesting deeper than orjson allows)
raises ``TypeError``: a bug of the caller.

Frames a client sends may nest 62 levels, frames the server sends 64 (:mod:`relay.protocol.frames`).

Cost, measured on CPython 3.11: encoding an ``event`` frame takes about 0.8 µs and an ``ack`` 0.65 µs,
through cattrs-generated functions (hand-built dicts would save about 0.2 µs); decoding a small
``publish`` about 3 µs (1.6 µs parsing, 1.4 µs structuring).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, cast

import attrs
import cattrs
import orjson
from cattrs.errors import AttributeValidationNote, BaseValidationError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from relay.errors import BadRequest, RelayError, UnknownType, error_payload
from relay.protocol import syntax
from relay.protocol.frames import MAX_CLIENT_FRAME_DEPTH, MAX_FRAME_DEPTH, parse_object
from relay.protocol.jsonio import canonical_json
from relay.protocol.messages import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    ClientMessage,
    DeviceChange,
    Error,
    Event,
    JsonValue,
    Limits,
    Publish,
    Replay,
    ReplayPage,
    ServerMessage,
    StoredEvent,
    Welcome,
)

__all__ = [
    "MAX_CLIENT_FRAME_DEPTH",
    "MAX_FRAME_DEPTH",
    "MAX_PATH_CHARS",
    "AnswerContext",
    "answer_context",
    "converter",
    "decode_client",
    "decode_server",
    "encode_client",
    "encode_error",
    "encode_server",
    "parse_object",
    "structure_client",
]

#: The longest ``path`` a ``bad_request`` carries; a longer one is cut and ends with ``…``.
MAX_PATH_CHARS: Final = 256

T = TypeVar("T")
_Path = tuple[str | int, ...]


# --- public API ----------------------------------------------------------------------------------------


def decode_client(frame: str | bytes) -> ClientMessage:
    """The message a client sent in ``frame``; raises only :class:`RelayError` subclasses."""
    return structure_client(parse_object(frame))


def structure_client(obj: Mapping[str, object]) -> ClientMessage:
    """The client message ``obj`` (a parsed frame) holds; raises only :class:`RelayError` subclasses.

    On failure, :func:`answer_context` of the same ``obj`` tells what the error answer must carry.
    """
    cls = _message_class(obj, _CLIENT_TYPES)
    for key in obj:
        if key not in _MEMBERS[cls]:
            raise _bad_request("unknown member", (key,))
    return _structure(obj, cls)


def decode_server(frame: str | bytes, *, strict: bool = False) -> ServerMessage:
    """The message the server sent in ``frame``; raises only :class:`RelayError` subclasses.

    Unknown members are ignored (§1), or refused like :func:`decode_client` does with ``strict=True``.
    """
    obj = parse_object(frame, max_depth=MAX_FRAME_DEPTH)
    cls = _message_class(obj, _SERVER_TYPES)
    if strict and (unknown := _unknown_server_member(obj, cls)) is not None:
        raise _bad_request("unknown member", unknown)
    return _structure(obj, cls)


def encode_server(msg: ServerMessage) -> str:
    """The text frame of a server message."""
    return orjson.dumps(_unstructure(msg, _SERVER_UNSTRUCTURE)).decode()


def encode_client(msg: ClientMessage) -> str:
    """The text frame of a client message."""
    return orjson.dumps(_unstructure(msg, _CLIENT_UNSTRUCTURE)).decode()


@attrs.frozen
class AnswerContext:
    """What every answer to a request echoes (PROTOCOL.md §4); each member ``None`` when not echoed.

    ``ref``: the request's ``ref`` when valid; for a ``publish`` without one, its event ``id`` when valid.
    ``id`` and ``stream``: those of a ``publish`` when valid; ``stream`` also for a ``replay``.
    """

    ref: str | None = None
    id: str | None = None
    stream: str | None = None


def answer_context(obj: object) -> AnswerContext:
    """The :class:`AnswerContext` of a parsed request, valid or not (never raises).

    Works on what :func:`structure_client` refused too, so that an error answer carries the context. The
    stream of a ``replay.next`` is inside its token: the caller adds it (``attrs.evolve``) once known.
    """
    if not isinstance(obj, dict):
        return AnswerContext()
    ref = obj.get("ref")
    valid_ref = ref if isinstance(ref, str) and syntax.is_ref(ref) else None
    kind = obj.get("type")
    if kind == Publish.TYPE:
        event_id, stream = obj.get("id"), obj.get("stream")
        valid_id = event_id if isinstance(event_id, str) and syntax.is_event_id(event_id) else None
        valid_stream = stream if isinstance(stream, str) and syntax.is_stream_name(stream) else None
        return AnswerContext(
            ref=valid_ref if valid_ref is not None else valid_id, id=valid_id, stream=valid_stream
        )
    if kind == Replay.TYPE:
        stream = obj.get("stream")
        valid_stream = stream if isinstance(stream, str) and syntax.is_stream_name(stream) else None
        return AnswerContext(ref=valid_ref, stream=valid_stream)
    return AnswerContext(ref=valid_ref)


def encode_error(
    exc: BaseException,
    ctx: AnswerContext | None = None,
    *,
    request_id: str | None = None,
    production: bool = True,
) -> str:
    """The ``error`` frame answering ``exc``, echoing ``ctx`` (PROTOCOL.md §4, §4.6).

    Members: ``type``, ``code``, ``message``, then ``ref``, ``id``, ``stream`` from ``ctx`` when set, then
    the code-specific fields. Anything but a :class:`RelayError` is shown as an internal error, without
    detail in production (:func:`relay.errors.error_payload`); pass ``request_id`` for internal errors.
    """
    payload = error_payload(exc, request_id=request_id, production=production)
    frame: dict[str, object] = {
        "type": Error.TYPE,
        "code": payload.pop("code"),
        "message": payload.pop("message"),
    }
    if ctx is not None:
        for name, value in (("ref", ctx.ref), ("id", ctx.id), ("stream", ctx.stream)):
            if value is not None:
                frame[name] = value
    frame.update(payload)
    return orjson.dumps(frame).decode()


# --- failures and paths ---------------------------------------------------------------------------------


class _Invalid(Exception):
    """A value of the wrong shape, ``at`` a path relative to the value the hook was given."""

    def __init__(self, problem: str, at: _Path = ()) -> None:
        super().__init__(problem)
        self.problem = problem
        self.at = at


_MEMBER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "'": "\\'", "\\": "\\\\"}


def _format_path(path: _Path) -> str:
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


def _bad_request(problem: str, path: _Path) -> BadRequest:
    where = _format_path(path)
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


def _to_bad_request(exc: Exception, obj: object) -> BadRequest:
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
    if isinstance(exc, _Invalid):
        return _bad_request(exc.problem, (*path, *exc.at))
    if isinstance(exc, KeyError):
        return _bad_request("missing member", tuple(path))
    return _bad_request("invalid value", tuple(path))


def _child(value: object, key: str | int) -> object:
    if isinstance(value, dict):
        return value.get(key)
    if isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
        return value[key]
    return None


# --- the converter: leaf hooks -------------------------------------------------------------------------

_INT_PROBLEM: Final = "must be an integer in 0..2^53-1"


def _structure_int(value: object, _: object) -> int:
    if type(value) is int and 0 <= value <= syntax.MAX_SAFE_INTEGER:
        return value
    raise _Invalid(_INT_PROBLEM)


def _structure_str(value: object, _: object) -> str:
    if type(value) is str:
        return value
    raise _Invalid("must be a string")


def _structure_bool(value: object, _: object) -> bool:
    if type(value) is bool:
        return value
    raise _Invalid("must be true or false")


_CHANGES: Final = ("enrolled", "renamed", "revoked")


def _structure_change(value: object, _: object) -> DeviceChange:
    if type(value) is str and value in _CHANGES:
        return cast("DeviceChange", value)
    raise _Invalid(f"must be one of {', '.join(_CHANGES)}")


def _structure_ref(value: object, _: object) -> str | None:
    if value is None or (isinstance(value, str) and syntax.is_ref(value)):
        return value
    raise _Invalid(f"must be a string of at most {syntax.MAX_REF_CHARS} characters")


def _pass_through(value: T, _: object = None) -> T:
    return value


def _structure_canonical_body(value: object, _: object) -> str:
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
        raise _Invalid("has no canonical JSON form") from None


def _big_ints_as_doubles(value: object) -> JsonValue:
    if type(value) is int and not -syntax.MAX_SAFE_INTEGER <= value <= syntax.MAX_SAFE_INTEGER:
        return float(value)
    if isinstance(value, list):
        return [_big_ints_as_doubles(item) for item in value]
    if isinstance(value, dict):
        return {key: _big_ints_as_doubles(item) for key, item in value.items()}
    return cast("JsonValue", value)


def _structure_heads(value: object, _: object) -> dict[str, int]:
    """``{"<stream>": <head>, ...}``, checked member by member (paths ``$.streams['notes/a']``)."""
    if type(value) is not dict:
        raise _Invalid("must be an object")
    for name, head in value.items():
        if not (type(head) is int and 0 <= head <= syntax.MAX_SAFE_INTEGER):
            raise _Invalid(_INT_PROBLEM, (name,))
    return dict(value)


def _structure_strings(value: object, _: object) -> list[str]:
    if type(value) is not list:
        raise _Invalid("must be an array")
    for index, item in enumerate(value):
        if type(item) is not str:
            raise _Invalid("must be a string", (index,))
    return list(value)


def _object_hook(inner: Callable[[Any, Any], T]) -> Callable[[object, object], T]:
    """Refuse anything but a JSON object before cattrs' generated hook looks into it."""

    def structure(value: object, cls: object) -> T:
        if type(value) is not dict:
            raise _Invalid("must be an object")
        return inner(value, cls)

    return structure


def _array_hook(inner: Callable[[Any, Any], T]) -> Callable[[object, object], T]:
    def structure(value: object, cls: object) -> T:
        if type(value) is not list:
            raise _Invalid("must be an array")
        return inner(value, cls)

    return structure


# --- the converter: messages ---------------------------------------------------------------------------


def _omit_none(cls: type, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` plus ``omit_if_default`` on every member whose default is ``None``."""
    result = dict(overrides)
    for field in attrs.fields(cls):
        if field.default is None:
            result[field.name] = attrs.evolve(result.get(field.name, override()), omit_if_default=True)
    return result


def _tagged(cls: type, unstructure: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    tag: str = getattr(cls, "TYPE")  # noqa: B009  # every message class has one

    def tagged(msg: Any) -> dict[str, Any]:
        return {"type": tag, **unstructure(msg)}

    return tagged


_ERROR_MEMBERS: Final = frozenset({"type", "code", "message", "ref"})


def _structure_error(obj: Mapping[str, Any], _: object) -> Error:
    if type(obj) is not dict:
        raise _Invalid("must be an object")
    for name in ("code", "message"):
        if name not in obj:
            raise _Invalid("missing member", (name,))
        if type(obj[name]) is not str:
            raise _Invalid("must be a string", (name,))
    ref = obj.get("ref")
    if ref is not None and type(ref) is not str:
        raise _Invalid("must be a string", ("ref",))
    fields = {key: value for key, value in obj.items() if key not in _ERROR_MEMBERS}
    return Error(code=obj["code"], message=obj["message"], ref=ref, fields=fields)


def _unstructure_error(msg: Error) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": Error.TYPE, "code": msg.code, "message": msg.message}
    if msg.ref is not None:
        frame["ref"] = msg.ref
    for name, value in msg.fields.items():
        if name not in _ERROR_MEMBERS:  # the declared members win over a clashing field
            frame[name] = value
    return frame


def _register_exact(
    conv: cattrs.Converter,
    exact: object,
    structure: Callable[[Any, Any], Any],
    unstructure: Callable[[Any], Any] | None = None,
) -> None:
    """Hooks for a type cattrs cannot dispatch on by class (``dict[str, int]``, a ``Literal``)."""
    conv.register_structure_hook_func(lambda t: t == exact, structure)
    if unstructure is not None:
        conv.register_unstructure_hook_func(lambda t: t == exact, unstructure)


def _make_converter() -> tuple[cattrs.Converter, dict[type, Callable[[Any], dict[str, Any]]]]:
    conv = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(bool, _structure_bool)
    _register_exact(conv, DeviceChange, _structure_change)
    _register_exact(conv, dict[str, int], _structure_heads, _pass_through)
    _register_exact(conv, list[str], _structure_strings, _pass_through)

    conv.register_structure_hook(Limits, _object_hook(make_dict_structure_fn(Limits, conv)))
    body = override(struct_hook=_structure_canonical_body, unstruct_hook=orjson.Fragment)
    conv.register_structure_hook(
        StoredEvent, _object_hook(make_dict_structure_fn(StoredEvent, conv, body=body))
    )
    conv.register_unstructure_hook(StoredEvent, make_dict_unstructure_fn(StoredEvent, conv, body=body))
    _register_exact(conv, list[StoredEvent], _array_hook(conv.get_structure_hook(list[StoredEvent])))

    unstructure: dict[type, Callable[[Any], dict[str, Any]]] = {}
    generated: list[tuple[type, dict[str, Any]]] = []
    for client_cls in CLIENT_MESSAGES:
        overrides: dict[str, Any] = {"ref": override(struct_hook=_structure_ref)}
        if client_cls is Publish:
            overrides["body"] = override(struct_hook=_pass_through, unstruct_hook=_pass_through)
        generated.append((client_cls, overrides))
    generated.extend((cls, {}) for cls in SERVER_MESSAGES if cls is not Event and cls is not Error)
    for cls, overrides in generated:
        conv.register_structure_hook(cls, make_dict_structure_fn(cls, conv, **overrides))
        unstructure[cls] = _tagged(cls, make_dict_unstructure_fn(cls, conv, **_omit_none(cls, overrides)))

    # An event is a StoredEvent on the wire, plus its type; an error keeps its undeclared members.
    structure_event = conv.get_structure_hook(StoredEvent)
    unstructure_event = conv.get_unstructure_hook(StoredEvent)
    conv.register_structure_hook(Event, lambda obj, _: Event(event=structure_event(obj, StoredEvent)))
    unstructure[Event] = lambda msg: {"type": Event.TYPE, **unstructure_event(msg.event)}
    conv.register_structure_hook(Error, _structure_error)
    unstructure[Error] = _unstructure_error
    for cls, hook in unstructure.items():
        conv.register_unstructure_hook(cls, hook)
    conv.register_structure_hook(ClientMessage, lambda obj, _: structure_client(obj))
    conv.register_structure_hook(ServerMessage, _structure_server_union)
    return conv, unstructure


def _structure_server_union(obj: Mapping[str, object], _: object) -> ServerMessage:
    return _structure(obj, _message_class(obj, _SERVER_TYPES))


_CLIENT_TYPES: Final[Mapping[str, type[ClientMessage]]] = {cls.TYPE: cls for cls in CLIENT_MESSAGES}
_SERVER_TYPES: Final[Mapping[str, type[ServerMessage]]] = {cls.TYPE: cls for cls in SERVER_MESSAGES}
#: The members each message may carry on the wire (``type`` included); Event's are StoredEvent's.
_MEMBERS: Final[Mapping[type, frozenset[str]]] = {
    **{cls: frozenset({"type", *attrs.fields_dict(cls)}) for cls in (*CLIENT_MESSAGES, *SERVER_MESSAGES)},
    Event: frozenset({"type", *attrs.fields_dict(StoredEvent)}),
    Limits: frozenset(attrs.fields_dict(Limits)),
    StoredEvent: frozenset(attrs.fields_dict(StoredEvent)),
}

#: The one converter: structures every message of both directions and unstructures them to wire dicts.
#: Structuring the unions ``ClientMessage`` and ``ServerMessage`` raises only RelayError subclasses, as the
#: functions above do; structuring one message class directly raises cattrs' own errors.
converter, _UNSTRUCTURE = _make_converter()
_CLIENT_UNSTRUCTURE: Final = {cls: _UNSTRUCTURE[cls] for cls in CLIENT_MESSAGES}
_SERVER_UNSTRUCTURE: Final = {cls: _UNSTRUCTURE[cls] for cls in SERVER_MESSAGES}


# --- decoding and encoding steps -----------------------------------------------------------------------


def _message_class(obj: object, types: Mapping[str, type[T]]) -> type[T]:
    if not isinstance(obj, dict):
        raise _bad_request("must be an object", ())
    kind = obj.get("type")
    if type(kind) is not str:
        raise _bad_request("missing member" if kind is None else "must be a string", ("type",))
    cls = types.get(kind)
    if cls is None:
        raise UnknownType(detail=f"type {kind[:64]!r}")
    return cls


def _structure(obj: Mapping[str, object], cls: type[T]) -> T:
    try:
        return converter.structure(obj, cls)
    except RelayError:
        raise
    except Exception as exc:  # cattrs' validation groups, and anything a hook raised: all bad_request
        raise _to_bad_request(exc, obj) from None


def _unknown_server_member(obj: Mapping[str, object], cls: type) -> _Path | None:
    if cls is Error:
        return None  # every undeclared member of an error is one of its fields
    for key in obj:
        if key not in _MEMBERS[cls]:
            return (key,)
    nested: list[tuple[_Path, object, type]] = []
    if cls is Welcome:
        nested.append((("limits",), obj.get("limits"), Limits))
    elif cls is ReplayPage and isinstance(events := obj.get("events"), list):
        nested.extend((("events", i), event, StoredEvent) for i, event in enumerate(events))
    for prefix, value, inner in nested:
        if isinstance(value, dict):
            for key in value:
                if key not in _MEMBERS[inner]:
                    return (*prefix, key)
    return None


def _unstructure(msg: object, table: Mapping[type, Callable[[Any], dict[str, Any]]]) -> dict[str, Any]:
    try:
        unstructure = table[type(msg)]
    except KeyError:
        raise TypeError(f"cannot encode {type(msg).__name__} in this direction") from None
    return unstructure(msg)
