"""Field rules of PROTOCOL.md §1 and the ordered publish checks of §4.2, steps 1 and 2.

Pure: no I/O, and time is always passed in (``now_ms``); nothing here reads a clock. Every check takes
untrusted values (typed ``object`` where the codec's guarantees are not relied upon) and either returns
the checked value or raises a :class:`~relay.errors.RelayError` subclass carrying the §1 path: a
malformed field is :class:`BadRequest`, an oversized body :class:`TooLarge`, and the time rules
:class:`Expired` and :class:`ClockSkew` with ``server_time``.

Device names live in :mod:`relay.protocol.names` and are re-exported here.
"""

from __future__ import annotations

import attrs

from relay import crypto
from relay.errors import BadRequest, ClockSkew, Expired, TooLarge
from relay.protocol import syntax
from relay.protocol.jsonio import canonical_json
from relay.protocol.messages import JsonValue, Limits, Publish, Replay, Streams
from relay.protocol.names import device_name_key, normalize_device_name

__all__ = [
    "STREAMS_PAGE_MAX",
    "AcceptedPublish",
    "PublishEcho",
    "canonical_body",
    "check_b64",
    "check_event_id",
    "check_expect_seq",
    "check_publish_time",
    "check_ref",
    "check_stream_name",
    "check_streams",
    "check_ts",
    "check_uuid",
    "clamp_replay",
    "device_name_key",
    "is_expired",
    "normalize_device_name",
    "publish_echo",
    "resolve_ttl",
    "validate_publish",
]

#: The largest (and default) ``limit`` of a ``streams`` request (§4.4).
STREAMS_PAGE_MAX = 1000


# --- single fields -----------------------------------------------------------------------------------


def _protocol_int(value: object, *, path: str, what: str) -> int:
    # bool is an int subclass; JSON true is never a number.
    if not isinstance(value, int) or not syntax.is_protocol_int(value):
        raise BadRequest(f"{what} must be an integer in 0..2^53-1", path=path)
    return value


def check_uuid(value: object, *, path: str) -> str:
    """A lowercase hyphenated 8-4-4-4-12 UUID, or :class:`BadRequest`.

    Inside ``Authorization`` the caller answers ``unauthorized`` instead (§1); inside ``hello`` the
    handshake follows §4.1 (``bad_request``, 1002; see docs/protocol.md).
    """
    if not isinstance(value, str) or not syntax.is_uuid(value):
        raise BadRequest("must be a lowercase hyphenated UUID", path=path)
    return value


def check_stream_name(value: object, *, path: str = "$.stream") -> str:
    """1..128 characters of ``[A-Za-z0-9._~:/-]``, or :class:`BadRequest`."""
    if not isinstance(value, str) or not syntax.is_stream_name(value):
        raise BadRequest("stream must be 1..128 characters of [A-Za-z0-9._~:/-]", path=path)
    return value


def check_event_id(value: object, *, path: str = "$.id") -> str:
    """1..64 characters of ``[A-Za-z0-9._:-]``, or :class:`BadRequest`."""
    if not isinstance(value, str) or not syntax.is_event_id(value):
        raise BadRequest("id must be 1..64 characters of [A-Za-z0-9._:-]", path=path)
    return value


def check_ref(value: object, *, path: str = "$.ref") -> str | None:
    """An optional ``ref``: absent (``None``) or a string of at most 64 characters (§4)."""
    if value is None:
        return None
    if not isinstance(value, str) or not syntax.is_ref(value):
        raise BadRequest("ref must be a string of at most 64 characters", path=path)
    return value


def check_b64(value: object, *, length: int, path: str) -> bytes:
    """The bytes of canonical base64url of exactly ``length`` decoded bytes, or :class:`BadRequest`."""
    data = crypto.b64decode(value, length)
    if data is None:
        raise BadRequest(f"must be canonical unpadded base64url of {length} bytes", path=path)
    return data


def check_ts(value: object, *, path: str = "$.ts") -> int:
    """A timestamp in ms: an integer in 0..2^53-1. Its plausibility is :func:`check_publish_time`'s."""
    return _protocol_int(value, path=path, what="ts")


def resolve_ttl(value: object, *, limits: Limits, path: str = "$.ttl") -> int:
    """``ttl`` in 1..``max_ttl_s`` seconds; absent (``None``) resolves to ``default_ttl_s``."""
    if value is None:
        return limits.default_ttl_s
    if not isinstance(value, int) or not syntax.is_protocol_int(value) or not 1 <= value <= limits.max_ttl_s:
        raise BadRequest(f"ttl must be an integer in 1..{limits.max_ttl_s}", path=path)
    return value


def check_expect_seq(value: object, *, path: str = "$.expect_seq") -> int | None:
    """Absent (``None``) or an integer in 0..2^53-1; 0 means "a stream never written" (§4.2 step 5)."""
    if value is None:
        return None
    return _protocol_int(value, path=path, what="expect_seq")


def canonical_body(value: JsonValue, *, max_event_bytes: int, path: str = "$.body") -> bytes:
    """The RFC 8785 canonical form of a body, the bytes that are measured, compared and stored.

    :class:`BadRequest` (``path``) when the value has no canonical form; then :class:`TooLarge` when
    the canonical form is longer than ``max_event_bytes`` UTF-8 bytes. The size is that of the
    canonical form, not of the text as sent: insignificant white space is not counted.
    """
    body = canonical_json(value, path=path)
    if len(body) > max_event_bytes:
        raise TooLarge(
            f"The body is {len(body)} bytes in canonical form; at most {max_event_bytes} are allowed"
        )
    return body


# --- time --------------------------------------------------------------------------------------------


