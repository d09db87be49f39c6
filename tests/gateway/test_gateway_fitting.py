"""Server frames stay within ``max_frame_bytes`` (PROTOCOL.md §1: the limit holds in both directions)."""

from __future__ import annotations

import orjson
from gateway_harness import RelayFactory
from trio.testing import MockClock

from relay.gateway.fitting import heads_frames

LONG = "s" * 120


def test_heads_that_would_outgrow_a_frame_are_split_over_several_frames() -> None:
    heads = {f"{LONG}{n:08d}": n + 1 for n in range(100)}
    frames = heads_frames(heads, 4096)
    assert len(frames) > 1
    assert all(len(frame.encode()) <= 4096 for frame in frames)
    merged: dict[str, int] = {}
    for frame in frames:
        merged.update(orjson.loads(frame)["streams"])
    assert merged == heads


async def test_a_welcome_lists_the_most_recent_streams_that_fit_and_says_it_is_truncated(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(max_event_bytes=1000, max_frame_bytes=5096)
    user = await relay.user()
    writer = await relay.connect(await relay.device(user))
    names = [f"{LONG}{n:08d}" for n in range(60)]
    for n, name in enumerate(names):
        assert (await relay.publish(writer, name, f"e{n}"))["type"] == "ack"
        await relay.clock_tick()

    reader = await relay.open()
    await reader.handshake(await relay.device(user))
    welcome = reader.welcome
    assert welcome is not None
    assert welcome["streams_truncated"] is True
    assert 0 < len(welcome["streams"]) < 60
    assert set(welcome["streams"]) == set(names[-len(welcome["streams"]) :])  # the most recent
    assert len(orjson.dumps(welcome)) <= 5096


async def test_a_streams_page_ends_early_to_fit_and_its_next_continues_from_the_last_listed(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(max_event_bytes=1000, max_frame_bytes=5096)
    client = await relay.connect(await relay.device(await relay.user()))
    names = [f"{LONG}{n:08d}" for n in range(60)]
    for n, name in enumerate(names):
        assert (await relay.publish(client, name, f"e{n}"))["type"] == "ack"

    listed: list[str] = []
    after = None
    while True:
        await client.send({"type": "streams", **({"after": after} if after else {})})
        page = await client.expect("streams.page")
        listed.extend(page["streams"])
        if page["next"] is None:
            break
        assert page["next"] == listed[-1]
        after = page["next"]
    assert listed == names
