"""Hypothesis fuzzing of every client message type over real WebSocket sessions (item 2a).

Messages of every type (hello, auth, publish, replay, replay.next, streams, ping), well-formed or with
members replaced, removed or added, of hostile types, sizes, numbers and Unicode, are sent over a real
WebSocket: after a real handshake, and as the first or second frame of one. Each must get exactly the
answer the protocol allows, within the cap: its own answer type or an ``error`` that keeps the session
open, echoing ``ref``/``id``/``stream`` as §4 says; or an ``error`` followed by the close of its code,
only for what closes a session (a frame that is not I-JSON, one over ``max_frame_bytes``, a handshake
message out of place). No message is unsafe, nothing takes longer than the cap, and a bystander user's
session receives every one of its events throughout.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import attrs
import trio
from hostile import base_messages, encode, mutated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_support import (
    CASES,
    STEP_S,
    Bystander,
    Closed,
    LiveServer,
    Wire,
    check_close,
    open_wire,
    server_thread,
)

from relay import crypto
from relay.client import DeviceCredentials
from relay.protocol.syntax import is_event_id, is_stream_name, is_uuid

AFTER_HANDSHAKE_EXAMPLES = 400
BEFORE_HANDSHAKE_EXAMPLES = 200

#: Message types sent after the handshake, publishes the most (a type repeated is drawn more often).
AFTER_HANDSHAKE_MIX = ["publish"] * 4 + ["replay", "replay.next", "streams", "ping", "hello", "auth"]

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

#: The answer each request type gets when it is not refused.
ANSWERS = {"publish": "ack", "replay": "replay.page", "replay.next": "replay.page", "streams": "streams.page"}
ANSWERS["ping"] = "pong"
#: Frames the server may send at any time, which answer nothing.
LIVE = frozenset({"event", "heads", "presence", "device"})
#: Refusals that keep the session open (§4.6), each a possible answer to some hostile request.
#: What a well-formed request may still be refused with, for the values it holds.
VALID_REFUSALS = frozenset({"too_large", "rate_limited", "id_conflict", "seq_conflict", "invalid_token"})
OPEN_ERRORS = frozenset(
    {
        "bad_request",
        "too_large",
        "expired",
        "clock_skew",
        "rate_limited",
        "quota_exceeded",
        "id_conflict",
        "seq_conflict",
        "invalid_token",
        "busy",
        "unknown_type",
    }
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _has_unpaired_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_has_unpaired_surrogate(k) or _has_unpaired_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_unpaired_surrogate(v) for v in value)
    return False


def _has_huge_number(value: Any) -> bool:
    if type(value) is int:
        return abs(value) >= 2**1024  # beyond the double range: the frame is not I-JSON
    if isinstance(value, dict):
        return any(_has_huge_number(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_huge_number(v) for v in value)
    return False


def closing_code(message: dict[str, Any], text: str, server: LiveServer) -> str | None:
    """The error that must close the session for this frame whatever its type, worked out here
    independently of the server's parser; ``None`` when the frame is a readable I-JSON object."""
    if len(text.encode("utf-8", "surrogatepass")) > server.settings.max_frame_bytes:
        return "frame_too_large"
    if _depth(message) > 62 or _has_unpaired_surrogate(message) or _has_huge_number(message):
        return "invalid_json"
    return None


