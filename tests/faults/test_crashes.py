"""Crash faults under a steady load (PROTOCOL.md §7): nodes killed with SIGKILL again and again,
PostgreSQL and Redis restarted in the middle; the reference client reconnects, retries un-acked events
by id, and replays. Afterwards: every acked event is stored exactly once, every stream's seqs are
1..head without a gap, every device holds exactly its streams' contents, and a revocation and an account
deletion made during the faults took effect. The same on one node with SQLite.

``FAULT_KILLS`` sets how many kills (default 5; ``bash scripts/faults`` runs 20).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loopback"))

from loopback_support import CAP_S
from services import free_port, private_postgres, private_redis

from relay import crypto
from relay.client import (
    Backoff,
    ConnectionLost,
    DeviceCredentials,
    RelayClient,
    RelayHttp,
    connect,
    open_client,
)
from relay.protocol import messages
from relay.protocol.names import device_name_key
from relay.store.base import Enrollment, Store

KILLS = int(os.environ.get("FAULT_KILLS", "5"))
#: The clients' WebSocket opening-handshake bound: on loopback an upgrade is answered in milliseconds,
#: and trio-websocket waits this long when the balancer hangs up before the 101 (relay/client/connection.py).
CONNECT_S = 2.0
FAST = Backoff(first_s=0.05, max_s=0.5)


@attrs.define
class Node:
    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        out = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--port", str(self.port)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


async def ready(node: Node) -> None:
    async with httpx.AsyncClient(headers={"Connection": "close"}) as http:
        while True:
            try:
                if (await http.get(f"{node.url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await trio.sleep(0.05)


class Balancer:
    """One address in front of the nodes: each new connection goes to the next node that accepts it."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.port = 0
        self._next = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        upstream = None
        for _ in range(len(self.nodes)):
            node = self.nodes[self._next % len(self.nodes)]
            self._next += 1
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", node.port)
                break
            except OSError:
                continue
        if upstream is None:
            await client.aclose()
            return

        async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
            try:
                while data := await source.receive_some(65536):
                    await sink.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                await trio.aclose_forcefully(sink)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, upstream)
            nursery.start_soon(pump, upstream, client)


async def enrol(store: Store, users: int, per_user: int) -> list[list[tuple[str, crypto.SigningKey]]]:
    """Users and their devices, enrolled straight in the store (device id, key)."""
    out = []
    now = int(time.time() * 1000)
    for u in range(users):
        new = await store.create_user(now_ms=now, token_ttl_ms=600_000)
        tokens = [new.token.token] + [
            (await store.create_token(user_id=new.user_id, now_ms=now, token_ttl_ms=600_000)).token
            for _ in range(per_user - 1)
        ]
        devices = []
        for d, token in enumerate(tokens):
            key = crypto.SigningKey.generate()
            name = f"u{u} d{d}"
            record = await store.enroll(
                Enrollment(
                    token_hash=crypto.hash_token(crypto.b64decode(token, crypto.TOKEN_BYTES) or b""),
                    public_key=key.public_key,
                    name=name,
                    name_key=device_name_key(name),
                    max_devices=20,
                    now_ms=now,
                )
            )
            devices.append((record.user_id + "/" + record.device_id, key))
        out.append(devices)
    return out


