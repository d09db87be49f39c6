"""Two `relay serve` processes behind two addresses, sharing one PostgreSQL and one Redis: to a client
they are one relay. Real processes, real sockets, the reference client; real clock with caps."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loopback"))

from e2e_support import Served, relay_env, relay_serve
from loopback_support import live_channel, next_live

from relay.client import ConnectionLost, DeviceCredentials, RelayHttp, connect
from relay.protocol import messages
from relay.store.postgres import PostgresStore

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CAP_S = 90


@attrs.define
class Cluster:
    a: Served
    b: Served
    env: dict[str, str]
    #: The same database, opened by the test itself to issue enrolment tokens (as `relay admin` would).
    store: PostgresStore

    async def devices(self, count: int) -> list[DeviceCredentials]:
        """``count`` devices of one new user, enrolled alternately through node A and node B."""
        new = await self.store.create_user(now_ms=int(time.time() * 1000), token_ttl_ms=900_000)
        user_id, token = new.user_id, new.token.token
        devices = []
        for n in range(count):
            if n:
                issued = await self.store.create_token(
                    user_id=user_id, now_ms=int(time.time() * 1000), token_ttl_ms=900_000
                )
                token = issued.token
            node = self.a if n % 2 == 0 else self.b
            async with RelayHttp(node.url) as http:
                devices.append(await http.enroll(token, f"device {n}"))
        return devices


def on(creds: DeviceCredentials, node: Served) -> DeviceCredentials:
    return attrs.evolve(creds, url=node.url)


@asynccontextmanager
async def two_nodes(tmp_path: Path, database: str, redis_url: str) -> AsyncIterator[Cluster]:
    env = relay_env(
        tmp_path, RELAY_DATABASE_URL=database, RELAY_REDIS_URL=redis_url, RELAY_HEARTBEAT_MS="2000"
    )
    async with relay_serve(env) as a, relay_serve(env) as b:
        for node in (a, b):
            await wait_ready(node)
        store = await PostgresStore.open(database, pool_size=2)
        try:
            yield Cluster(a=a, b=b, env=env, store=store)
        finally:
            await store.close()


async def wait_ready(node: Served) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        while True:
            answer = await http.get(f"{node.url}/readyz")
            if answer.status_code == 200:
                return
            await trio.sleep(0.05)


async def test_devices_on_two_nodes_see_each_others_events_and_presence(
    tmp_path: Path, cluster_database: str, cluster_redis: str
) -> None:
    with trio.fail_after(CAP_S):
        async with two_nodes(tmp_path, cluster_database, cluster_redis) as cluster:
            alice, bob = await cluster.devices(2)
            to_alice, alice_live = live_channel()
            to_bob, bob_live = live_channel()
            async with connect(on(alice, cluster.a), live=to_alice) as a:
                async with connect(on(bob, cluster.b), live=to_bob) as b:
                    online = await next_live(alice_live, messages.Presence)
                    assert b.welcome.online == [alice.device_id]
                    sent = await a.publish("notes", {"from": "node A"})
                    got_b = (await next_live(bob_live, messages.Event)).event
                    back = await b.publish("notes", {"from": "node B"})
                    got_a = (await next_live(alice_live, messages.Event)).event
                offline = await next_live(alice_live, messages.Presence)
    assert (online.device_id, online.online) == (bob.device_id, True)
    assert (offline.device_id, offline.online) == (bob.device_id, False)
    assert (got_b.seq, got_b.id, got_b.device_id) == (sent.seq, sent.id, alice.device_id)
    assert (got_a.seq, got_a.device_id) == (back.seq, bob.device_id)
    assert [sent.seq, back.seq] == [1, 2]


async def test_a_revocation_made_on_node_a_closes_the_session_on_node_b_within_a_second(
    tmp_path: Path, cluster_database: str, cluster_redis: str
) -> None:
    with trio.fail_after(CAP_S):
        async with two_nodes(tmp_path, cluster_database, cluster_redis) as cluster:
            alice, bob = await cluster.devices(2)
            async with connect(on(bob, cluster.b)) as b:
                async with RelayHttp(cluster.a.url, creds=on(alice, cluster.a)) as http:
                    await http.revoke(bob.device_id)
                    revoked_at = trio.current_time()
                await b.closed.wait()
                took = trio.current_time() - revoked_at
    assert b.lost is not None
    assert (b.lost.code, b.lost.reason) == (1008, "device_revoked")
    assert took < 1.0


async def test_a_new_session_on_node_b_replaces_the_one_on_node_a(
    tmp_path: Path, cluster_database: str, cluster_redis: str
) -> None:
    with trio.fail_after(CAP_S):
        async with two_nodes(tmp_path, cluster_database, cluster_redis) as cluster:
            alice, bob = await cluster.devices(2)
            to_bob, bob_live = live_channel()
            async with connect(on(bob, cluster.a), live=to_bob), connect(on(alice, cluster.a)) as first:
                await next_live(bob_live, messages.Presence)  # alice online
                async with connect(on(alice, cluster.b)) as second:
                    await first.closed.wait()
                    await second.publish("notes", "from the newer session")
                    after = await next_live(bob_live, messages.Event | messages.Presence)
    assert first.lost is not None
    assert (first.lost.code, first.lost.reason) == (4001, "session_replaced")
    assert isinstance(after, messages.Event)  # no presence change was announced for the replacement


async def test_deleting_the_account_closes_its_sessions_on_both_nodes(
    tmp_path: Path, cluster_database: str, cluster_redis: str
) -> None:
    with trio.fail_after(CAP_S):
        async with two_nodes(tmp_path, cluster_database, cluster_redis) as cluster:
            alice, bob, carol = await cluster.devices(3)
            async with connect(on(alice, cluster.a)) as a, connect(on(bob, cluster.b)) as b:
                async with RelayHttp(cluster.b.url, creds=on(carol, cluster.b)) as http:
                    deleted = await http.delete_account()
                await a.closed.wait()
                await b.closed.wait()
            with pytest.raises(ConnectionLost) as again:
                async with connect(on(alice, cluster.b)):
                    pass
    assert deleted == {"devices": 3, "streams": 0, "events": 0}
    for conn in (a, b):
        assert conn.lost is not None
        assert (conn.lost.code, conn.lost.reason) == (1008, "account_deleted")
    assert (again.value.code, again.value.reason) == (1008, "account_deleted")


async def test_four_devices_over_two_nodes_publishing_500_each_get_seqs_1_to_2000(
    tmp_path: Path, cluster_database: str, cluster_redis: str
) -> None:
    per_device = 500
    with trio.fail_after(CAP_S * 2):
        async with two_nodes(tmp_path, cluster_database, cluster_redis) as cluster:
            devices = await cluster.devices(4)
            seqs: list[int] = []

            async def publish_all(creds: DeviceCredentials, node: Served) -> None:
                async with connect(on(creds, node)) as conn:
                    waiters = [await conn.send_publish("shared", n) for n in range(per_device)]
                    seqs.extend([(await waiter()).seq for waiter in waiters])

            async with trio.open_nursery() as nursery:
                for index, creds in enumerate(devices):
                    nursery.start_soon(publish_all, creds, cluster.a if index % 2 == 0 else cluster.b)
            async with connect(on(devices[0], cluster.b)) as reader:
                replayed = [
                    e.seq for p in [p async for p in reader.replay_to_head("shared")] for e in p.events
                ]
    assert sorted(seqs) == list(range(1, 4 * per_device + 1))
    assert replayed == list(range(1, 4 * per_device + 1))