def expected_echo(message: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """The ``ref``, ``id`` and ``stream`` an answer to ``message`` carries (§4, docs/protocol.md)."""
    kind = message.get("type")
    ref = message.get("ref")
    valid_ref = ref if isinstance(ref, str) and len(ref) <= 64 else None
    event_id, stream = message.get("id"), message.get("stream")
    valid_id = event_id if is_event_id(event_id) else None
    valid_stream = stream if is_stream_name(stream) else None
    if kind == "publish":
        return (valid_ref if valid_ref is not None else valid_id), valid_id, valid_stream
    if kind == "replay":
        return valid_ref, None, valid_stream
    return valid_ref, None, None


#: What the fuzzed frames got, for the test's output (``ack``, ``error bad_request``, ``close invalid_json``).
OUTCOMES: collections.Counter[str] = collections.Counter()


@attrs.define(eq=False)
class FuzzedDevice:
    """One device's session, reopened whenever a hostile message closed it."""

    server: LiveServer
    creds: DeviceCredentials
    wire: Wire | None = None
    reopened: int = 0

    async def session(self) -> Wire:
        if self.wire is None or self.wire.closed is not None:
            if self.wire is not None:
                await self.wire.aclose()
            self.wire = await open_wire(self.server)
            await self.wire.handshake(self.creds)
            self.reopened += 1
        return self.wire

    async def aclose(self) -> None:
        if self.wire is not None:
            await self.wire.aclose()


def _is_valid_hello(message: dict[str, Any]) -> bool:
    """Whether ``message`` is a well-formed ``hello`` of version 1 (worked out here, not by the server)."""
    ref = message.get("ref")
    return (
        set(message) <= {"type", "v", "device_id", "nonce", "ref"}
        and message.get("type") == "hello"
        and type(message.get("v")) is int
        and message["v"] == 1
        and is_uuid(message.get("device_id"))
        and crypto.b64decode(message.get("nonce"), 32) is not None
        and (ref is None or (isinstance(ref, str) and len(ref) <= 64))
    )


def _is_valid_auth(message: dict[str, Any]) -> bool:
    ref = message.get("ref")
    return (
        set(message) <= {"type", "sig", "ref"}
        and message.get("type") == "auth"
        and crypto.b64decode(message.get("sig"), 64) is not None
        and (ref is None or (isinstance(ref, str) and len(ref) <= 64))
    )


async def after_handshake(device: FuzzedDevice, case: tuple[str, dict[str, Any]]) -> None:
    """Send one message on a live session and check its answer (module docstring)."""
    label, message = case
    server = device.server
    text = encode(message)
    closing = closing_code(message, text, server)
    kind = message.get("type")
    with trio.fail_after(STEP_S):
        wire = await device.session()
        await wire.send_text(text)
        frames: list[dict[str, Any]] = []
        while not isinstance(frame := await wire.next_frame(), Closed):
            if frame["type"] not in LIVE:
                frames.append(frame)
                break
        answer = frames[-1] if frames else None
        if answer is not None and answer["type"] == "error" and answer["code"] not in OPEN_ERRORS:
            frame = await wire.next_frame()  # an error that closes: the close follows it
            assert isinstance(frame, Closed), (message, answer, frame)
        if isinstance(frame, Closed):
            code = check_close(frames, frame.code, frame.reason, in_handshake=False)
            OUTCOMES[f"after: close {code}"] += 1
            if closing is None:  # only a well-formed handshake message closes a readable frame
                assert code == "protocol_error", message
                assert _is_valid_hello(message) or _is_valid_auth(message), message
            else:
                assert code == closing, (message, frames)
            return
    assert closing is None, (closing, message, answer)
    assert answer is not None, message
    OUTCOMES[f"after: {answer['type']} {answer.get('code', '')}".rstrip()] += 1
    ref, event_id, stream = expected_echo(message)
    assert answer.get("ref") == ref, (message, answer)
    if answer["type"] == "error":
        assert (answer.get("id"), answer.get("stream")) == (event_id, stream), (message, answer)
        if not (isinstance(kind, str) and kind in ANSWERS):
            assert answer["code"] in ("bad_request", "unknown_type"), (message, answer)
        if label == "valid":  # a well-formed request is refused only for what its values cause
            assert answer["code"] in VALID_REFUSALS, (message, answer)
        return
    assert isinstance(kind, str), (message, answer)
    assert answer["type"] == ANSWERS.get(kind), (message, answer)
    if answer["type"] == "ack":
        assert (answer["id"], answer["stream"]) == (message["id"], message["stream"])
    elif answer["type"] == "replay.page":
        assert answer["stream"] == message.get("stream", answer["stream"])
        assert all(event["device_id"] == device.creds.device_id for event in answer["events"])
    elif answer["type"] == "streams.page":
        assert all(is_stream_name(name) for name in answer["streams"])


async def before_handshake(
    server: LiveServer, case: tuple[str, dict[str, Any]], second: dict[str, Any]
) -> None:
    """Open a connection, send ``case`` first (and ``second`` if challenged) and check the refusal."""
    _, first = case
    with trio.fail_after(STEP_S):
        wire = await open_wire(server)
        try:
            await wire.send_text(encode(first))
            reply = await wire.next_frame()
            challenged = not isinstance(reply, Closed) and reply["type"] == "challenge"
            closing = closing_code(first, encode(first), server)
            assert challenged == (closing is None and _is_valid_hello(first)), (first, reply)
            if challenged:
                await wire.send_text(encode(second))
                frames, closed = await wire.until_closed()
                code = check_close(frames, closed.code, closed.reason, in_handshake=True)
                OUTCOMES[f"before: challenge, then close {code}"] += 1
                closing = closing_code(second, encode(second), server)
                if closing is not None:
                    expected = closing
                elif second.get("type") != "auth":
                    expected = "protocol_error"
                else:  # a random signature of an unknown device
                    expected = "unauthorized" if _is_valid_auth(second) else "bad_request"
                assert code == expected, (second, frames)
                return
            frames = [] if isinstance(reply, Closed) else [reply]
            closed = reply
            if not isinstance(closed, Closed):
                rest, closed = await wire.until_closed()
                frames += rest
            code = check_close(frames, closed.code, closed.reason, in_handshake=True)
            OUTCOMES[f"before: close {code}"] += 1
            if closing is not None:
                assert code == closing, (first, frames)
            elif first.get("type") != "hello":
                assert code == "protocol_error", (first, frames)
            else:
                assert code in ("bad_request", "unsupported_version"), (first, frames)
                if code == "unsupported_version":
                    assert frames[-1]["supported"] == [1]
        finally:
            await wire.aclose()


def labelled(now_ms: int, kinds: list[str] | None = None) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    bases = base_messages(now_ms)
    chosen = [bases[kind] for kind in (kinds or list(bases))]
    valid = st.one_of(*chosen).map(lambda m: ("valid", m))
    broken = st.one_of(*(mutated(base) for base in chosen)).map(lambda m: ("mutated", m))
    return st.one_of(valid, broken)


def test_every_message_type_fuzzed_after_the_handshake_is_answered_safely_and_others_are_undisturbed(
    data_dir: Path,
) -> None:
    with server_thread(data_dir) as portal:
        watcher = Bystander(portal.server)
        portal.start(watcher.run)
        creds = portal.run(portal.server.enroll, "fuzzed")
        device = FuzzedDevice(portal.server, creds)

        @settings(FUZZ, max_examples=AFTER_HANDSHAKE_EXAMPLES)
        @given(case=labelled(portal.server.now_ms(), AFTER_HANDSHAKE_MIX))
        def exchange(case: tuple[str, dict[str, Any]]) -> None:
            CASES["messages after the handshake (hypothesis)"] += 1
            portal.run(after_handshake, device, case)

        exchange()
        portal.run(device.aclose)
        portal.run(watcher.verify)
        print(watcher.summary(), f"; the fuzzed session was opened {device.reopened} times")
        print(sorted(OUTCOMES.items()))


def test_every_message_type_fuzzed_as_the_first_or_second_frame_of_a_handshake_is_refused_with_its_close(
    data_dir: Path,
) -> None:
    with server_thread(data_dir) as portal:
        watcher = Bystander(portal.server)
        portal.start(watcher.run)
        now = portal.server.now_ms()
        firsts = st.one_of(labelled(now, ["hello"] * 3), labelled(now))
        seconds = st.one_of(labelled(now, ["auth"]), labelled(now)).map(lambda case: case[1])

        @settings(FUZZ, max_examples=BEFORE_HANDSHAKE_EXAMPLES)
        @given(case=firsts, second=seconds)
        def exchange(case: tuple[str, dict[str, Any]], second: dict[str, Any]) -> None:
            CASES["messages before the handshake (hypothesis)"] += 1
            portal.run(before_handshake, portal.server, case, second)

        exchange()
        portal.run(watcher.verify)
        print(watcher.summary())
        print(sorted(OUTCOMES.items()))