def is_expired(expires_at: int, *, now_ms: int, clock_skew_ms: int) -> bool:
    """The one definition of *expired* (§4.2): ``now > expires_at + clock_skew_ms``.

    Used to refuse a publish, and by delivery, replay, listing and purging alike, so an event that was
    accepted is never treated as expired by another part of the server at the same instant.
    """
    return now_ms > expires_at + clock_skew_ms


def check_publish_time(ts: int, ttl: int, *, limits: Limits, now_ms: int) -> int:
    """Step 2 of §4.2: the event's ``expires_at``, or :class:`Expired` / :class:`ClockSkew`.

    Expiry is checked first, as the spec orders it. With ``ttl >= 1`` and a non-negative skew the two
    can never both apply (that would need ``ts > ts + ttl * 1000 + 2 * skew``), so the order only
    matters as a contract. An old ``ts`` that has not expired is accepted: devices publish what they
    queued while offline.
    """
    expires_at = ts + ttl * 1000
    if is_expired(expires_at, now_ms=now_ms, clock_skew_ms=limits.clock_skew_ms):
        raise Expired(server_time=now_ms)
    if ts > now_ms + limits.clock_skew_ms:
        raise ClockSkew(server_time=now_ms)
    return expires_at


# --- publish -----------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AcceptedPublish:
    """A publish that passed steps 1 and 2 of §4.2; steps 3-6 (rate, quota, idempotency, head,
    commit) need the store and happen in the gateway.

    ``ttl`` is resolved (never ``None``). ``body`` is the canonical UTF-8 form, the one to store,
    compare for idempotency and deliver; ``body_size`` is its length, the unit of ``max_event_bytes``
    and ``max_stored_bytes``. ``ref`` is what every answer carries: the request's ``ref``, or else the
    event id.
    """

    id: str
    stream: str
    ts: int
    ttl: int
    expires_at: int
    expect_seq: int | None
    body: bytes
    body_size: int
    ref: str


def validate_publish(msg: Publish, *, limits: Limits, now_ms: int) -> AcceptedPublish:
    """Steps 1 and 2 of §4.2, in order; the first failure raises.

    Step 1 checks ``ref`` (the envelope), then ``id``, ``stream``, ``ts``, ``ttl``, ``expect_seq`` and
    the body's syntax, each :class:`BadRequest` with its path, and only then the body's canonical size
    (:class:`TooLarge`). Step 2 is :func:`check_publish_time`. So an event that is both too large and
    expired answers ``too_large``, and one with a bad id and a bad stream answers ``$.id``.
    """
    ref = check_ref(msg.ref)
    event_id = check_event_id(msg.id)
    stream = check_stream_name(msg.stream)
    ts = check_ts(msg.ts)
    ttl = resolve_ttl(msg.ttl, limits=limits)
    expect_seq = check_expect_seq(msg.expect_seq)
    body = canonical_body(msg.body, max_event_bytes=limits.max_event_bytes)
    expires_at = check_publish_time(ts, ttl, limits=limits, now_ms=now_ms)
    return AcceptedPublish(
        id=event_id,
        stream=stream,
        ts=ts,
        ttl=ttl,
        expires_at=expires_at,
        expect_seq=expect_seq,
        body=body,
        body_size=len(body),
        ref=ref if ref is not None else event_id,
    )


@attrs.frozen(kw_only=True)
class PublishEcho:
    """What any answer to a publish echoes (§4): ``id`` and ``stream`` as sent when they are valid,
    and ``ref``: the request's own when valid, else the event id when valid, else ``None``."""

    id: str | None
    stream: str | None
    ref: str | None


def publish_echo(msg: Publish) -> PublishEcho:
    """The members to echo on an ``ack`` or ``error`` answering ``msg``, whatever else is wrong with it."""
    event_id = msg.id if syntax.is_event_id(msg.id) else None
    stream = msg.stream if syntax.is_stream_name(msg.stream) else None
    ref = msg.ref if msg.ref is not None and syntax.is_ref(msg.ref) else event_id
    return PublishEcho(id=event_id, stream=stream, ref=ref)


# --- replay and listing ------------------------------------------------------------------------------


def clamp_replay(msg: Replay, limits: Limits) -> tuple[int, int]:
    """``(after, limit)`` of a ``replay`` request (§4.4); the stream is :func:`check_stream_name`'s.

    ``after`` defaults to 0. ``limit`` defaults to ``replay_page``, and larger values are clamped to
    it; ``limit`` 0 is :class:`BadRequest` (a page of nothing can never reach ``head``, so a client
    asking for it has a bug, not a wish).
    """
    after = 0 if msg.after is None else _protocol_int(msg.after, path="$.after", what="after")
    if msg.limit is None:
        return after, limits.replay_page
    limit = _protocol_int(msg.limit, path="$.limit", what="limit")
    if limit == 0:
        raise BadRequest("limit must be at least 1", path="$.limit")
    return after, min(limit, limits.replay_page)


def check_streams(msg: Streams) -> tuple[str | None, int]:
    """``(after, limit)`` of a ``streams`` request (§4.4).

    ``after``, when present, must be a valid stream name (the empty string is not one); ``limit``
    defaults to 1000 and must lie in 1..1000: unlike ``replay``, values outside are refused, not
    clamped, because the spec states the range.
    """
    after = None if msg.after is None else check_stream_name(msg.after, path="$.after")
    if msg.limit is None:
        return after, STREAMS_PAGE_MAX
    limit: object = msg.limit
    if not isinstance(limit, int) or not syntax.is_protocol_int(limit) or not 1 <= limit <= STREAMS_PAGE_MAX:
        raise BadRequest(f"limit must be an integer in 1..{STREAMS_PAGE_MAX}", path="$.limit")
    return after, limit
