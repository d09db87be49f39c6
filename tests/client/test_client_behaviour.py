"""RelayClient's own rules, against a scripted connection under MockClock: gap detection and its one
second of patience (PROTOCOL.md §4.3), catch-up from ``welcome``, expired seqs, retry by id after a
reconnect, and which closes end the client (§4.6)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from relay import crypto
from relay.client import Backoff, ConnectionLost, DeviceCredentials, RelayClient
from relay.client.client import GAP_WAIT_S
from relay.protocol import messages

CAP_S = 3600
USER = "11111111-1111-4111-8111-111111111111"
DEVICE = "22222222-2222-4222-8222-222222222222"
CREDS = DeviceCredentials(
    url="http://relay.test",
    server_key=crypto.SigningKey(bytes(32)).public_key_b64,
    user_id=USER,
    device_id=DEVICE,
    name="phone",
    key=crypto.SigningKey(bytes(range(32))),
)


def stored(seq: int, stream: str = "s") -> messages.StoredEvent:
    return messages.StoredEvent(
        stream=stream,
        seq=seq,
        id=f"e{seq}",
        device_id="other",
        ts=0,
        received_at=0,
        expires_at=1,
        body=str(seq),
    )


def welcome(streams: dict[str, int]) -> messages.Welcome:
    return messages.Welcome(
        session_id="33333333-3333-4333-8333-333333333333",
        user_id=USER,
        device_id=DEVICE,
        name="phone",
        server_time=0,
        heartbeat_ms=20_000,
        limits=messages.Limits(),
        streams=streams,
        streams_truncated=False,
        online=[],
    )


@attrs.define(eq=False)
class FakeConnection:
    """What RelayClient uses of a Connection, scripted by the test."""

    welcome: messages.Welcome
    events: dict[str, list[messages.StoredEvent]]  # what a replay finds (unexpired events)
    live: trio.MemorySendChannel[Any] | None = None
    closed: trio.Event = attrs.field(factory=trio.Event)
    lost: ConnectionLost | None = None
    replays: list[tuple[float, str, int]] = attrs.field(factory=list)
    published: list[messages.Publish] = attrs.field(factory=list)
    answer: Any = None  # what a publish is answered with: an Ack factory, or None for silence
    sent: trio.Event = attrs.field(factory=trio.Event)  # set by the first publish

    async def replay_to_head(self, stream: str, *, after: int = 0) -> AsyncIterator[messages.ReplayPage]:
        self.replays.append((trio.current_time(), stream, after))
        found = [e for e in self.events.get(stream, []) if e.seq > after]
        head = max((e.seq for e in self.events.get(stream, [])), default=0)
        yield messages.ReplayPage(stream=stream, events=found, head=head, next=None)

    async def all_streams(self) -> dict[str, int]:
        return {}

    async def send_publish(self, stream: str, body: Any, **fields: Any) -> Any:
        msg = messages.Publish(stream=stream, body=body, **fields)
        self.published.append(msg)
        self.sent.set()

        async def wait() -> messages.Ack:
            if self.answer is None:
                await self.closed.wait()
                assert self.lost is not None
                raise self.lost
            await trio.lowlevel.checkpoint()
            return self.answer(msg)  # type: ignore[no-any-return]

        return wait

    def drop(self, code: int, reason: str) -> None:
        self.lost = ConnectionLost(code, reason)
        self.closed.set()


@attrs.define(eq=False)
class Script:
    """Hands out the scripted connections one after the other."""

    connections: list[FakeConnection]
    opened: int = 0

    @asynccontextmanager
    async def connect(
        self, creds: DeviceCredentials, *, live: Any, clock: Any
    ) -> AsyncIterator[FakeConnection]:
        conn = self.connections[self.opened]
        self.opened += 1
        conn.live = live
        yield conn


@asynccontextmanager
async def running(client: RelayClient) -> AsyncIterator[RelayClient]:
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        yield client
        nursery.cancel_scope.cancel()


async def receive(client: RelayClient, count: int) -> list[messages.StoredEvent]:
    out = []
    with trio.fail_after(CAP_S):
        while len(out) < count:
            item = await client.receive()
            assert isinstance(item, messages.StoredEvent)
            out.append(item)
    return out


async def test_a_missing_seq_is_waited_for_a_second_then_replayed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = FakeConnection(welcome({}), {"s": [stored(1), stored(2), stored(3)]})
    client = RelayClient(CREDS, positions={}, connector=Script([conn]).connect)
    async with running(client):
        assert conn.live is not None
        await conn.live.send(messages.Event(event=stored(1)))
        gap_at = trio.current_time()
        await conn.live.send(messages.Event(event=stored(3)))
        got = await receive(client, 3)
    assert [e.seq for e in got] == [1, 2, 3]
    assert len(conn.replays) == 1
    when, stream, after = conn.replays[0]
    assert (stream, after) == ("s", 1)
    assert when - gap_at == pytest.approx(GAP_WAIT_S)


async def test_a_late_event_arriving_within_the_second_needs_no_replay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = FakeConnection(welcome({}), {})
    client = RelayClient(CREDS, positions={}, connector=Script([conn]).connect)
    async with running(client):
        assert conn.live is not None
        await conn.live.send(messages.Event(event=stored(2)))
        await trio.sleep(GAP_WAIT_S / 2)
        await conn.live.send(messages.Event(event=stored(1)))
        got = await receive(client, 2)
        await trio.sleep(GAP_WAIT_S * 2)
    assert [e.seq for e in got] == [1, 2]
    assert conn.replays == []


async def test_heads_ahead_of_what_was_delivered_lead_to_a_replay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = FakeConnection(welcome({"s": 2}), {"s": [stored(1), stored(2), stored(3), stored(4)]})
    client = RelayClient(CREDS, positions={"s": 2}, connector=Script([conn]).connect)
    async with running(client):
        assert conn.live is not None
        await conn.live.send(messages.Heads(streams={"s": 4}))
        got = await receive(client, 2)
    assert [e.seq for e in got] == [3, 4]
    assert [(stream, after) for _, stream, after in conn.replays] == [("s", 2)]


async def test_a_welcome_ahead_of_the_saved_position_is_caught_up_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = FakeConnection(
        welcome({"s": 10, "t": 1}), {"s": [stored(n) for n in range(1, 11)], "t": [stored(1, "t")]}
    )
    client = RelayClient(CREDS, positions={"s": 7}, connector=Script([conn]).connect)
    async with running(client):
        got = await receive(client, 4)
    assert sorted((e.stream, e.seq) for e in got) == [("s", 8), ("s", 9), ("s", 10), ("t", 1)]
    assert {(stream, after) for when, stream, after in conn.replays} == {("s", 7), ("t", 0)}
    assert all(when == 0 for when, _, _ in conn.replays)
    assert client.positions == {"s": 10, "t": 1}


async def test_a_seq_the_replay_does_not_bring_has_expired_and_is_passed_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = FakeConnection(welcome({"s": 5}), {"s": [stored(2), stored(5)]})  # 1, 3 and 4 expired
    client = RelayClient(CREDS, positions={}, connector=Script([conn]).connect)
    async with running(client):
        got = await receive(client, 2)
        assert conn.live is not None
        await conn.live.send(messages.Event(event=stored(6)))
        got += await receive(client, 1)
    assert [e.seq for e in got] == [2, 5, 6]


async def test_an_unanswered_publish_is_sent_again_with_its_id_and_ts_after_a_reconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def ack(msg: messages.Publish) -> messages.Ack:
        return messages.Ack(
            id=msg.id, stream=msg.stream, seq=1, received_at=5, expires_at=9, duplicate=True, ref=msg.ref
        )

    first = FakeConnection(welcome({}), {})
    second = FakeConnection(welcome({}), {}, answer=ack)
    script = Script([first, second])
    client = RelayClient(CREDS, connector=script.connect, backoff=Backoff(first_s=1, max_s=1), receive=False)
    acks: list[messages.Ack] = []
    async with running(client):
        with trio.fail_after(CAP_S):
            async with trio.open_nursery() as nursery:

                async def publish() -> None:
                    acks.append(await client.publish("notes", {"a": 1}, ttl=60))

                nursery.start_soon(publish)
                await first.sent.wait()
                first.drop(1001, "going_away")
    (sent_first,), (sent_again,) = first.published, second.published
    assert (sent_again.id, sent_again.ts, sent_again.ttl, sent_again.body) == (
        sent_first.id,
        sent_first.ts,
        60,
        {"a": 1},
    )
    assert acks[0].duplicate is True
    assert script.opened == 2


@pytest.mark.parametrize(
    ("code", "reason", "reconnects"),
    [
        (1001, "going_away", True),
        (1011, "internal", True),
        (1013, "unavailable", True),
        (4008, "slow_consumer", True),
        (4008, "bus_lost", True),
        (1002, "protocol_error", False),
        (1003, "binary_frame", False),
        (1007, "invalid_json", False),
        (1008, "device_revoked", False),
        (1009, "frame_too_large", False),
        (4001, "session_replaced", False),
    ],
)
async def test_the_client_reconnects_after_every_close_but_those_that_forbid_it(
    autojump_clock: trio.testing.MockClock, code: int, reason: str, reconnects: bool
) -> None:
    first, second = FakeConnection(welcome({}), {}), FakeConnection(welcome({}), {})
    script = Script([first, second])
    client = RelayClient(CREDS, connector=script.connect, backoff=Backoff(first_s=1, max_s=1))
    async with running(client):
        first.drop(code, reason)
        with trio.fail_after(CAP_S):
            if reconnects:
                assert await client.wait_connected() is second
            else:
                with pytest.raises(ConnectionLost) as lost:
                    await client.receive()
                assert lost.value.code == code
                with pytest.raises(ConnectionLost):
                    await client.publish("s", 1)
    assert script.opened == (2 if reconnects else 1)


async def test_a_publish_answered_by_the_error_that_ends_its_session_is_sent_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from relay.errors import BusLost

    def bus_lost(msg: messages.Publish) -> messages.Ack:
        raise BusLost()

    def ack(msg: messages.Publish) -> messages.Ack:
        return messages.Ack(id=msg.id, stream=msg.stream, seq=1, received_at=5, expires_at=9, duplicate=True)

    first = FakeConnection(welcome({}), {}, answer=bus_lost)
    second = FakeConnection(welcome({}), {}, answer=ack)
    script = Script([first, second])
    client = RelayClient(CREDS, connector=script.connect, backoff=Backoff(first_s=1, max_s=1), receive=False)
    acks: list[messages.Ack] = []
    async with running(client):
        with trio.fail_after(CAP_S):
            async with trio.open_nursery() as nursery:

                async def publish() -> None:
                    acks.append(await client.publish("notes", 1))

                nursery.start_soon(publish)
                await first.sent.wait()
                await trio.sleep(0.1)
                first.drop(4008, "bus_lost")
    assert [a.duplicate for a in acks] == [True]
    assert first.published[0].id == second.published[0].id


async def test_events_released_when_the_session_ends_mid_hand_off_still_reach_the_application() -> None:
    # The ordering moves past an event as it releases it; if the task handing it to the application is
    # cancelled (its session ended) while the application's channel is full, the event must still come.
    from relay.client.client import DELIVERY_BUFFER

    client = RelayClient(CREDS, positions={"s": 0})
    order = client._order("s")
    filler = messages.Presence(device_id=DEVICE, online=True, at=0)
    for _ in range(DELIVERY_BUFFER):
        client._out_send.send_nowait(filler)  # the application has not read anything yet
    with trio.fail_after(CAP_S):
        await client._offer(order, stored(2))  # buffered: 1 is missing
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._offer, order, stored(1))  # releases 1 and 2, then waits for room
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()  # the session ends
        assert order.delivered == 2
        for _ in range(DELIVERY_BUFFER):
            assert await client.receive() == filler
        await client._flush()  # what the next session does first
        got = [await client.receive(), await client.receive()]
    assert [item.seq for item in got if isinstance(item, messages.StoredEvent)] == [1, 2]
