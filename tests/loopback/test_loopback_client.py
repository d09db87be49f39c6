"""The reference client against the real server: retry by id, reconnection, catch-up by replay."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio
from loopback_support import CAP_S, LiveServer, live_channel, next_live, proxy_to, running_server, via

from relay.client import Backoff, ConnectionLost, connect, open_client
from relay.protocol import messages

FAST = Backoff(first_s=0.01, max_s=0.05)


async def test_a_publish_whose_ack_was_lost_is_retried_by_id_and_stored_once(server: LiveServer) -> None:
    alice, bob = await server.devices(2)
    to_bob, bob_live = live_channel()
    with trio.fail_after(CAP_S):
        async with proxy_to(server) as proxy, connect(bob, live=to_bob) as b:
            async with open_client(via(alice, proxy), backoff=FAST, receive=False) as client:
                await client.wait_connected()
                proxy.hold_replies()  # the publish reaches the server; its ack will not reach alice
                async with trio.open_nursery() as nursery:
                    acks: list[messages.Ack] = []

                    async def publish() -> None:
                        acks.append(await client.publish("notes", {"text": "once"}))

                    nursery.start_soon(publish)
                    stored = (await next_live(bob_live, messages.Event)).event  # it was committed
                    await proxy.cut()  # ... and the connection breaks before the ack arrives
            replayed = [e for p in [p async for p in b.replay_to_head("notes")] for e in p.events]

    assert client.sessions == 2
    assert [(e.seq, e.id) for e in replayed] == [(1, stored.id)]
    assert (acks[0].seq, acks[0].id, acks[0].duplicate) == (1, stored.id, True)
    assert acks[0].received_at == stored.received_at


async def test_a_client_reconnects_after_going_away_and_its_publishes_continue(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(CAP_S * 2):
        async with running_server(data) as first, proxy_to(first) as proxy:
            alice = await first.enroll("phone")
            bob = await first.enroll("laptop", alice.user_id)
            async with open_client(via(alice, proxy), backoff=FAST, receive=False) as client:
                before = await client.publish("notes", "before")
                async with running_server(data) as second:
                    # The first server drains (going_away, 1001) and the same address now leads to the
                    # second one: the client reconnects by itself and the publishes go on there.
                    proxy.target_port = int(second.url.rsplit(":", 1)[1])
                    first.app.services.begin_drain()
                    acks = [await client.publish("notes", n) for n in range(5)]
                    async with connect(attrs.evolve(bob, url=second.url)) as b:
                        pages = [p async for p in b.replay_to_head("notes")]

    assert client.sessions == 2
    assert before.seq == 1
    assert [ack.seq for ack in acks] == [2, 3, 4, 5, 6]
    assert [e.body for p in pages for e in p.events] == ['"before"', "0", "1", "2", "3", "4"]


async def test_a_device_that_was_offline_catches_up_in_order_while_new_events_arrive(
    server: LiveServer,
) -> None:
    alice, bob = await server.devices(2)
    with trio.fail_after(CAP_S):
        async with connect(alice) as a:
            for waiter in [await a.send_publish("log", n) for n in range(250)]:
                await waiter()
            async with open_client(bob, positions={}, backoff=FAST) as client:
                for n in range(250, 270):
                    await a.publish("log", n)
                got = [await client.receive() for _ in range(270)]

    events = [item for item in got if isinstance(item, messages.StoredEvent)]
    assert [e.seq for e in events] == list(range(1, 271))
    assert [e.body for e in events] == [str(n) for n in range(270)]
    assert client.positions == {"log": 270}


async def test_a_client_started_at_the_heads_shows_only_what_comes_next(server: LiveServer) -> None:
    alice, bob = await server.devices(2)
    with trio.fail_after(CAP_S):
        async with connect(alice) as a:
            await a.publish("log", "old")
            async with open_client(bob) as client:
                await a.publish("log", "new")
                await a.publish("fresh", "new stream")
                first, second = await client.receive(), await client.receive()
    assert isinstance(first, messages.StoredEvent)
    assert isinstance(second, messages.StoredEvent)
    assert [(first.stream, first.seq), (second.stream, second.seq)] == [("log", 2), ("fresh", 1)]


async def test_a_replaced_client_stops_and_says_why(server: LiveServer) -> None:
    alice = await server.enroll("phone")
    with trio.fail_after(CAP_S):
        async with open_client(alice, backoff=FAST) as first:
            await first.wait_connected()
            async with connect(alice):
                with pytest.raises(ConnectionLost) as lost:
                    await first.receive()
                with pytest.raises(ConnectionLost):
                    await first.publish("notes", 1)
    assert (lost.value.code, lost.value.reason) == (4001, "session_replaced")