@attrs.define
class Worker:
    """A device publishing steadily and keeping every event of its user (the reference client)."""

    creds: DeviceCredentials
    stream: str
    acked: list[messages.Ack] = attrs.field(factory=list)
    held: dict[tuple[str, int], str] = attrs.field(factory=dict)
    failure: BaseException | None = None
    client: RelayClient | None = None
    #: Set once this worker has left its publishing loop (its last publish answered or given up).
    stopped: trio.Event = attrs.field(factory=trio.Event)
    #: Set (and replaced) whenever ``held`` grows, so a check can wait for deliveries still on the way.
    grew: trio.Event = attrs.field(factory=trio.Event)

    async def run(
        self,
        stop: trio.Event,
        done: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Publish until ``stop``; keep receiving (so the checks can catch up) until ``done``."""
        try:
            async with open_client(
                self.creds, positions={}, backoff=FAST, connect_options={"connect_timeout": CONNECT_S}
            ) as client:
                self.client = client
                task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._receive, client)
                    n = 0
                    while not stop.is_set():
                        try:
                            with trio.move_on_after(30):
                                self.acked.append(await client.publish(self.stream, {"n": n}))
                        except ConnectionLost as lost:  # a revoked or deleted device ends here
                            self.failure = lost
                            break
                        n += 1
                        await trio.sleep(0.005)
                    self.stopped.set()
                    await done.wait()
                    nursery.cancel_scope.cancel()
        except* ConnectionLost as group:
            self.failure = group.exceptions[0]
        finally:
            self.stopped.set()

    async def _receive(self, client: RelayClient) -> None:
        try:
            async for item in client:
                if isinstance(item, messages.StoredEvent):
                    self.held[(item.stream, item.seq)] = item.id
                    self.grew.set()
                    self.grew = trio.Event()
        except ConnectionLost as lost:
            self.failure = lost

    def held_of(self, stream: str) -> dict[int, str]:
        return {seq: event_id for (name, seq), event_id in self.held.items() if name == stream}

    async def holds(self, stream: str, expected: dict[int, str]) -> None:
        """Wait until this worker holds exactly ``expected`` of ``stream`` (deliveries may still be on
        their way from the client to this worker when the replay that fetched them has returned)."""
        while self.held_of(stream) != expected and len(self.held_of(stream)) < len(expected):
            await self.grew.wait()

    async def catch_up(self, streams: list[str]) -> None:
        assert self.client is not None
        for stream in streams:
            await self.client.catch_up(stream)


def creds_of(entry: tuple[str, crypto.SigningKey], url: str, server_key: str) -> DeviceCredentials:
    ids, key = entry
    user_id, device_id = ids.split("/")
    return DeviceCredentials(
        url=url, server_key=server_key, user_id=user_id, device_id=device_id, name="d", key=key
    )


@asynccontextmanager
async def cluster(
    tmp_path: Path, nodes: int, env: dict[str, str]
) -> AsyncIterator[tuple[list[Node], Balancer]]:
    started = [Node(port=free_port(), env=env, log=tmp_path / f"node{n}.log") for n in range(nodes)]
    for node in started:
        node.start()
    try:
        for node in started:
            with trio.fail_after(60):
                await ready(node)
        balancer = Balancer(started)
        async with trio.open_nursery() as nursery:
            await nursery.start(balancer.run)
            yield started, balancer
            nursery.cancel_scope.cancel()
    finally:
        for node in started:
            node.stop()


async def check(
    workers: list[Worker], reader_url: str, server_key: str, alive: Callable[[Worker], bool]
) -> None:
    """Every acked event stored once, gapless seqs, and every live device holding its streams."""
    with trio.fail_after(60):
        for worker in workers:
            await worker.stopped.wait()  # no publish still in flight: the heads are final
    for worker in [w for w in workers if alive(w)]:
        with trio.fail_after(60):
            await worker.catch_up(
                sorted({w.stream for w in workers if w.creds.user_id == worker.creds.user_id})
            )
    by_stream: dict[str, list[messages.Ack]] = {}
    for worker in workers:
        by_stream.setdefault(worker.stream, []).extend(worker.acked)
    reader = next(w for w in workers if alive(w))
    checked = {"streams": 0, "stored": 0, "acked": 0}
    async with connect(attrs.evolve(reader.creds, url=reader_url)) as conn:
        for worker in [w for w in workers if alive(w) and w.creds.user_id == reader.creds.user_id]:
            stored = [e for p in [p async for p in conn.replay_to_head(worker.stream)] for e in p.events]
            acks = by_stream[worker.stream]
            assert [e.seq for e in stored] == list(range(1, len(stored) + 1))  # 1..head, no gap
            ids = [e.id for e in stored]
            assert len(ids) == len(set(ids))  # each event once
            assert {a.id for a in acks} <= set(ids)  # nothing acked was lost
            assert {(a.id, a.seq) for a in acks} <= {(e.id, e.seq) for e in stored}
            checked["streams"] += 1
            checked["stored"] += len(stored)
            checked["acked"] += len(acks)
            expected = {e.seq: e.id for e in stored}
            for holder in [w for w in workers if alive(w) and w.creds.user_id == reader.creds.user_id]:
                with trio.move_on_after(10):
                    await holder.holds(worker.stream, expected)
                assert holder.held_of(worker.stream) == expected  # exactly the stream's contents
    # The figures docs/reliability.md reports (pytest -s shows them).
    print(
        f"checked: {checked['streams']} streams, {checked['stored']} events stored, "
        f"{checked['acked']} acked, all present once, seqs gapless, every live device holding them"
    )


@pytest.mark.postgres
@pytest.mark.redis
async def test_two_nodes_killed_again_and_again_with_postgres_and_redis_restarts_lose_nothing_acked(
    tmp_path: Path,
) -> None:
    with private_postgres(tmp_path) as pg, private_redis(tmp_path) as rds:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(
            RELAY_DATABASE_URL=pg.url,
            RELAY_REDIS_URL=rds.url,
            RELAY_HEARTBEAT_MS="1000",
            RELAY_DATA_DIR=str(tmp_path / "unused"),
            RELAY_DRAIN_TIMEOUT_MS="1000",
        )
        with trio.fail_after(CAP_S * 4 + KILLS * 20):
            from relay.store.postgres import PostgresStore

            store = await PostgresStore.open(pg.url, pool_size=2)
            await store.migrate()
            server_key = crypto.SigningKey((await store.load_or_create_secrets()).signing_seed).public_key_b64
            (main_user, victim_user) = await enrol(store, 2, 3)
            await store.close()
            async with cluster(tmp_path, 2, env) as (nodes, balancer):
                url = balancer.url
                workers = [
                    Worker(creds_of(entry, url, server_key), f"s{i}") for i, entry in enumerate(main_user)
                ]
                victims = [
                    Worker(creds_of(entry, url, server_key), f"v{i}") for i, entry in enumerate(victim_user)
                ]
                stop, done = trio.Event(), trio.Event()
                async with trio.open_nursery() as nursery:
                    for worker in workers + victims:
                        await nursery.start(worker.run, stop, done)
                    await trio.sleep(1)
                    for kill in range(KILLS):
                        node = nodes[kill % 2]
                        node.kill()
                        await trio.sleep(0.5)
                        if kill == KILLS // 2:  # the dependencies fail too, in the middle of it all
                            await trio.to_thread.run_sync(pg.stop)
                            await trio.sleep(1)
                            await trio.to_thread.run_sync(pg.start)
                            await trio.to_thread.run_sync(rds.stop)
                            await trio.sleep(1)
                            await trio.to_thread.run_sync(rds.start)
                        if kill == 1:  # a revocation and an account deletion made during the faults
                            async with RelayHttp(url, creds=workers[0].creds) as http:
                                await http.revoke(workers[2].creds.device_id)
                            async with RelayHttp(url, creds=victims[0].creds) as http:
                                await http.delete_account()
                        node.start()
                        await ready(node)
                        await trio.sleep(1)
                    stop.set()
                    await check(workers, url, server_key, alive=lambda w: w is not workers[2])
                    done.set()
                revoked = await refused(workers[2].creds)
                deleted = await refused(victims[1].creds)
    assert revoked == (1008, "device_revoked")
    assert deleted == (1008, "account_deleted")
    assert all(len(w.acked) > 20 for w in workers[:2])


async def refused(creds: DeviceCredentials) -> tuple[int | None, str | None]:
    try:
        async with connect(creds):
            return (None, None)
    except ConnectionLost as lost:
        return (lost.code, lost.reason)


async def test_one_sqlite_node_killed_mid_load_keeps_every_acked_event(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_DATA_DIR=str(tmp_path / "data"), RELAY_HEARTBEAT_MS="1000")
    from relay.store.sqlite import SqliteStore

    with trio.fail_after(CAP_S * 3 + KILLS * 10):
        store = await SqliteStore.open(tmp_path / "data")
        await store.migrate()
        server_key = crypto.SigningKey((await store.load_or_create_secrets()).signing_seed).public_key_b64
        (user,) = await enrol(store, 1, 2)
        await store.close()
        async with cluster(tmp_path, 1, env) as (nodes, balancer):
            workers = [
                Worker(creds_of(entry, balancer.url, server_key), f"s{i}") for i, entry in enumerate(user)
            ]
            stop, done = trio.Event(), trio.Event()
            async with trio.open_nursery() as nursery:
                for worker in workers:
                    await nursery.start(worker.run, stop, done)
                for _ in range(max(1, KILLS // 2)):
                    await trio.sleep(1)
                    nodes[0].kill()  # SIGKILL: no drain, no goodbye; only what was committed survives
                    nodes[0].start()
                    await ready(nodes[0])
                await trio.sleep(1)
                stop.set()
                await check(workers, balancer.url, server_key, alive=lambda w: True)
                done.set()
    assert all(len(w.acked) > 20 for w in workers)
