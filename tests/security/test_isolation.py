"""Isolation between users (item 3; PROTOCOL.md §7.3): user B tries every way to observe or touch user A.

Nothing of A (events, stream names and heads, devices, presence, notices, tokens) is observable by B,
and nothing B does changes anything of A. Where B asks about something of A, the answer is exactly the
answer about something that does not exist (the same status, code and message); the timing of those
answers is compared in test_isolation_timing.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from security_support import CASES, STEP_S, LiveServer, open_wire, secure_server

from relay import crypto
from relay.client import DeviceCredentials, RelayHttp, SignedAuth, connect
from relay.client.connection import LiveMessage
from relay.errors import InvalidToken
from relay.protocol import messages

UNKNOWN_DEVICE = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[LiveServer]:
    # heads every 300 ms, so that the test sees them (and what they name) without waiting long
    async with secure_server(data_dir, heartbeat_ms=300) as live:
        yield live


@asynccontextmanager
async def signed_client(creds: DeviceCredentials) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=creds.url, auth=SignedAuth(creds), timeout=STEP_S) as client:
        yield client


def without_request_id(response: httpx.Response) -> tuple[int, Any]:
    """Status and body, the request id left out (the only member that may differ)."""
    body = response.json()
    assert body["error"].pop("request_id") == response.headers["x-request-id"]
    return response.status_code, body


async def test_another_users_stream_names_replay_empty_and_are_never_listed_or_continued(
    server: LiveServer,
) -> None:
    a1, a2 = await server.devices(2)
    (b,) = await server.devices(1)
    with trio.fail_after(STEP_S):
        async with connect(a1) as alice:
            for n in range(3):
                await alice.publish("secret/a", {"n": n})
            await alice.publish("secret/b", "x")
            a_page = await alice.replay("secret/a", limit=1)
            async with connect(b) as bob:
                welcome = bob.welcome
                replays = [await bob.replay("secret/a"), await bob.replay("secret/a", after=1, limit=1)]
                listing = await bob.streams()
                after = await bob.streams(after="secret")
                # B's first event in a stream of the same name is B's seq 1, not A's 4
                ack = await bob.publish("secret/a", {"mine": True})
                b_page = await bob.replay("secret/a", limit=1)
                mine = await bob.replay("secret/a")
                with pytest.raises(InvalidToken) as stolen:
                    await bob.replay_next(a_page.next or "")
            alice_after = await alice.replay("secret/a")
        async with connect(a2) as alice2:  # the token is bound to the device as well as to the user
            with pytest.raises(InvalidToken):
                await alice2.replay_next(a_page.next or "")
        async with connect(a1) as alice:
            with pytest.raises(InvalidToken):
                await alice.replay_next(b_page.next or "")
            continued = await alice.replay_next(a_page.next or "")

    assert (welcome.streams, welcome.streams_truncated, welcome.online) == ({}, False, [])
    for page in replays:
        assert (page.stream, page.events, page.head, page.next) == ("secret/a", [], 0, None)
    assert (listing.streams, listing.next, after.streams) == ({}, None, {})
    assert ack.seq == 1
    assert [(e.seq, e.device_id) for e in mine.events] == [(1, b.device_id)]
    assert mine.head == 1
    assert b_page.next is None  # B's stream has one event: nothing to continue
    assert "stream" not in stolen.value.fields
    assert [(e.seq, e.device_id) for e in alice_after.events] == [
        (1, a1.device_id),
        (2, a1.device_id),
        (3, a1.device_id),
    ]
    assert alice_after.head == 3
    assert [e.seq for e in continued.events] == [2]  # the token keeps the page size of its replay
    CASES["isolation checks"] += 12


async def test_another_users_device_ids_answer_404_exactly_like_unknown_ones_and_change_nothing(
    server: LiveServer,
) -> None:
    a1, a2, a3 = await server.devices(3)
    (b,) = await server.devices(1)
    async with RelayHttp(server.url, creds=a1) as alice:
        await alice.revoke(a3.device_id)  # A's revoked device: not B's to see either
    answers: dict[str, tuple[int, Any]] = {}
    with trio.fail_after(STEP_S):
        async with signed_client(b) as bob:
            for target, label in (
                (a2.device_id, "A's"),
                (a3.device_id, "A's revoked"),
                (UNKNOWN_DEVICE, "unknown"),
            ):
                patch = await bob.patch(f"/v1/devices/{target}", json={"name": "pwned"})
                delete = await bob.delete(f"/v1/devices/{target}")
                answers[f"PATCH {label}"] = without_request_id(patch)
                answers[f"DELETE {label}"] = without_request_id(delete)
            listed = (await bob.get("/v1/devices")).json()["devices"]
            revoked = (await bob.get("/v1/devices?revoked=true")).json()["devices"]
            with_as_key = SignedAuth(attrs_evolve(b, device_id=a1.device_id))  # A's id, B's key
            impostor = await bob.get("/v1/devices", auth=with_as_key)
            impostor_pair = await bob.post("/v1/pairings", json={}, auth=with_as_key)
    not_found = (404, {"error": {"code": "not_found", "message": "No such device"}})
    assert answers == {key: not_found for key in answers}, answers
    assert [d["device_id"] for d in listed] == [b.device_id]
    assert revoked == []
    assert impostor.status_code == impostor_pair.status_code == 401
    async with RelayHttp(server.url, creds=a1) as alice:
        live = await alice.devices()
        gone = await alice.devices(revoked=True)
    assert [(d["device_id"], d["name"]) for d in live] == [
        (a1.device_id, "device 0"),
        (a2.device_id, "device 1"),
    ]
    assert [d["device_id"] for d in gone] == [a3.device_id]
    with trio.fail_after(STEP_S):
        async with connect(a2) as alice2:  # B's DELETE revoked nothing
            await alice2.ping()
    CASES["isolation checks"] += len(answers) + 4


def attrs_evolve(creds: DeviceCredentials, **changes: Any) -> DeviceCredentials:
    return attrs.evolve(creds, **changes)


async def test_pairing_tokens_reach_only_the_account_that_minted_them_and_a_bound_one_only_its_key(
    server: LiveServer,
) -> None:
    (a,) = await server.devices(1)
    (b,) = await server.devices(1)
    key, other_key = crypto.SigningKey.generate(), crypto.SigningKey.generate()
    with trio.fail_after(STEP_S):
        async with signed_client(b) as bob:
            for_a = await bob.post("/v1/pairings", json={"user_id": a.user_id})
            bound = (await bob.post("/v1/pairings", json={"public_key": key.public_key_b64})).json()
            unbound = (await bob.post("/v1/pairings", json={})).json()
        async with RelayHttp(server.url) as http:
            with pytest.raises(InvalidToken):  # bound to another key: one answer for every bad token
                await http.enroll(bound["token"], "thief", key=other_key)
            bound_device = await http.enroll(bound["token"], "bound", key=key)  # not consumed by the refusal
            new_device = await http.enroll(unbound["token"], "paired")
    assert for_a.status_code == 400
    assert for_a.json()["error"]["path"] == "$.user_id"
    assert bound_device.user_id == new_device.user_id == b.user_id != a.user_id
    async with RelayHttp(server.url, creds=a) as alice:
        assert [d["device_id"] for d in await alice.devices()] == [a.device_id]
    CASES["isolation checks"] += 4


@attrs.define(eq=False)
class Recorder:
    """Everything a session received live, kept (nothing is skipped, so everything can be checked)."""

    receive: trio.MemoryReceiveChannel[LiveMessage]
    seen: list[LiveMessage] = attrs.Factory(list)

    async def run(self) -> None:
        async for message in self.receive:
            self.seen.append(message)

    async def wait_for(self, kind: type[Any], count: int = 1) -> list[Any]:
        while len(found := [m for m in self.seen if isinstance(m, kind)]) < count:  # noqa: ASYNC110 (no event to wait on)
            await trio.sleep(0.01)
        return found


def recorder() -> tuple[trio.MemorySendChannel[LiveMessage], Recorder]:
    send, receive = trio.open_memory_channel[LiveMessage](10_000)
    return send, Recorder(receive)


async def test_presence_device_notices_events_and_heads_never_reach_another_user(server: LiveServer) -> None:
    a1, a2 = await server.devices(2)
    b, b2 = await server.devices(2)
    to_a2, a2_seen = recorder()
    to_b, b_seen = recorder()
    with trio.fail_after(STEP_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a2_seen.run)
            nursery.start_soon(b_seen.run)
            async with connect(a2, live=to_a2) as alice2, connect(b, live=to_b) as bob:
                online = (alice2.welcome.online, bob.welcome.online)
                async with connect(a1) as alice:
                    await a2_seen.wait_for(messages.Presence)  # A's presence reached A
                    for n in range(5):
                        await alice.publish("shared", {"from": "a", "n": n})
                    await alice.publish("a-only", 1)
                    for n in range(2):
                        await bob.publish("shared", {"from": "b", "n": n})
                    await bob.publish("b-only", 1)
                    await a2_seen.wait_for(messages.Event, 6)
                    async with RelayHttp(server.url, creds=a1) as http:
                        await http.rename(a2.device_id, "renamed")
                        a3 = await server.enroll("third", a1.user_id)
                        await http.revoke(a3.device_id)
                        await a2_seen.wait_for(messages.DeviceNotice, 3)
                    async with connect(b2):  # B's own presence does reach B: its channel works
                        await b_seen.wait_for(messages.Presence)
                await a2_seen.wait_for(messages.Presence, 2)  # a1 went offline
                await trio.sleep(1.0)  # several heads ticks (heartbeat_ms 300)
                await bob.ping()
                await alice2.ping()
                await b_seen.wait_for(messages.Heads)
                await a2_seen.wait_for(messages.Heads)
            to_a2.close()
            to_b.close()

    assert online == ([], [])
    a_ids, b_ids = {a1.device_id, a2.device_id, a3.device_id}, {b.device_id, b2.device_id}
    for message in b_seen.seen:
        assert not isinstance(message, messages.Event | messages.DeviceNotice), (
            message
        )  # B's only other device is silent
        if isinstance(message, messages.Presence):
            assert message.device_id in b_ids, message
        if isinstance(message, messages.Heads):  # B's streams and B's heads, never A's (5 and a-only)
            assert set(message.streams) <= {"shared", "b-only"}, message
            assert message.streams.get("shared", 0) <= 2, message
    for message in a2_seen.seen:
        if isinstance(message, messages.Event):
            assert message.event.device_id in a_ids, message
            assert message.event.stream != "b-only", message
        if isinstance(message, messages.Presence | messages.DeviceNotice):
            assert message.device_id in a_ids, message
        if isinstance(message, messages.Heads):
            assert set(message.streams) <= {"shared", "a-only"}, message
    assert [
        m.event.seq for m in a2_seen.seen if isinstance(m, messages.Event) and m.event.stream == "shared"
    ] == [
        1,
        2,
        3,
        4,
        5,
    ]
    CASES["isolation checks"] += len(b_seen.seen) + len(a2_seen.seen)


async def test_a_session_can_never_claim_another_users_device_with_its_own_key(server: LiveServer) -> None:
    (a,) = await server.devices(1)
    (b,) = await server.devices(1)
    with trio.fail_after(STEP_S):
        wire = await open_wire(server)
        welcome = await wire.try_handshake(attrs_evolve(b, device_id=a.device_id))
        frames, closed = await wire.until_closed()
    assert not isinstance(welcome, type(closed))
    assert welcome["code"] == "unauthorized"
    assert (closed.code, closed.reason, frames) == (1008, "unauthorized", [])
    CASES["isolation checks"] += 1
