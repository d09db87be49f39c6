"""docs/asyncapi.yaml: a valid AsyncAPI 3.0 document that says exactly what the server sends and accepts.

- The document validates with pydantic-asyncapi's AsyncAPI 3 models. Those models require ``address``
  and ``channel`` on an Operation Reply Object, which AsyncAPI 3.0.0 makes optional (and a reply on
  the same WebSocket has no address of its own: the spec even forbids one when the reply channel has
  an address). So the document is validated with the library's models with that one object corrected,
  and the library's unmodified models must find nothing wrong but that.
- Every message class of ``relay.protocol.messages`` has its message, with the same members, and the
  other way round; every operation is where it belongs; the error and close codes agree with
  ``relay.errors``.
- Frames validate against the payload schemas (JSON Schema draft 7, as AsyncAPI 3.0 schemas are): frames
  the codec encodes from messages of every class with their edge cases, every error the server can
  send, and real frames of in-process sessions (the worked session of docs/protocol.md and a session of
  refusals). Deliberately wrong frames must not validate.

Patterns: JSON Schema patterns are ECMA-262 regular expressions, where ``$`` matches only at the end of
the input; Python's ``$`` also matches before a final newline. The validator here gives ``$`` its
ECMA-262 meaning, so ``"notes\\n"`` is refused as a stream name, as any conforming validator refuses it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import orjson
import pytest
import trio
import trio.testing
import yaml
from pydantic import ValidationError
from pydantic_asyncapi import AsyncAPI
from pydantic_asyncapi import v3 as asyncapi_v3
from pydantic_asyncapi.base import Reference, TypeRefMap
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7
from test_protocol_doc import (
    NOW,
    PHONE,
    SERVER_SEED,
    TOKEN_SECRET,
    USER_ID,
    Close,
    Frame,
    RecordingClient,
    _enroll,
    session_frames,
)

from relay import crypto, errors
from relay.bus.local import LocalBus
from relay.client.errors import NO_RECONNECT_CODES
from relay.clock import TrioClock
from relay.config import Settings
from relay.crypto import SigningKey
from relay.gateway import Gateway
from relay.gateway.admission import HandshakeRateLimited
from relay.protocol import messages, tokens
from relay.protocol.client_handshake import ClientHandshake
from relay.protocol.codec import (
    AnswerContext,
    decode_client,
    decode_server,
    encode_client,
    encode_error,
    encode_server,
)
from relay.protocol.converter import MEMBERS
from relay.protocol.messages import CLIENT_MESSAGES, SERVER_MESSAGES
from relay.protocol.paths import bad_request
from relay.store.base import ServerSecrets
from relay.store.memory import MemoryStore

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"
BASE_URI = "urn:relay:asyncapi"
CHANNEL = "relay"

DEVICE_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
OTHER_ID = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
NONCE = "ERERERERERERERERERERERERERERERERERERERERERE"
KEY = "5_FioQvsVZr-oZXk3OhLaVaNXSywlj60RsBoXisX8vA"
SIG = "forROKWqA561jVz5Zo5460Zo5qN_2_Ov-g-3tqbyDgKxOZ4_XaJ-HU_hbl-G8PBQQzsa_1plNi4BD0VU5rNMCg"
MAX = 2**53 - 1

#: Error codes relay answers only over HTTP (§6): never in a WebSocket session.
HTTP_ONLY_CODES = {"not_found", "method_not_allowed", "name_taken", "key_in_use", "too_many_devices"}


@functools.cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
    return loaded


def resolve(ref: str) -> Any:
    """The object a local ``$ref`` (``#/a/b``) points at."""
    assert ref.startswith("#/"), ref
    node: Any = document()
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def deref(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(node["$ref"])
    return node


# --- AsyncAPI validity -------------------------------------------------------------------------------


class SpecReply(asyncapi_v3.Reply):
    """AsyncAPI 3.0.0, Operation Reply Object: ``address``, ``channel`` and ``messages`` are optional."""

    address: asyncapi_v3.OperationReplyAddress | Reference | None = None
    channel: Reference | None = None
    messages: list[Reference] | None = None


class SpecOperation(asyncapi_v3.Operation):
    reply: SpecReply | Reference | None = None


class SpecComponents(asyncapi_v3.Components):
    operations: TypeRefMap[SpecOperation] = None
    replies: TypeRefMap[SpecReply] = None


class SpecAsyncAPI(asyncapi_v3.AsyncAPI):
    operations: TypeRefMap[SpecOperation] = None
    components: SpecComponents | None = None


def test_the_document_is_valid_asyncapi_3_0() -> None:
    doc = document()
    assert doc["asyncapi"] == "3.0.0"
    model = SpecAsyncAPI.model_validate(doc)
    assert model.operations is not None
    assert len(model.operations) == len(doc["operations"])


def _reply_deviation(loc: tuple[int | str, ...]) -> bool:
    """An error of the unmodified models that comes from their Reply deviation alone: the missing
    ``address`` of a reply, or the alternatives of the same union failing with it (not a Reference)."""
    if len(loc) < 4 or loc[1] != "operations":
        return False
    if loc[3:] == ("Reference", "$ref"):  # the operation is not a Reference either
        return True
    return loc[3:5] == ("Operation", "reply") and loc[-1] in {"address", "$ref"}


def test_the_unmodified_models_find_nothing_wrong_but_the_reply_address() -> None:
    try:
        AsyncAPI.model_validate(document())
    except ValidationError as exc:
        found = exc.errors()
        assert [e for e in found if e["type"] != "missing" or not _reply_deviation(e["loc"])] == []
        assert any(e["loc"][-1] == "address" for e in found)


def test_every_reference_resolves() -> None:
    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = list(refs(document()))
    assert found
    for ref in found:
        assert resolve(ref) is not None, ref


def test_every_schema_is_a_valid_draft_7_schema_with_ecma_anchored_patterns() -> None:
    schemas = document()["components"]["schemas"]
    for name, schema in schemas.items():
        jsonschema.Draft7Validator.check_schema(schema)
        for pattern in _patterns(schema):
            assert pattern.startswith("^"), (name, pattern)
            re.compile(pattern)


def _patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


# --- the messages and operations match the server -------------------------------------------------------


def channel_messages() -> dict[str, dict[str, Any]]:
    """Wire type → message object, for every message of the channel."""
    found: dict[str, dict[str, Any]] = {}
    for key, ref in document()["channels"][CHANNEL]["messages"].items():
        message = deref(ref)
        wire_type = deref(message["payload"])["properties"]["type"]["const"]
        assert message["name"] == wire_type, key
        assert wire_type not in found, wire_type
        found[wire_type] = message
    return found


def operations(action: str) -> dict[str, dict[str, Any]]:
    """Wire type → operation of ``action``, each operation carrying exactly one message of the channel."""
    found: dict[str, dict[str, Any]] = {}
    for name, op in document()["operations"].items():
        assert op["channel"] == {"$ref": f"#/channels/{CHANNEL}"}, name
        if op["action"] != action:
            continue
        (ref,) = op["messages"]
        assert ref["$ref"].startswith(f"#/channels/{CHANNEL}/messages/"), name
        wire_type = deref(ref)["name"]
        found[wire_type] = op
    return found


CLIENT_TYPES = {cls.TYPE for cls in CLIENT_MESSAGES}
SERVER_TYPES = {cls.TYPE for cls in SERVER_MESSAGES}

#: Requests and their answers (besides ``error``, which may answer any of them).
ANSWERS = {
    "hello": "challenge",
    "auth": "welcome",
    "publish": "ack",
    "replay": "replay.page",
    "replay.next": "replay.page",
    "streams": "streams.page",
    "ping": "pong",
}


def test_every_message_class_has_its_message_and_every_message_its_class() -> None:
    assert set(channel_messages()) == CLIENT_TYPES | SERVER_TYPES
    assert set(operations("receive")) == CLIENT_TYPES
    assert set(operations("send")) == SERVER_TYPES
    for wire_type, message in channel_messages().items():
        tags = {tag["name"] for tag in message["tags"]}
        direction = "client-to-server" if wire_type in CLIENT_TYPES else "server-to-client"
        assert direction in tags, wire_type


def test_every_request_is_a_receive_operation_whose_reply_is_its_answer_or_an_error() -> None:
    assert set(ANSWERS) == CLIENT_TYPES
    for wire_type, op in operations("receive").items():
        reply = op["reply"]
        assert reply["channel"] == {"$ref": f"#/channels/{CHANNEL}"}
        answered = {deref(ref)["name"] for ref in reply["messages"]}
        assert answered == {ANSWERS[wire_type], "error"}, wire_type
        for ref in reply["messages"]:
            assert ref["$ref"].startswith(f"#/channels/{CHANNEL}/messages/")
    for op in operations("send").values():
        assert "reply" not in op


def _schema_members(schema: dict[str, Any]) -> tuple[set[str], set[str]]:
    schema = deref(schema)
    assert schema["additionalProperties"] is False
    return set(schema["properties"]), set(schema["required"])


def _mandatory(cls: type) -> set[str]:
    return {f.name for f in attrs.fields(cls) if f.default is attrs.NOTHING}


#: Optional members of a message class that the server nevertheless always writes.
ALWAYS_WRITTEN = {messages.Ack: {"duplicate", "ref"}}


def test_each_payload_has_exactly_the_members_of_its_class() -> None:
    by_type = channel_messages()
    for cls in (*CLIENT_MESSAGES, *SERVER_MESSAGES):
        members, required = _schema_members(by_type[cls.TYPE]["payload"])
        if cls is messages.Error:
            continue
        inner = messages.StoredEvent if cls is messages.Event else cls
        assert members == MEMBERS[cls], cls.TYPE
        expected = {"type", *_mandatory(inner), *ALWAYS_WRITTEN.get(cls, set())}
        assert required == expected, cls.TYPE
    for cls, name in ((messages.Limits, "Limits"), (messages.StoredEvent, "StoredEvent")):
        members, required = _schema_members(document()["components"]["schemas"][name])
        assert members == set(attrs.fields_dict(cls)) == required, name


def test_the_error_payload_has_every_member_an_error_frame_can_carry() -> None:
    members, required = _schema_members(channel_messages()["error"]["payload"])
    context = {f.name for f in attrs.fields(AnswerContext)}
    assert members == {"type", "code", "message", *context, *errors.FIELD_NAMES, "request_id", "detail"}
    assert required == {"type", "code", "message"}


def _websocket_codes() -> dict[str, type[errors.RelayError]]:
    classes: dict[str, type[errors.RelayError]] = {}
    stack: list[type[errors.RelayError]] = [errors.RelayError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if "code" in vars(cls) and cls.code not in HTTP_ONLY_CODES:
            classes.setdefault(cls.code, errors.error_by_code(cls.code))
    return classes


def test_the_error_codes_and_what_they_do_agree_with_the_server() -> None:
    codes = _websocket_codes()
    enum = document()["components"]["schemas"]["ErrorCode"]["enum"]
    table = channel_messages()["error"]["x-error-codes"]
    assert set(enum) == set(codes) == set(table)
    assert len(enum) == len(set(enum))
    for code, cls in codes.items():
        entry = table[code]
        assert entry["action"], code
        if issubclass(cls, errors.RequestError):
            assert entry["closes"] is False, code
            handshake = HandshakeRateLimited.close_code if cls is errors.RateLimited else cls.close_code
            assert entry.get("handshake_close") == handshake, code
            assert "close" not in entry, code
        else:
            assert entry["closes"] is True, code
            assert entry["close"] == cls.close_code, code
            assert "handshake_close" not in entry, code


def test_the_close_codes_agree_with_the_server_and_the_reconnect_rule() -> None:
    table = document()["channels"][CHANNEL]["x-close-codes"]
    expected: dict[int, set[str]] = {}
    for code, entry in channel_messages()["error"]["x-error-codes"].items():
        for close in (entry.get("close"), entry.get("handshake_close")):
            if close is not None:
                expected.setdefault(close, set()).add(code)
    assert {int(close): set(entry["codes"]) for close, entry in table.items()} == expected
    for close, entry in table.items():
        assert entry["reconnect"] is (int(close) not in NO_RECONNECT_CODES), close
        assert entry["description"], close


# --- frames against the schemas --------------------------------------------------------------------------


def _ecma_pattern(
    validator: jsonschema.protocols.Validator, pattern: str, instance: object, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    """``pattern`` with ECMA-262's ``$`` (the end of the input only), as JSON Schema specifies."""
    if not validator.is_type(instance, "string"):
        return
    assert isinstance(instance, str)
    python = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern
    if re.search(python, instance) is None:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"pattern": _ecma_pattern})


@functools.cache
def _registry() -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(document(), default_specification=DRAFT7)
    return Registry().with_resource(BASE_URI, resource)


@functools.cache
def _validator(wire_type: str) -> jsonschema.protocols.Validator:
    key = next(
        k for k, v in document()["channels"][CHANNEL]["messages"].items() if deref(v)["name"] == wire_type
    )
    schema = {"$ref": f"{BASE_URI}#/components/messages/{key}/payload"}
    validator: jsonschema.protocols.Validator = EcmaValidator(schema, registry=_registry())
    return validator


def schema_errors(direction: str, frame: str | dict[str, Any]) -> list[str]:
    """Why ``frame`` (``C`` from a client, ``S`` from the server) does not validate; empty when it does."""
    obj = orjson.loads(frame) if isinstance(frame, str) else frame
    wire_type = obj.get("type")
    types = CLIENT_TYPES if direction == "C" else SERVER_TYPES
    if wire_type not in types:
        return [f"no {direction} message of type {wire_type!r}"]
    return [error.message for error in _validator(wire_type).iter_errors(obj)]


def assert_valid(direction: str, frame: str | dict[str, Any]) -> None:
    assert schema_errors(direction, frame) == [], frame


EVENT = messages.StoredEvent(
    stream="notes/a",
    seq=1,
    id="e1",
    device_id=OTHER_ID,
    ts=NOW,
    received_at=NOW + 1,
    expires_at=MAX,
    body='{"a":[1,2.5,"x",null,true]}',
)

CLIENT_INSTANCES: list[messages.ClientMessage] = [
    messages.Hello(v=1, device_id=DEVICE_ID, nonce=NONCE),
    messages.Hello(v=1, device_id=DEVICE_ID, nonce=NONCE, ref=""),
    messages.Auth(sig=SIG),
    messages.Auth(sig=SIG, ref="a" * 64),
    messages.Publish(id="e", stream="s", ts=0, body=None),
    messages.Publish(
        id="e" * 64, stream="s" * 128, ts=MAX, body=[1, "two", {"three": 3.5}], ttl=1, expect_seq=0
    ),
    messages.Publish(id="a.B_c:d-9", stream="a/b~c:d.e_f-9", ts=NOW, body="text", ttl=2_592_000, ref="x"),
    messages.Replay(stream="notes"),
    messages.Replay(stream="notes", after=MAX, limit=1, ref="r"),
    messages.ReplayNext(token="anything at all"),
    messages.ReplayNext(token="t", ref="n"),
    messages.Streams(),
    messages.Streams(after="a", limit=1000, ref="s"),
    messages.Streams(limit=1),
    messages.Ping(),
    messages.Ping(ref="p"),
]

#: Frames a client may send that the codec does not write: optional members as ``null`` (§1).
CLIENT_NULLS: list[dict[str, Any]] = [
    {"type": "hello", "v": 1, "device_id": DEVICE_ID, "nonce": NONCE, "ref": None},
    {
        "type": "publish",
        "id": "e",
        "stream": "s",
        "ts": 1,
        "ttl": None,
        "expect_seq": None,
        "body": {},
        "ref": None,
    },
    {"type": "replay", "stream": "s", "after": None, "limit": None, "ref": None},
    {"type": "streams", "after": None, "limit": None, "ref": None},
    {"type": "ping", "ref": None},
]

SERVER_INSTANCES: list[messages.ServerMessage] = [
    messages.Challenge(session_id=DEVICE_ID, nonce=NONCE, server_time=NOW, server_key=KEY, server_sig=SIG),
    messages.Welcome(
        session_id=DEVICE_ID,
        user_id=USER_ID,
        device_id=DEVICE_ID,
        name="Zoë’s 📱",
        server_time=NOW,
        heartbeat_ms=1,
        limits=messages.Limits(),
        streams={"notes/a": 1, "s" * 128: MAX},
        streams_truncated=True,
        online=[OTHER_ID],
    ),
    messages.Ack(id="e", stream="s", seq=1, received_at=NOW, expires_at=NOW + 1000, ref="e"),
    messages.Ack(id="e", stream="s", seq=MAX, received_at=0, expires_at=MAX, duplicate=True, ref=""),
    messages.Event(event=EVENT),
    messages.Event(event=attrs.evolve(EVENT, body="null")),
    messages.Heads(streams={"notes/a": 7}),
    messages.ReplayPage(stream="unknown", events=[], head=0, next=None),
    messages.ReplayPage(
        stream="notes/a",
        events=[EVENT, attrs.evolve(EVENT, seq=2, body='"x"')],
        head=5,
        next=tokens.mint(
            TOKEN_SECRET,
            user_id=USER_ID,
            device_id=DEVICE_ID,
            stream="notes/a",
            after=2,
            head=5,
            limit=2,
            now_ms=NOW,
        ),
        ref="r",
    ),
    messages.StreamsPage(streams={}, next=None),
    messages.StreamsPage(streams={"a": 1}, next="a", ref="s"),
    messages.Pong(server_time=NOW),
    messages.Pong(server_time=NOW, ref="k"),
    messages.Presence(device_id=OTHER_ID, online=True, at=NOW),
    messages.Presence(device_id=OTHER_ID, online=False, at=NOW),
    *(
        messages.DeviceNotice(change=c, device_id=OTHER_ID, name="Laptop", at=NOW)
        for c in ("enrolled", "renamed", "revoked")
    ),
    messages.Error(code="seq_conflict", message="m", ref="p", fields={"id": "e", "stream": "s", "head": 0}),
    messages.Error(code="busy", message="Too many requests outstanding"),
]


def test_the_codec_writes_client_frames_the_schemas_accept() -> None:
    assert {type(m) for m in CLIENT_INSTANCES} == set(CLIENT_MESSAGES)
    for msg in CLIENT_INSTANCES:
        assert_valid("C", encode_client(msg))
    for frame in CLIENT_NULLS:
        decode_client(orjson.dumps(frame))
        assert_valid("C", frame)


def test_the_codec_writes_server_frames_the_schemas_accept() -> None:
    assert {type(m) for m in SERVER_INSTANCES} == set(SERVER_MESSAGES)
    for msg in SERVER_INSTANCES:
        frame = encode_server(msg)
        decode_server(frame, strict=True)
        assert_valid("S", frame)


def _error_instances() -> Iterator[errors.RelayError]:
    for code, cls in _websocket_codes().items():
        fields: dict[str, object] = {}
        if code == "bad_request":
            fields["path"] = "$.streams['notes/a']"
        if code == "seq_conflict":
            fields["head"] = 3
        if code in {"expired", "clock_skew"}:
            fields["server_time"] = NOW
        if code in {"rate_limited", "unavailable"}:
            fields["retry_after_ms"] = 1
        if code == "unsupported_version":
            fields["supported"] = [1]
        yield cls(**fields)
    yield errors.Unavailable()  # during the handshake, from the store: no retry_after_ms
    yield bad_request("unknown member", ("x" * 400,))  # a path cut to 256 characters


CONTEXTS = [
    None,
    AnswerContext(),
    AnswerContext(ref="r"),
    AnswerContext(ref="e", id="e", stream="notes/a"),
    AnswerContext(ref="", stream="s"),
]


def test_every_error_the_server_can_send_validates() -> None:
    for exc in _error_instances():
        for ctx in CONTEXTS:
            request_id = "0123456789abcdef0123456789abcdef" if exc.code == "internal" else None
            assert_valid("S", encode_error(exc, ctx, request_id=request_id))
    for production in (True, False):
        frame = encode_error(RuntimeError("boom"), request_id="abc", production=production)
        assert_valid("S", frame)
        assert ("detail" in orjson.loads(frame)) is not production


def _decodes(text: str) -> bool:
    try:
        decode_client(text)
    except errors.RelayError:
        return False
    return True


def test_the_frames_of_the_worked_session_validate() -> None:
    """Server frames all validate; a client frame validates exactly when the server's codec accepts it
    (the session sends one with an unknown member on purpose)."""
    items = session_frames()
    assert len(items) > 30
    refused = 0
    for item in items:
        if isinstance(item, Frame) and item.sender != "S":
            valid = _decodes(item.text)
            refused += not valid
            assert (schema_errors("C", item.text) == []) is valid, item.text
        elif isinstance(item, Frame):
            assert_valid("S", item.text)
    assert refused == 1


def test_every_example_validates_and_is_a_frame_of_the_worked_session() -> None:
    frames = [item.obj for item in session_frames() if isinstance(item, Frame)]
    count = 0
    for wire_type, message in channel_messages().items():
        assert message.get("examples"), wire_type
        for example in message["examples"]:
            assert_valid("C" if wire_type in CLIENT_TYPES else "S", example["payload"])
            assert example["payload"] in frames, example["name"]
            count += 1
    assert count >= len(CLIENT_TYPES | SERVER_TYPES)


async def _refusals() -> list[tuple[str, str]]:
    """A real session of refusals and edge cases; every frame each way, as (direction, text)."""
    seen: list[tuple[str, str]] = []
    ids = iter([USER_ID, PHONE.device_id])
    memory = MemoryStore(
        secrets=ServerSecrets(signing_seed=SERVER_SEED, token_secret=TOKEN_SECRET),
        id_factory=lambda: next(ids),
    )
    user = await memory.create_user(now_ms=NOW, token_ttl_ms=900_000)
    await _enroll(memory, user.token.token, PHONE)
    server_key = SigningKey(SERVER_SEED)
    gateway = Gateway(
        settings=Settings(max_event_bytes=1000, max_frame_bytes=5096),
        store=memory,
        bus=LocalBus(),
        clock=TrioClock.starting_at(NOW),
        server_key=server_key,
        token_secret=TOKEN_SECRET,
    )

    async with trio.open_nursery() as nursery:

        async def connect(query: bytes = b"") -> RecordingClient:
            client = RecordingClient(gateway, server_key.public_key_b64, query_string=query)
            await client.open(nursery)
            return client

        async def send(client: RecordingClient, frame: object, *, valid: bool = True) -> None:
            text = frame if isinstance(frame, str) else orjson.dumps(frame).decode()
            await client.send_text(text)
            if valid:
                seen.append(("C", text))

        async def answer(client: RecordingClient) -> dict[str, Any]:
            item = await client.next_item("A")
            assert isinstance(item, Frame), item
            seen.append(("S", item.text))
            return item.obj

        async def closed(client: RecordingClient, code: int) -> None:
            error = await answer(client)
            item = await client.next_item("A")
            assert isinstance(item, Close), item
            assert (item.code, item.reason) == (code, error["code"]), item

        client = await connect()
        machine = ClientHandshake(PHONE.key, PHONE.device_id, server_key.public_key_b64)
        await send(client, encode_client(machine.hello()))
        challenge = decode_server(orjson.dumps(await answer(client)))
        assert isinstance(challenge, messages.Challenge)
        await send(client, encode_client(machine.receive_challenge(challenge)))
        assert (await answer(client))["type"] == "welcome"

        publish = {"type": "publish", "stream": "notes", "body": {"n": 1}}
        expected = [
            ({**publish, "id": "e1", "ts": NOW, "expect_seq": 0, "ref": "p1"}, "ack", True),
            ({**publish, "id": "e1", "ts": NOW, "body": {"n": 2}}, "id_conflict", True),
            ({**publish, "id": "e2", "ts": 0, "ttl": 1}, "expired", True),
            ({**publish, "id": "e3", "ts": NOW + 10**9}, "clock_skew", True),
            ({**publish, "id": "e4", "ts": NOW, "body": "x" * 2000}, "too_large", True),
            ({**publish, "id": "e5", "ts": NOW, "ttl": 10**9}, "bad_request", False),
            ({**publish, "id": "bad id", "ts": NOW}, "bad_request", False),
            ({"type": "replay", "stream": "never-written", "ref": "r1"}, "replay.page", True),
            ({"type": "replay.next", "token": "bogus", "ref": "r2"}, "invalid_token", True),
            ({"type": "replay", "stream": "notes", "limit": 0}, "bad_request", False),
            ({"type": "streams", "limit": 1001, "ref": "s"}, "bad_request", False),
            ({"type": "streams", "ref": "s"}, "streams.page", True),
            ({"type": "nope", "ref": "u"}, "unknown_type", False),
            ({"type": "ping", "ref": "x" * 65}, "bad_request", False),
            ({"type": "ping", "ref": "k"}, "pong", True),
        ]
        for frame, outcome, valid in expected:
            await send(client, frame, valid=valid)
            got = await answer(client)
            assert outcome in (got["type"], got.get("code")), (frame, got)
        await send(client, encode_client(messages.Hello(v=1, device_id=DEVICE_ID, nonce=NONCE)))
        await closed(client, 1002)

        for first, code in (
            ({"type": "hello", "v": 2, "device_id": DEVICE_ID, "nonce": NONCE}, 1002),
            ({"type": "hello", "v": 1, "device_id": DEVICE_ID.upper(), "nonce": NONCE}, 1002),
            ({"type": "ping"}, 1002),
            ("{", 1007),
            ('{"type":"hello","type":"hello"}', 1007),
            ("x" * 6000, 1009),
        ):
            client = await connect()
            await send(client, first, valid=False)
            await closed(client, code)

        client = await connect()
        await client.send_bytes(b"\x00")
        await closed(client, 1003)

        client = await connect(query=b"debug=1")
        await closed(client, 1002)

        client = await connect()  # a device that is not enrolled: the challenge comes, auth fails
        stranger = ClientHandshake(SigningKey(bytes(32)), OTHER_ID, server_key.public_key_b64)
        await send(client, encode_client(stranger.hello()))
        challenge = decode_server(orjson.dumps(await answer(client)))
        assert isinstance(challenge, messages.Challenge)
        await send(client, encode_client(stranger.receive_challenge(challenge)))
        await closed(client, 1008)

        nursery.cancel_scope.cancel()
    return seen


def test_the_frames_of_a_session_of_refusals_validate() -> None:
    seen = trio.run(_refusals, clock=trio.testing.MockClock(autojump_threshold=0))
    codes = {orjson.loads(text).get("code") for direction, text in seen if direction == "S"}
    assert {"id_conflict", "expired", "clock_skew", "too_large", "invalid_token", "unknown_type"} <= codes
    assert {"protocol_error", "unsupported_version", "invalid_json", "binary_frame", "unauthorized"} <= codes
    for direction, text in seen:
        assert_valid(direction, text)


# --- frames that must not validate ---------------------------------------------------------------------

HELLO = {"type": "hello", "v": 1, "device_id": DEVICE_ID, "nonce": NONCE}
PUBLISH = {"type": "publish", "id": "e", "stream": "notes", "ts": NOW, "body": None}
ACK = orjson.loads(
    encode_server(messages.Ack(id="e", stream="s", seq=1, received_at=NOW, expires_at=NOW, ref="e"))
)
EVENT_FRAME = orjson.loads(encode_server(messages.Event(event=EVENT)))

WRONG: list[tuple[str, str, dict[str, Any]]] = [
    ("unknown member in a client message", "C", {**PUBLISH, "expect_sq": 3}),
    ("ref of 65 characters", "C", {**PUBLISH, "ref": "r" * 65}),
    ("ref of 65 characters on a ping", "C", {"type": "ping", "ref": "r" * 65}),
    ("seq of -1", "S", {**ACK, "seq": -1}),
    ("seq of 0", "S", {**EVENT_FRAME, "seq": 0}),
    ("seq beyond 2^53-1", "S", {**ACK, "seq": 2**53}),
    ("ts of -1", "C", {**PUBLISH, "ts": -1}),
    ("a boolean for an integer", "C", {**PUBLISH, "ts": True}),
    ("ttl of 0", "C", {**PUBLISH, "ttl": 0}),
    ("body missing", "C", {k: v for k, v in PUBLISH.items() if k != "body"}),
    ("stream with a space", "C", {**PUBLISH, "stream": "my notes"}),
    ("stream of 129 characters", "C", {**PUBLISH, "stream": "s" * 129}),
    ("stream ending in a newline", "C", {**PUBLISH, "stream": "notes\n"}),
    ("empty stream", "C", {**PUBLISH, "stream": ""}),
    ("event id with a slash", "C", {**PUBLISH, "id": "a/b"}),
    ("event id of 65 characters", "C", {**PUBLISH, "id": "e" * 65}),
    ("upper-case UUID", "C", {**HELLO, "device_id": DEVICE_ID.upper()}),
    ("UUID without hyphens", "C", {**HELLO, "device_id": DEVICE_ID.replace("-", "") + "0000"}),
    ("nonce with non-zero trailing bits", "C", {**HELLO, "nonce": NONCE[:-1] + "F"}),
    ("nonce with padding", "C", {**HELLO, "nonce": NONCE[:-1] + "="}),
    ("nonce of 31 bytes", "C", {**HELLO, "nonce": crypto.b64encode(bytes(31))}),
    ("nonce in standard base64", "C", {**HELLO, "nonce": "+" + NONCE[1:]}),
    ("version 2", "C", {**HELLO, "v": 2}),
    ("signature of 63 bytes", "C", {"type": "auth", "sig": crypto.b64encode(bytes(63))}),
    ("replay limit 0", "C", {"type": "replay", "stream": "s", "limit": 0}),
    ("streams limit 1001", "C", {"type": "streams", "limit": 1001}),
    ("streams after the empty name", "C", {"type": "streams", "after": ""}),
    ("replay.next without token", "C", {"type": "replay.next"}),
    ("a server message sent by a client", "C", {"type": "pong", "server_time": NOW}),
    ("a client message sent by the server", "S", {"type": "ping"}),
    ("an ack without duplicate", "S", {k: v for k, v in ACK.items() if k != "duplicate"}),
    ("an unknown member in a server message", "S", {**ACK, "extra": 1}),
    ("an unknown error code", "S", {"type": "error", "code": "teapot", "message": "m"}),
    ("seq_conflict without head", "S", {"type": "error", "code": "seq_conflict", "message": "m"}),
    ("bad_request without path", "S", {"type": "error", "code": "bad_request", "message": "m"}),
    ("rate_limited without retry_after_ms", "S", {"type": "error", "code": "rate_limited", "message": "m"}),
    ("an empty heads", "S", {"type": "heads", "streams": {}}),
    ("a head of 0 in a listing", "S", {"type": "streams.page", "streams": {"s": 0}, "next": None}),
    ("a stream name that is not one in heads", "S", {"type": "heads", "streams": {"a b": 1}}),
    (
        "a device change not in the enum",
        "S",
        {"type": "device", "change": "deleted", "device_id": OTHER_ID, "name": "n", "at": 0},
    ),
    ("replay.page without next", "S", {"type": "replay.page", "stream": "s", "events": [], "head": 0}),
    (
        "an event of a page with a type",
        "S",
        {"type": "replay.page", "stream": "s", "events": [EVENT_FRAME], "head": 1, "next": None},
    ),
    (
        "welcome limits missing a member",
        "S",
        {
            **orjson.loads(encode_server(SERVER_INSTANCES[1])),
            "limits": {k: v for k, v in attrs.asdict(messages.Limits()).items() if k != "max_inflight"},
        },
    ),
]


@pytest.mark.parametrize(("why", "direction", "frame"), WRONG, ids=[w[0] for w in WRONG])
def test_a_wrong_frame_does_not_validate(why: str, direction: str, frame: dict[str, Any]) -> None:
    assert schema_errors(direction, frame) != [], why
