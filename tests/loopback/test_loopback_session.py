"""Sessions over real sockets: live delivery, presence, notices, concurrency, replay, restarts."""

from __future__ import annotations

from pathlib import Path

import attrs
import trio
from loopback_support import CAP_S, LiveServer, live_channel, next_live, running_server

from relay.client import connect
from relay.protocol import messages


async def test_an_event_reaches_the_users_other_device_and_never_its_publisher(server: LiveServer) -> None:
    alice, bob = await server.devices(2)
    to_alice, alice_live = live_channel()
    to_bob, bob_live = live_channel()
    with trio.fail_after(CAP_S):
        async with connect(alice, live=to_alice) as a, connect(bob, live=to_bob) as b:
            acks = [await a.publish("notes", {"n": n}, ttl=60) for n in range(3)]
            got = [(await next_live(bob_live, messages.Event)).event for _ in range(3)]
            await a.ping()  # anything sent to alice before the pong has arrived by now
            await b.publish("other", True)
            back = (await next_live(alice_live, messages.Event)).event

    assert [ack.seq for ack in acks] == [1, 2, 3]
    assert [(e.stream, e.seq, e.id, e.device_id, e.body) for e in got] == [
        ("notes", n + 1, acks[n].id, alice.device_id, f'{{"n":{n}}}') for n in range(3)
    ]
    assert [(e.received_at, e.expires_at) for e in got] == [(ack.received_at, ack.expires_at) for ack in acks]
    assert got[0].expires_at == got[0].ts + 60_000
    # The first event alice hears is bob's: none of her own came back to her.
    assert (back.stream, back.device_id, back.body) == ("other", bob.device_id, "true")


async def test_welcome_names_the_device_lists_heads_and_the_devices_online(server: LiveServer) -> None:
    alice, bob = await server.devices(2)
    with trio.fail_after(CAP_S):
        async with connect(alice) as a:
            await a.publish("notes", 1)
            await a.publish("notes", 2)
            await a.publish("todo", 3)
            async with connect(bob) as b:
                welcome = b.welcome

    assert (welcome.user_id, welcome.device_id, welcome.name) == (bob.user_id, bob.device_id, "device 1")
    assert welcome.streams == {"notes": 2, "todo": 1}
    assert welcome.streams_truncated is False
    assert welcome.online == [alice.device_id]
    assert welcome.limits == server.settings.limits
    assert welcome.heartbeat_ms == server.settings.heartbeat_ms


async def test_presence_announces_a_devices_first_session_and_its_last(server: LiveServer) -> None:
    alice, bob = await server.devices(2)
    to_alice, alice_live = live_channel()
    with trio.fail_after(CAP_S):
        async with connect(alice, live=to_alice):
            async with connect(bob):
                online = await next_live(alice_live, messages.Presence)
            offline = await next_live(alice_live, messages.Presence)

    assert (online.device_id, online.online) == (bob.device_id, True)
    assert (offline.device_id, offline.online) == (bob.device_id, False)
    assert offline.at >= online.at


async def test_an_enrolment_is_announced_to_the_users_live_sessions(server: LiveServer) -> None:
    alice = await server.enroll("Alice's phone")
    to_alice, alice_live = live_channel()
    with trio.fail_after(CAP_S):
        async with connect(alice, live=to_alice):
            laptop = await server.enroll("Laptop", alice.user_id)
            notice = await next_live(alice_live, messages.DeviceNotice)
    assert (notice.change, notice.device_id, notice.name) == ("enrolled", laptop.device_id, "Laptop")


async def test_a_ping_is_answered_with_the_server_time(server: LiveServer) -> None:
    alice = await server.enroll("phone")
    with trio.fail_after(CAP_S):
        async with connect(alice) as a:
            before = server.app.services.runtime.clock.now_ms()
            pong = await a.ping()
            after = server.app.services.runtime.clock.now_ms()
    assert before <= pong.server_time <= after


