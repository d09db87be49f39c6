"""Helpers of the Redis bus tests: recording sessions, polling under a cap, and a Redis of our own.

Several :class:`~relay.bus.redis.RedisBus` instances in one process stand for several nodes; each test
uses a prefix of its own, so tests never see each other's keys or channels. Time is real (threads and
sockets are involved), every wait is capped, and nothing sleeps to wait for a timer: tests poll for the
condition they expect (:func:`eventually`) or push a marker through Redis (:func:`settle`).
"""

from __future__ import annotations

import itertools
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import attrs
import orjson
import redis
import trio

from relay.bus.redis import RedisBus
from relay.errors import SessionError
from relay.protocol.messages import StoredEvent

#: Heartbeat of the test nodes (ms): short, so that presence expiry and PINGs are quick to see.
TEST_HEARTBEAT_MS = 200
#: Longest a test waits for a node to start delivering (seconds).
START_TIMEOUT_S = 10
#: The stream of the marker events :func:`settle` publishes.
MARKER = "zz-marker"
_markers = itertools.count(1)


def new_id() -> str:
    return str(uuid.uuid4())


@attrs.define(eq=False)
class Node:
    """A running bus, and the cancel scope of its ``run`` (cancelling it is a crash of the node)."""

    bus: RedisBus
    scope: trio.CancelScope

    def crash(self) -> None:
        """Stop the node's bus without leaving anything: its presence entries stay until they expire."""
        self.scope.cancel()


class NodeFactory(Protocol):
    def __call__(self, url: str | None = None, **kwargs: Any) -> Awaitable[Node]: ...


async def serve(bus: RedisBus, *, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
    """Run ``bus`` in a cancel scope of its own; ``started`` (with the scope) once it delivers."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            task_status.started(scope)


@attrs.define(eq=False)
class Recorder:
    """A fake session (a :class:`~relay.bus.base.Subscriber`) that records what the bus hands it."""

    user_id: str
    device_id: str
    session_id: str = attrs.Factory(new_id)
    raw: list[str] = attrs.Factory(list)
    frames: list[dict[str, object]] = attrs.Factory(list)
    heads: list[tuple[str, int]] = attrs.Factory(list)
    ended: list[SessionError] = attrs.Factory(list)

    def send_live(self, frame: str, *, stream: str | None = None, seq: int | None = None) -> None:
        self.raw.append(frame)
        self.frames.append(orjson.loads(frame))
        if stream is not None and seq is not None:
            self.heads.append((stream, seq))

    def end(self, error: SessionError) -> None:
        self.ended.append(error)

    def events(self) -> list[tuple[str, int]]:
        """(stream, seq) of the events received, markers left out."""
        return [head for head in self.heads if head[0] != MARKER]

    def presence(self) -> list[tuple[str, bool]]:
        return [(str(f["device_id"]), bool(f["online"])) for f in self.frames if f["type"] == "presence"]

    def notices(self) -> list[dict[str, object]]:
        return [f for f in self.frames if f["type"] == "device"]

    def codes(self) -> list[str]:
        return [error.code for error in self.ended]


def stored_event(seq: int = 1, *, stream: str = "notes", device_id: str | None = None) -> StoredEvent:
    return StoredEvent(
        stream=stream,
        seq=seq,
        id=f"e{seq}",
        device_id=device_id or new_id(),
        ts=1,
        received_at=2,
        expires_at=3,
        body='{"a":1}',
    )


async def eventually(predicate: Callable[[], bool], *, within: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail the test (TooSlowError) after ``within`` seconds."""
    with trio.fail_after(within):
        # Polling on purpose: the conditions live in fakes and in Redis, which have no event to wait on.
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.005)


async def settle(bus: RedisBus, user_id: str, *recorders: Recorder) -> None:
    """Publish a marker event to ``user_id`` and wait until every recorder got it.

    Redis runs commands one at a time and writes to a subscriber in that order, so afterwards each
    recorder has also got whatever any script or publish that returned before this call sent it.
    """
    seq = next(_markers)
    await bus.publish(user_id, stored_event(seq, stream=MARKER), origin_session_id="marker")
    await eventually(lambda: all((MARKER, seq) in r.heads for r in recorders))


async def redis_call(url: str, fn: Callable[[redis.Redis], object]) -> object:
    """Run ``fn`` on a plain client of ``url`` (in a thread), for looking into Redis from a test."""

    def run() -> object:
        client = redis.Redis.from_url(url, protocol=2)
        try:
            return fn(client)
        finally:
            client.close()

    return await trio.to_thread.run_sync(run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define(eq=False)
class RedisServer:
    """A ``redis-server`` of a test's own, on a free loopback port, to stop, freeze and restart.

    ``start`` and ``stop`` block (call them through ``trio.to_thread.run_sync`` inside a test).
    """

    directory: Path
    port: int = attrs.Factory(_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--protected-mode", "yes",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log"),
            ],
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def freeze(self) -> None:
        """Stop the process without closing its sockets (SIGSTOP): a peer that went silent."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
