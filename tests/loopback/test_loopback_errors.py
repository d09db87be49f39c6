"""Every refusal of PROTOCOL.md §4.6 that a client can cause, over real sockets.

Errors that keep the session open are answered and the session goes on; those that close it send
their ``error`` first, then close with its code, the code being the reason. None disturbs another
session. (Timers, and failures of the store, are tested in-process under MockClock: tests/gateway.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import pytest
import trio
from loopback_support import CAP_S, LiveServer, live_channel, next_live, raw_session, running_server
from trio_websocket import ConnectionClosed

from relay import crypto
from relay.client import ConnectionLost, connect
from relay.errors import (
    BadRequest,
    ClockSkew,
    Expired,
    IdConflict,
    InvalidToken,
    QuotaExceeded,
    RelayError,
    SeqConflict,
    TooLarge,
)
from relay.protocol import messages


async def test_refused_publishes_are_answered_and_the_session_stays_open(server: LiveServer) -> None:
    alice = await server.enroll("phone")
    now = server.app.services.runtime.clock.now_ms()
    skew = server.settings.clock_skew_ms
    refusals: list[RelayError] = []
    with trio.fail_after(CAP_S):
        async with connect(alice) as a:
            first = await a.publish("notes", {"v": 1}, id="event-1")

            async def refused(**publish: object) -> None:
                with pytest.raises(RelayError) as caught:
                    await a.publish(**publish)  # type: ignore[arg-type]
                refusals.append(caught.value)

            await refused(stream="bad stream!", body=1)
            await refused(stream="notes", body="x" * server.settings.max_event_bytes)
            await refused(stream="notes", body=1, ts=now - 3_600_000, ttl=1)
            await refused(stream="notes", body=1, ts=now + skew + 60_000)
            await refused(stream="notes", body={"v": 2}, id="event-1")
            await refused(stream="notes", body=1, expect_seq=7)
            after = await a.publish("notes", {"v": 3}, expect_seq=1)

    assert [type(e) for e in refusals] == [BadRequest, TooLarge, Expired, ClockSkew, IdConflict, SeqConflict]
    assert refusals[0].fields["path"] == "$.stream"
    assert isinstance(refusals[2].fields["server_time"], int)
    assert isinstance(refusals[3].fields["server_time"], int)
    assert refusals[5].fields["head"] == 1
    assert (first.seq, after.seq) == (1, 2)  # nothing of the refused ones was stored


async def test_malformed_requests_get_bad_request_unknown_type_and_invalid_token(server: LiveServer) -> None:
    alice = await server.enroll("phone")
    with trio.fail_after(CAP_S):
        async with raw_session(server.ws_url) as raw:
            await raw.handshake(alice)
            await raw.send({"type": "publish", "id": "a", "stream": "s", "ts": "?", "body": 1, "ref": "r1"})
            typed = await raw.receive()
            await raw.send({"type": "replay", "stream": "s", "after": 0, "expect_sq": 1, "ref": "r2"})
            unknown_member = await raw.receive()
            await raw.send({"type": "subscribe", "ref": "r3"})
            unknown_type = await raw.receive()
            await raw.send({"type": "replay.next", "token": "not-a-token", "ref": "r4"})
            bad_token = await raw.receive()
            await raw.send({"type": "ping", "ref": "r5"})
            pong = await raw.receive()

    assert isinstance(typed, messages.Error)
    assert (typed.code, typed.fields["path"], typed.ref) == ("bad_request", "$.ts", "r1")
    assert isinstance(unknown_member, messages.Error)
    assert (unknown_member.code, unknown_member.fields["path"]) == ("bad_request", "$.expect_sq")
    assert isinstance(unknown_type, messages.Error)
    assert (unknown_type.code, unknown_type.ref) == ("unknown_type", "r3")
    assert isinstance(bad_token, messages.Error)
    assert (bad_token.code, bad_token.ref) == ("invalid_token", "r4")
    assert isinstance(pong, messages.Pong)  # still open


async def test_a_token_of_another_device_is_invalid(server: LiveServer) -> None:
    alice, bob = await server.devices(2)
    with trio.fail_after(CAP_S):
        async with connect(alice) as a, connect(bob) as b:
            for n in range(150):
                await a.publish("log", n)
            page = await a.replay("log")
            assert page.next is not None
            with pytest.raises(InvalidToken):
                await b.replay_next(page.next)


async def test_more_than_max_replays_outstanding_requests_are_busy(server: LiveServer) -> None:
    alice = await server.enroll("phone")
    with trio.fail_after(CAP_S):
        async with connect(alice) as a:
            for waiter in [await a.send_publish("log", n) for n in range(300)]:
                await waiter()
        async with raw_session(server.ws_url) as raw:
            await raw.handshake(alice)
            # All in one go: the pager serves one at a time, so the later ones find 4 outstanding.
            frames = [json.dumps({"type": "replay", "stream": "log", "ref": f"q{n}"}) for n in range(40)]
            for frame in frames:
                await raw.ws.send_message(frame)
            answers: list[messages.ServerMessage] = []
            while len(answers) < len(frames):
                answer = await raw.receive()
                if getattr(answer, "ref", None) is not None:  # not a live frame
                    answers.append(answer)

    codes = {getattr(a, "ref", None): getattr(a, "code", a.TYPE) for a in answers}
    assert sorted(codes) == sorted(f"q{n}" for n in range(40))
    assert "busy" in codes.values()
    assert codes["q0"] == "replay.page"
    assert sum(code == "replay.page" for code in codes.values()) >= server.settings.max_replays


async def test_a_publish_beyond_the_stream_quota_is_quota_exceeded(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        async with running_server(tmp_path / "data", max_streams=2) as server:
            alice = await server.enroll("phone")
            async with connect(alice) as a:
                await a.publish("one", 1)
                await a.publish("two", 2)
                with pytest.raises(QuotaExceeded):
                    await a.publish("three", 3)
                again = await a.publish("one", 4)
    assert again.seq == 2


# --- errors that close the session --------------------------------------------------------------------


async def closes_with(server: LiveServer, *frames: object, creds: object = None) -> tuple[str, int, str]:
    async with raw_session(server.ws_url) as raw:
        if creds is not None:
            await raw.handshake(creds)  # type: ignore[arg-type]
        for frame in frames:
            try:
                await raw.send(frame)
            except ConnectionClosed:
                break
        got, code, reason = await raw.until_closed()
    errors = [f for f in got if isinstance(f, messages.Error)]
    assert code is not None
    assert reason is not None
    return errors[-1].code, code, reason


async def test_every_error_that_closes_a_session_precedes_the_close_with_its_code(server: LiveServer) -> None:
    alice = await server.enroll("phone")
    hello = {"type": "hello", "v": 1, "device_id": alice.device_id, "nonce": crypto.random_nonce()}
    big = server.settings.max_frame_bytes
    with trio.fail_after(CAP_S):
        cases = {
            "publish before hello": await closes_with(server, {"type": "ping"}),
            "hello twice": await closes_with(server, hello, creds=alice),
            "version 2": await closes_with(server, {**hello, "v": 2}),
            "bad hello": await closes_with(server, {**hello, "device_id": alice.device_id.upper()}),
            "binary frame": await closes_with(server, b"\x00\x01", creds=alice),
            "invalid json": await closes_with(server, '{"type": "ping",}', creds=alice),
            "duplicate key": await closes_with(server, '{"type": "ping", "type": "ping"}', creds=alice),
            "too large": await closes_with(server, json.dumps({"ref": "x" * big}), creds=alice),
        }
    assert cases == {
        "publish before hello": ("protocol_error", 1002, "protocol_error"),
        "hello twice": ("protocol_error", 1002, "protocol_error"),
        "version 2": ("unsupported_version", 1002, "unsupported_version"),
        "bad hello": ("bad_request", 1002, "bad_request"),
        "binary frame": ("binary_frame", 1003, "binary_frame"),
        "invalid json": ("invalid_json", 1007, "invalid_json"),
        "duplicate key": ("invalid_json", 1007, "invalid_json"),
        "too large": ("frame_too_large", 1009, "frame_too_large"),
    }


async def test_a_bad_signature_and_an_unknown_device_are_unauthorized_1008(server: LiveServer) -> None:
    alice = await server.enroll("phone")
    impostor = attrs.evolve(alice, key=crypto.SigningKey.generate())
    stranger = attrs.evolve(alice, device_id="00000000-0000-4000-8000-000000000000")
    with trio.fail_after(CAP_S):
        for creds in (impostor, stranger):
            with pytest.raises(ConnectionLost) as lost:
                async with connect(creds):
                    pass
            assert (lost.value.code, lost.value.reason) == (1008, "unauthorized")
            assert lost.value.error is not None
            assert lost.value.error.code == "unauthorized"
            assert not lost.value.retryable


async def test_a_revoked_device_is_refused_at_its_handshake(server: LiveServer) -> None:
    alice = await server.enroll("phone")
    await server.store.revoke_device(alice.device_id, now_ms=server.app.services.runtime.clock.now_ms())
    with trio.fail_after(CAP_S), pytest.raises(ConnectionLost) as lost:
        async with connect(alice):
            pass
    assert (lost.value.code, lost.value.reason) == (1008, "device_revoked")


async def test_a_second_session_of_a_device_replaces_the_first_with_4001(server: LiveServer) -> None:
    alice, bob = await server.devices(2)
    to_bob, bob_live = live_channel()
    with trio.fail_after(CAP_S):
        async with connect(bob, live=to_bob), connect(alice) as first:
            await next_live(bob_live, messages.Presence)  # alice online
            async with connect(alice) as second:
                await first.closed.wait()
                await second.publish("notes", "from the second session")
                event = await next_live(bob_live, messages.Event | messages.Presence)
    assert first.lost is not None
    assert (first.lost.code, first.lost.reason) == (4001, "session_replaced")
    assert first.lost.error is not None
    assert first.lost.error.code == "session_replaced"
    assert not first.lost.retryable
    assert isinstance(event, messages.Event)  # no presence change was announced for the replacement


async def test_a_session_that_stops_reading_is_closed_4008_and_others_undisturbed(server: LiveServer) -> None:
    alice, bob, carol = await server.devices(3)
    to_carol, carol_live = live_channel(math.inf)
    body = "x" * (server.settings.max_event_bytes - 100)
    gateway = server.app.services.gateway
    assert gateway is not None
    acks: list[int] = []
    with trio.fail_after(CAP_S):
        async with raw_session(server.ws_url, message_queue_size=1) as stuck:
            await stuck.handshake(bob)  # ... and then reads nothing until the server gives up on it
            async with connect(alice) as a, connect(carol, live=to_carol):
                # Publish in batches until the server has decided to close the stuck session (its
                # outbox of 256 frames, then the sockets' buffers, overflowed); then read what it sent.
                while gateway.statistics().closing == 0:
                    waiters = [await a.send_publish("big", body) for _ in range(50)]
                    acks += [(await waiter()).seq for waiter in waiters]
                frames, code, reason = await stuck.until_closed()
                got = [(await next_live(carol_live, messages.Event)).event.seq for _ in acks]
    assert (code, reason) == (4008, "slow_consumer")
    assert isinstance(frames[-1], messages.Error)
    assert frames[-1].code == "slow_consumer"
    assert got == acks == list(range(1, len(acks) + 1))  # carol missed nothing