async def test_four_devices_publishing_at_once_to_one_stream_get_seqs_1_to_400(server: LiveServer) -> None:
    devices = await server.devices(4)
    per_device = 100
    acks: dict[str, list[int]] = {d.device_id: [] for d in devices}
    heard: dict[str, list[messages.StoredEvent]] = {d.device_id: [] for d in devices}

    async def run_device(index: int, everyone_ready: trio.Event, ready: list[trio.Event]) -> None:
        creds = devices[index]
        send, receive = live_channel()
        async with connect(creds, live=send) as conn:
            ready[index].set()
            await everyone_ready.wait()
            # Pipelined: every publish is sent before the first ack is awaited (max_inflight at a time).
            waiters = [await conn.send_publish("shared", {"from": index, "n": n}) for n in range(per_device)]
            for waiter in waiters:
                acks[creds.device_id].append((await waiter()).seq)
            while len(heard[creds.device_id]) < 3 * per_device:
                heard[creds.device_id].append((await next_live(receive, messages.Event)).event)

    with trio.fail_after(CAP_S):
        ready = [trio.Event() for _ in devices]
        go = trio.Event()
        async with trio.open_nursery() as nursery:
            for index in range(4):
                nursery.start_soon(run_device, index, go, ready)
            for event in ready:
                await event.wait()
            go.set()
        async with connect(devices[0]) as conn:
            replayed = [e for page in [p async for p in conn.replay_to_head("shared")] for e in page.events]

    every_seq = sorted(seq for seqs in acks.values() for seq in seqs)
    assert every_seq == list(range(1, 4 * per_device + 1))
    for seqs in acks.values():
        assert seqs == sorted(seqs)  # one session's publishes are committed in the order sent
    for creds in devices:
        got = heard[creds.device_id]
        assert {e.device_id for e in got} == {d.device_id for d in devices} - {creds.device_id}
        assert sorted(e.seq for e in got) == sorted(set(every_seq) - set(acks[creds.device_id]))
    assert [e.seq for e in replayed] == every_seq


async def test_250_events_replay_in_pages_of_100_100_50_while_new_events_arrive(server: LiveServer) -> None:
    alice, bob = await server.devices(2)
    with trio.fail_after(CAP_S):
        async with connect(alice) as a, connect(bob) as b:
            waiters = [await a.send_publish("log", n) for n in range(250)]
            for waiter in waiters:
                await waiter()
            first = await b.replay("log")
            more = [await a.publish("log", "late") for _ in range(5)]  # after the head was fixed
            assert first.next is not None
            second = await b.replay_next(first.next)
            assert second.next is not None
            third = await b.replay_next(second.next)
            fresh = await b.replay("log", after=250)

    assert [len(p.events) for p in (first, second, third)] == [100, 100, 50]
    assert [p.head for p in (first, second, third)] == [250, 250, 250]
    assert third.next is None
    seqs = [e.seq for p in (first, second, third) for e in p.events]
    assert seqs == list(range(1, 251))
    assert [e.body for e in third.events[-2:]] == ["248", "249"]
    assert [ack.seq for ack in more] == [251, 252, 253, 254, 255]
    assert [e.seq for e in fresh.events] == [251, 252, 253, 254, 255]
    assert fresh.head == 255


async def test_the_streams_listing_pages_in_byte_order_with_heads(server: LiveServer) -> None:
    alice = await server.enroll("phone")
    names = ["b", "a", "C", "a/1", "z~"]
    with trio.fail_after(CAP_S):
        async with connect(alice) as a:
            for index, name in enumerate(names):
                for _ in range(index + 1):
                    await a.publish(name, None)
            first = await a.streams(limit=2)
            assert first.next is not None
            rest = await a.streams(after=first.next)
            everything = await a.all_streams()

    assert list(first.streams) == ["C", "a"]
    assert first.next == "a"
    assert list(rest.streams) == ["a/1", "b", "z~"]
    assert rest.next is None
    assert everything == {"C": 3, "a": 2, "a/1": 4, "b": 1, "z~": 5}


async def test_acked_events_survive_a_restart_and_seq_continues(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(CAP_S * 2):
        async with running_server(data) as first:
            alice = await first.enroll("phone")
            async with connect(alice) as a:
                acked = [await a.publish("notes", n) for n in range(10)]
        async with running_server(data) as second:
            again = attrs.evolve(alice, url=second.url)  # a new port; the same server key, pinned
            async with connect(again) as a:
                replayed = [e for p in [p async for p in a.replay_to_head("notes")] for e in p.events]
                next_ack = await a.publish("notes", "after the restart")
                duplicate = await a.publish("notes", 0, id=acked[0].id)

    assert [e.id for e in replayed] == [ack.id for ack in acked]
    assert [e.seq for e in replayed] == list(range(1, 11))
    assert next_ack.seq == 11
    assert duplicate.duplicate is True
    assert (duplicate.seq, duplicate.received_at) == (1, acked[0].received_at)


async def test_two_nodes_on_one_database_without_a_shared_bus_are_not_ready(tmp_path: Path) -> None:
    import httpx

    async def readyz(node: LiveServer) -> httpx.Response:
        async with httpx.AsyncClient(headers={"Connection": "close"}) as http:
            return await http.get(f"{node.url}/readyz")

    data = tmp_path / "data"
    with trio.fail_after(CAP_S):
        async with running_server(data) as first:
            alone = await readyz(first)
            async with running_server(data) as second:
                await trio.sleep(0.6)  # past the first node's cached answer
                both = [await readyz(node) for node in (first, second)]
            await trio.sleep(0.6)
            again = await readyz(first)  # the second one said goodbye
    assert alone.status_code == 200
    assert [answer.status_code for answer in both] == [503, 503]
    clusters = {answer.json()["components"]["cluster"] for answer in both}
    assert clusters == {"shared_database_without_shared_bus"}
    assert again.status_code == 200
