"""The command side of the Redis bus: blocking redis-py calls in worker threads, and batched publishing.

redis-py's asyncio API does not run under trio, so its sync client is called through
``trio.to_thread.run_sync`` under a :class:`trio.CapacityLimiter` of :data:`COMMAND_THREADS` threads,
each taking one connection of a pool of as many. Every error of redis (or of the socket under it) is
mapped to :class:`~relay.errors.BusUnavailable` in the thread, at this boundary.

Cancellation
    :meth:`Commands.call` does not abandon its thread unless told to: a cancelled caller waits until
    the thread's command has finished (at most :data:`COMMAND_TIMEOUT_S`), so a connection is never
    left half-used and a state change (a presence script) never lands after the caller went on to undo
    it. Only read-only calls pass ``abandon_on_cancel=True``: the thread then finishes alone and gives
    its connection back to the pool in a clean state; only its answer is dropped.

Publishing (:class:`Publisher`)
    Concurrent :meth:`Publisher.publish` calls share a round trip: they queue their message on a channel
    of :data:`PUBLISH_QUEUE_MAX_MESSAGES`, and one sender task sends everything waiting (up to
    :data:`PUBLISH_BATCH_MAX_MESSAGES`) in one pipeline, then answers every caller of the batch: success,
    or :class:`~relay.errors.BusUnavailable` for all of them when the pipeline failed (some of its
    messages may have gone out). When the queue is full, callers wait for room (the callers are
    sessions' publishes, themselves bounded by ``max_inflight``). Without a running sender (a bus used
    by a command-line tool, which never runs the bus), each message is published by a call of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import attrs
import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from relay.errors import BusUnavailable

__all__ = [
    "COMMAND_THREADS",
    "COMMAND_TIMEOUT_S",
    "CONNECT_TIMEOUT_S",
    "PUBLISH_BATCH_MAX_MESSAGES",
    "PUBLISH_QUEUE_MAX_MESSAGES",
    "Commands",
    "Publisher",
    "bus_unavailable",
    "connection_options",
]

log = logging.getLogger("relay.bus")

T = TypeVar("T")

#: Redis commands running at once, each in its own worker thread on its own pooled connection (threads).
COMMAND_THREADS = 8
#: Longest wait for one reply, or for the socket to take one request, before the call fails (seconds).
COMMAND_TIMEOUT_S = 5.0
#: Longest wait for a TCP connection to Redis (seconds).
CONNECT_TIMEOUT_S = 2.0
#: Messages waiting for the sender task; beyond that publishers wait for room (messages).
PUBLISH_QUEUE_MAX_MESSAGES = 4096
#: Messages sent in one pipeline at most (messages): bounds one round trip's size and its callers' wait.
PUBLISH_BATCH_MAX_MESSAGES = 512


def connection_options(*, socket_timeout: float | None, client_name: str) -> dict[str, object]:
    """Options of every connection of the bus: RESP2, no retries (a failure is reported, not hidden).

    ``client_name`` is what ``CLIENT LIST`` shows for the connection (``relay-bus:{node_id}``).
    """
    return {
        "protocol": 2,
        "client_name": client_name,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        "health_check_interval": 0,
        "retry": Retry(NoBackoff(), 0),
    }


def bus_unavailable(what: str, exc: BaseException) -> BusUnavailable:
    """``BusUnavailable`` caused by ``exc``, as ``raise … from exc`` would make it.

    The detail names the operation and the exception's type and text (redis' texts name the server
    and the failure, never a key, a channel or a payload).
    """
    error = BusUnavailable(detail=f"{what}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    error.__suppress_context__ = True
    return error


@attrs.define(eq=False)
class Commands:
    """A pool of connections to Redis, used from worker threads; see the module docstring."""

    client: redis.Redis
    _limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(COMMAND_THREADS))

    @classmethod
    def from_url(cls, url: str, *, client_name: str) -> Commands:
        options = connection_options(socket_timeout=COMMAND_TIMEOUT_S, client_name=client_name)
        pool = redis.ConnectionPool.from_url(url, max_connections=COMMAND_THREADS, **options)
        return cls(redis.Redis(connection_pool=pool))

    async def call(self, what: str, fn: Callable[[redis.Redis], T], *, abandon_on_cancel: bool = False) -> T:
        """``fn(client)`` in a worker thread; :class:`BusUnavailable` for any error of redis.

        ``what`` names the operation in errors and logs. Cancellation: see the module docstring.
        """

        def run() -> T:
            try:
                return fn(self.client)
            except (redis.RedisError, OSError) as exc:
                raise bus_unavailable(what, exc) from exc

        return await trio.to_thread.run_sync(run, limiter=self._limiter, abandon_on_cancel=abandon_on_cancel)

    def close(self) -> None:
        """Close the pooled connections (those in use are closed when given back)."""
        self.client.connection_pool.disconnect()


@attrs.define(eq=False)
class _Outgoing:
    """One message waiting to be published, and the answer its caller waits for."""

    channel: bytes
    payload: bytes
    done: trio.Event = attrs.Factory(trio.Event)
    error: BusUnavailable | None = None


def _publish_all(batch: list[_Outgoing]) -> Callable[[redis.Redis], None]:
    def run(client: redis.Redis) -> None:
        pipe = client.pipeline(transaction=False)
        for item in batch:
            pipe.publish(item.channel, item.payload)
        pipe.execute()

    return run


@attrs.define(eq=False)
class Publisher:
    """Batched PUBLISH (see the module docstring). :meth:`run` is the sender task."""

    _commands: Commands
    _queue: trio.MemorySendChannel[_Outgoing] | None = attrs.field(default=None, init=False)
    #: Pipelines sent and messages they carried, since the start (for ``statistics``).
    batches: int = attrs.field(default=0, init=False)
    messages: int = attrs.field(default=0, init=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send what :meth:`publish` queues until cancelled; then answer what is left ``BusUnavailable``."""
        send, receive = trio.open_memory_channel[_Outgoing](PUBLISH_QUEUE_MAX_MESSAGES)
        self._queue = send
        try:
            task_status.started()
            while True:
                batch = [await receive.receive()]
                while len(batch) < PUBLISH_BATCH_MAX_MESSAGES:
                    try:
                        batch.append(receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self._send(batch)
        finally:
            self._queue = None
            while True:  # no checkpoint from here on: nothing can be queued behind this loop
                try:
                    item = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                item.error = BusUnavailable(detail="the bus stopped before publishing")
                item.done.set()
            receive.close()  # publishers waiting for room get BrokenResourceError, mapped by publish()

    async def _send(self, batch: list[_Outgoing]) -> None:
        error: BusUnavailable | None = None
        try:
            await self._commands.call("publish", _publish_all(batch))
        except BusUnavailable as exc:
            log.warning("publishing %d bus messages failed: %s", len(batch), exc)
            error = exc
        self.batches += 1
        self.messages += len(batch)
        for item in batch:
            item.error = error
            item.done.set()

    async def publish(self, channel: bytes, payload: bytes) -> None:
        """Publish ``payload`` on ``channel``; returns once Redis took it (or raises BusUnavailable).

        A cancelled call may or may not have published.
        """
        queue = self._queue
        if queue is None:
            await self._commands.call("publish", _publish_all([_Outgoing(channel, payload)]))
            return
        item = _Outgoing(channel, payload)
        try:
            await queue.send(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise BusUnavailable(detail="the bus stopped before publishing") from exc
        await item.done.wait()
        if item.error is not None:
            raise BusUnavailable(detail=item.error.detail) from item.error

    def queued(self) -> int:
        """Messages waiting for the sender now."""
        queue = self._queue
        return 0 if queue is None else queue.statistics().current_buffer_used
