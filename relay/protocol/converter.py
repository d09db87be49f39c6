"""The one cattrs converter: wire objects ⇄ message classes, both directions (PROTOCOL.md §4). No I/O.

Helpers of :mod:`relay.protocol.codec`, which re-exports :data:`converter` and :func:`structure_client`
and whose docstring states the contract. Here the converter is built from the leaf hooks of
:mod:`relay.protocol.hooks`; the tables say which ``type`` names which class, which members each class
may carry on the wire, and how each class is written in each direction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import attrs
import cattrs
import orjson
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from relay.errors import RelayError, UnknownType
from relay.protocol.hooks import (
    array_hook,
    object_hook,
    pass_through,
    structure_bool,
    structure_canonical_body,
    structure_change,
    structure_heads,
    structure_int,
    structure_ref,
    structure_str,
    structure_strings,
)
from relay.protocol.messages import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    ClientMessage,
    DeviceChange,
    Error,
    Event,
    Limits,
    Publish,
    ServerMessage,
    StoredEvent,
)
from relay.protocol.paths import Invalid, bad_request, to_bad_request

__all__ = [
    "CLIENT_TYPES",
    "CLIENT_UNSTRUCTURE",
    "MEMBERS",
    "SERVER_TYPES",
    "SERVER_UNSTRUCTURE",
    "converter",
    "message_class",
    "structure",
    "structure_client",
]

T = TypeVar("T")


def structure_client(obj: Mapping[str, object]) -> ClientMessage:
    """The client message ``obj`` (a parsed frame) holds; raises only :class:`RelayError` subclasses.

    On failure, :func:`relay.protocol.codec.answer_context` of the same ``obj`` tells what the error
    answer must carry.
    """
    cls = message_class(obj, CLIENT_TYPES)
    for key in obj:
        if key not in MEMBERS[cls]:
            raise bad_request("unknown member", (key,))
    return structure(obj, cls)


def message_class(obj: object, types: Mapping[str, type[T]]) -> type[T]:
    """The class ``types`` maps ``obj``'s ``type`` to; raises :class:`BadRequest` or :class:`UnknownType`."""
    if not isinstance(obj, dict):
        raise bad_request("must be an object", ())
    kind = obj.get("type")
    if type(kind) is not str:
        raise bad_request("missing member" if kind is None else "must be a string", ("type",))
    cls = types.get(kind)
    if cls is None:
        raise UnknownType(detail=f"type {kind[:64]!r}")
    return cls


def structure(obj: Mapping[str, object], cls: type[T]) -> T:
    """``obj`` structured as ``cls``; every failure is raised as a :class:`RelayError` subclass."""
    try:
        return converter.structure(obj, cls)
    except RelayError:
        raise
    except Exception as exc:  # cattrs' validation groups, and anything a hook raised: all bad_request
        raise to_bad_request(exc, obj) from None


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
        raise Invalid("must be an object")
    for name in ("code", "message"):
        if name not in obj:
            raise Invalid("missing member", (name,))
        if type(obj[name]) is not str:
            raise Invalid("must be a string", (name,))
    ref = obj.get("ref")
    if ref is not None and type(ref) is not str:
        raise Invalid("must be a string", ("ref",))
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
    conv.register_structure_hook(int, structure_int)
    conv.register_structure_hook(str, structure_str)
    conv.register_structure_hook(bool, structure_bool)
    _register_exact(conv, DeviceChange, structure_change)
    _register_exact(conv, dict[str, int], structure_heads, pass_through)
    _register_exact(conv, list[str], structure_strings, pass_through)

    conv.register_structure_hook(Limits, object_hook(make_dict_structure_fn(Limits, conv)))
    body = override(struct_hook=structure_canonical_body, unstruct_hook=orjson.Fragment)
    conv.register_structure_hook(
        StoredEvent, object_hook(make_dict_structure_fn(StoredEvent, conv, body=body))
    )
    conv.register_unstructure_hook(StoredEvent, make_dict_unstructure_fn(StoredEvent, conv, body=body))
    _register_exact(conv, list[StoredEvent], array_hook(conv.get_structure_hook(list[StoredEvent])))

    unstructure: dict[type, Callable[[Any], dict[str, Any]]] = {}
    generated: list[tuple[type, dict[str, Any]]] = []
    for client_cls in CLIENT_MESSAGES:
        overrides: dict[str, Any] = {"ref": override(struct_hook=structure_ref)}
        if client_cls is Publish:
            overrides["body"] = override(struct_hook=pass_through, unstruct_hook=pass_through)
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
    return structure(obj, message_class(obj, SERVER_TYPES))


CLIENT_TYPES: Final[Mapping[str, type[ClientMessage]]] = {cls.TYPE: cls for cls in CLIENT_MESSAGES}
SERVER_TYPES: Final[Mapping[str, type[ServerMessage]]] = {cls.TYPE: cls for cls in SERVER_MESSAGES}
#: The members each message may carry on the wire (``type`` included); Event's are StoredEvent's.
MEMBERS: Final[Mapping[type, frozenset[str]]] = {
    **{cls: frozenset({"type", *attrs.fields_dict(cls)}) for cls in (*CLIENT_MESSAGES, *SERVER_MESSAGES)},
    Event: frozenset({"type", *attrs.fields_dict(StoredEvent)}),
    Limits: frozenset(attrs.fields_dict(Limits)),
    StoredEvent: frozenset(attrs.fields_dict(StoredEvent)),
}

#: The one converter: structures every message of both directions and unstructures them to wire dicts.
#: Structuring the unions ``ClientMessage`` and ``ServerMessage`` raises only RelayError subclasses, as the
#: functions above do; structuring one message class directly raises cattrs' own errors.
converter, _UNSTRUCTURE = _make_converter()
CLIENT_UNSTRUCTURE: Final = {cls: _UNSTRUCTURE[cls] for cls in CLIENT_MESSAGES}
SERVER_UNSTRUCTURE: Final = {cls: _UNSTRUCTURE[cls] for cls in SERVER_MESSAGES}
