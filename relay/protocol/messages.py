"""Every message of PROTOCOL.md §4, in both directions, as frozen attrs values.

These classes hold *decoded* values: the codec (:mod:`relay.protocol.codec`) has already checked
types, integer ranges and unknown members. Semantic rules (name syntax, sizes, time) live in
:mod:`relay.protocol.validation` and :mod:`relay.protocol.handshake`.

Optional members are ``None`` when absent or ``null`` on the wire (§1: the same meaning). ``ref`` is
the client's correlation string (at most 64 characters), echoed on answers.
"""

from __future__ import annotations

from typing import ClassVar, Literal, TypeAlias

import attrs

#: Any I-JSON value, as decoded (objects are ``dict``, arrays ``list``).
JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"

DeviceChange = Literal["enrolled", "renamed", "revoked"]


# --- client → server ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Hello:
    TYPE: ClassVar[str] = "hello"
    v: int
    device_id: str
    nonce: str
    ref: str | None = None


@attrs.frozen(kw_only=True)
class Auth:
    TYPE: ClassVar[str] = "auth"
    sig: str
    ref: str | None = None


@attrs.frozen(kw_only=True)
class Publish:
    TYPE: ClassVar[str] = "publish"
    id: str
    stream: str
    ts: int
    body: JsonValue
    ttl: int | None = None
    expect_seq: int | None = None
    ref: str | None = None


@attrs.frozen(kw_only=True)
class Replay:
    TYPE: ClassVar[str] = "replay"
    stream: str
    after: int | None = None
    limit: int | None = None
    ref: str | None = None


@attrs.frozen(kw_only=True)
class ReplayNext:
    TYPE: ClassVar[str] = "replay.next"
    token: str
    ref: str | None = None


@attrs.frozen(kw_only=True)
class Streams:
    TYPE: ClassVar[str] = "streams"
    after: str | None = None
    limit: int | None = None
    ref: str | None = None


@attrs.frozen(kw_only=True)
class Ping:
    TYPE: ClassVar[str] = "ping"
    ref: str | None = None


ClientMessage: TypeAlias = Hello | Auth | Publish | Replay | ReplayNext | Streams | Ping
CLIENT_MESSAGES: tuple[type[ClientMessage], ...] = (Hello, Auth, Publish, Replay, ReplayNext, Streams, Ping)


# --- server → client ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Limits:
    """The limits a client must respect; sent in ``welcome`` and by ``GET /v1/server``."""

    max_event_bytes: int = 65_536
    max_frame_bytes: int = 131_072
    replay_page: int = 100
    clock_skew_ms: int = 300_000
    max_ttl_s: int = 2_592_000
    default_ttl_s: int = 604_800
    publish_rate: int = 200
    publish_burst: int = 400
    max_replays: int = 4
    max_inflight: int = 64


@attrs.frozen(kw_only=True)
class Challenge:
    TYPE: ClassVar[str] = "challenge"
    session_id: str
    nonce: str
    server_time: int
    server_key: str
    server_sig: str


@attrs.frozen(kw_only=True)
class Welcome:
    TYPE: ClassVar[str] = "welcome"
    session_id: str
    user_id: str
    device_id: str
    name: str
    server_time: int
    heartbeat_ms: int
    limits: Limits
    streams: dict[str, int]
    streams_truncated: bool
    online: list[str]


@attrs.frozen(kw_only=True)
class Ack:
    TYPE: ClassVar[str] = "ack"
    id: str
    stream: str
    seq: int
    received_at: int
    expires_at: int
    duplicate: bool = False
    ref: str | None = None


@attrs.frozen(kw_only=True)
class StoredEvent:
    """An event as stored and delivered; inside ``replay.page`` it appears without ``type``.

    ``body`` is the RFC 8785 canonical JSON text of the body, exactly as stored: it is spliced into
    frames verbatim, never re-encoded.
    """

    stream: str
    seq: int
    id: str
    device_id: str
    ts: int
    received_at: int
    expires_at: int
    body: str


@attrs.frozen(kw_only=True)
class Event:
    """``{"type": "event", ...}``: live delivery of one committed event."""

    TYPE: ClassVar[str] = "event"
    event: StoredEvent


@attrs.frozen(kw_only=True)
class Heads:
    TYPE: ClassVar[str] = "heads"
    streams: dict[str, int]


@attrs.frozen(kw_only=True)
class ReplayPage:
    TYPE: ClassVar[str] = "replay.page"
    stream: str
    events: list[StoredEvent]
    head: int
    next: str | None
    ref: str | None = None


@attrs.frozen(kw_only=True)
class StreamsPage:
    TYPE: ClassVar[str] = "streams.page"
    streams: dict[str, int]
    next: str | None
    ref: str | None = None


@attrs.frozen(kw_only=True)
class Pong:
    TYPE: ClassVar[str] = "pong"
    server_time: int
    ref: str | None = None


@attrs.frozen(kw_only=True)
class Presence:
    TYPE: ClassVar[str] = "presence"
    device_id: str
    online: bool
    at: int


@attrs.frozen(kw_only=True)
class DeviceNotice:
    """``{"type": "device", ...}``: a device of the user was enrolled, renamed or revoked."""

    TYPE: ClassVar[str] = "device"
    change: DeviceChange
    device_id: str
    name: str
    at: int


@attrs.frozen(kw_only=True)
class Error:
    """``{"type": "error", ...}``. ``fields`` holds the code-specific members (path, head, ...)."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    ref: str | None = None
    fields: dict[str, JsonValue] = attrs.field(factory=dict)


ServerMessage: TypeAlias = (
    Challenge
    | Welcome
    | Ack
    | Event
    | Heads
    | ReplayPage
    | StreamsPage
    | Pong
    | Presence
    | DeviceNotice
    | Error
)
SERVER_MESSAGES: tuple[type[ServerMessage], ...] = (
    Challenge,
    Welcome,
    Ack,
    Event,
    Heads,
    ReplayPage,
    StreamsPage,
    Pong,
    Presence,
    DeviceNotice,
    Error,
)
