"""Fan-out through the Redis bus: throughput from node A to a subscriber on node B, and latency.

Not a test: run it by hand, against a Redis you may use freely (``--url``, default
``RELAY_TEST_REDIS_URL``).

    .venv/bin/python tests/bench/bench_bus.py [--url URL] [--client redis|coredis]
                                              [--events 20000] [--publishers 64] [--samples 500]

Two figures, each in a fresh key/channel prefix:

- fan-out: ``--publishers`` tasks on node A publish ``--events`` events in all (each task one at a
  time, like sessions do, so concurrent publishes share round trips), while a subscriber of the same
  user on node B counts them; the time is from the first publish to B's subscriber holding them all.
- round trip: one event at a time, from ``publish`` on A until B's subscriber got it (``--samples``).

``--client redis`` (the default) measures :class:`relay.bus.redis.RedisBus` itself: two instances in
this process stand for the two nodes. ``--client coredis`` measures the same path built on coredis
(trio-native, through anyio): node A batches PUBLISHes of the same notes into pipelines exactly as
the bus's publisher does, node B reads a coredis pub/sub, decodes every note with ``note_from_json``
and hands it to a :class:`~relay.bus.local.Fanout`. coredis is no dependency of relay: run that mode
from a throwaway virtual environment that has coredis and relay's dependencies, e.g.

    python3 -m venv /tmp/coredis-venv && /tmp/coredis-venv/bin/pip install coredis trio attrs cattrs \
        orjson rfc8785 pynacl
    PYTHONPATH=. /tmp/coredis-venv/bin/python tests/bench/bench_bus.py --client coredis
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from relay.bus.base import EventNote, note_from_json, note_to_json
from relay.bus.local import Fanout
from relay.errors import SessionError
from relay.protocol.codec import encode_server
from relay.protocol.messages import Event, StoredEvent

BODY = '{"text":"' + "x" * 88 + '"}'

Publish = Callable[[StoredEvent], Awaitable[None]]


def stored_event(seq: int) -> StoredEvent:
    return StoredEvent(
        stream="bench",
        seq=seq,
        id=f"e{seq}",
        device_id=str(uuid.uuid4()),
        ts=1,
        received_at=2,
        expires_at=3,
        body=BODY,
    )


class Counter:
    """A subscriber on node B: counts the events it is handed."""

    def __init__(self, user_id: str) -> None:
        self.session_id = str(uuid.uuid4())
        self.user_id = user_id
        self.device_id = str(uuid.uuid4())
        self.count = 0
        self.target = 0
        self.reached = trio.Event()

    def expect(self, total: int) -> None:
        self.target = total
        self.reached = trio.Event()
        if self.count >= total:
            self.reached.set()

    def send_live(self, frame: str, *, stream: str | None = None, seq: int | None = None) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()

    def end(self, error: SessionError) -> None:
        raise RuntimeError(f"the bench session was ended: {error.code}")


async def measure(publish: Publish, counter: Counter, *, events: int, publishers: int, samples: int) -> None:
    # Round trips first, on a quiet bus.
    rtts: list[float] = []
    for seq in range(1, samples + 1):
        counter.expect(counter.count + 1)
        start = time.perf_counter()
        await publish(stored_event(seq))
        with trio.fail_after(10):
            await counter.reached.wait()
        rtts.append(time.perf_counter() - start)
    rtts.sort()
    print(
        f"round trip of one publish (A → B's subscriber), {samples} samples: "
        f"p50 {rtts[len(rtts) // 2] * 1e6:.0f} µs, p99 {rtts[int(len(rtts) * 0.99) - 1] * 1e6:.0f} µs, "
        f"mean {statistics.fmean(rtts) * 1e6:.0f} µs"
    )

    counter.expect(counter.count + events)

    async def lane(first: int) -> None:
        for seq in range(first, events + 1, publishers):
            await publish(stored_event(seq))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for first in range(1, publishers + 1):
            nursery.start_soon(lane, first)
    published = time.perf_counter() - start
    with trio.fail_after(60):
        await counter.reached.wait()
    received = time.perf_counter() - start
    print(
        f"fan-out of {events} events from {publishers} publishers on A to one subscriber on B: "
        f"published in {published:.3f} s, all received after {received:.3f} s: "
        f"{events / received:,.0f} events/s"
    )


async def bench_redis(url: str, args: argparse.Namespace) -> None:
    from relay.bus.redis import RedisBus

    prefix = f"bench:{uuid.uuid4().hex}:"
    a, b = RedisBus(url, prefix=prefix), RedisBus(url, prefix=prefix)
    user = str(uuid.uuid4())
    counter = Counter(user)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            await nursery.start(a.run)
            await nursery.start(b.run)
        await b.subscribe(counter, at=0)

        async def publish(event: StoredEvent) -> None:
            await a.publish(user, event, origin_session_id="bench")

        await measure(publish, counter, events=args.events, publishers=args.publishers, samples=args.samples)
        stats = a.statistics()
        print(f"node A sent {stats.published} messages in {stats.publish_batches} pipelines")
        await b.unsubscribe(counter, at=1)
        nursery.cancel_scope.cancel()


async def bench_coredis(url: str, args: argparse.Namespace) -> None:
    import coredis  # type: ignore[import-not-found]
    from coredis.retry import NoRetryPolicy  # type: ignore[import-not-found]

    channel = f"bench:{uuid.uuid4().hex}:user".encode()
    user = str(uuid.uuid4())
    counter = Counter(user)
    fanout = Fanout()
    fanout.add(counter)
    sender_client, subscriber_client = coredis.Redis.from_url(url), coredis.Redis.from_url(url)
    send, receive = trio.open_memory_channel[tuple[bytes, trio.Event]](4096)

    async def sender() -> None:  # the bus publisher's batching, on coredis
        while True:
            batch = [await receive.receive()]
            while len(batch) < 512:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            async with sender_client.pipeline(transaction=False) as pipe:
                for payload, _ in batch:
                    pipe.publish(channel, payload)
            for _, done in batch:
                done.set()

    async def publish(event: StoredEvent) -> None:
        frame = encode_server(Event(event=event))
        note = EventNote(
            user_id=user, origin_session_id="bench", stream=event.stream, seq=event.seq, frame=frame
        )
        done = trio.Event()
        await send.send((note_to_json(note), done))
        await done.wait()

    async with sender_client, subscriber_client:
        pubsub: Any = subscriber_client.pubsub(retry_policy=NoRetryPolicy(), ignore_subscribe_messages=True)
        async with pubsub:
            await pubsub.subscribe(channel)

            async def consume() -> None:
                async for message in pubsub:
                    if message["type"] == "message":
                        fanout.apply(note_from_json(message["data"]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                nursery.start_soon(consume)
                await measure(
                    publish, counter, events=args.events, publishers=args.publishers, samples=args.samples
                )
                nursery.cancel_scope.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("RELAY_TEST_REDIS_URL"))
    parser.add_argument("--client", choices=["redis", "coredis"], default="redis")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--publishers", type=int, default=64)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    if not args.url:
        parser.error("give --url or set RELAY_TEST_REDIS_URL")
    print(f"client: {args.client}, Python {sys.version.split()[0]}, trio {trio.__version__}")
    bench = bench_redis if args.client == "redis" else bench_coredis
    trio.run(bench, args.url, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
