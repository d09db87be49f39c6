"""The real PostgreSQL and the real Redis stopped and restarted in the middle of a running load.

While PostgreSQL is down publishes are answered ``unavailable`` quickly (no hang, no ack, nothing
half-written), handshakes close 1013, ``/readyz`` answers 503; while Redis is down sessions are closed
``bus_lost`` and new ones 1013. Everything recovers by itself when the service is back. Afterwards every
acked event is stored exactly once, seqs are gapless, and a device that kept reconnecting holds exactly
what was acked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loopback"))

from loopback_support import LiveServer, running_server
from services import private_postgres, private_redis

from relay.client import Backoff, ConnectionLost, connect, open_client
from relay.errors import Unavailable
from relay.protocol import messages

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CAP_S = 120
FAST = Backoff(first_s=0.05, max_s=0.5)
#: How long each service stays down (real seconds: an outage, not a timer of relay's).
OUTAGE_S = 2.0


async def readyz(server: LiveServer) -> httpx.Response:
    async with httpx.AsyncClient(headers={"Connection": "close"}) as http:
        return await http.get(f"{server.url}/readyz")


async def test_postgres_and_redis_outages_lose_nothing_acked_and_recover_by_themselves(
    tmp_path: Path,
) -> None:
    with private_postgres(tmp_path) as pg, private_redis(tmp_path) as rds:
        with trio.fail_after(CAP_S):
            async with running_server(
                tmp_path / "data", database_url=pg.url, redis_url=rds.url, heartbeat_ms=1000
            ) as server:
                await wait_ready(server)
                alice, bob = await server.devices(2)
                acked: list[messages.Ack] = []
                refusals: list[str] = []
                during: dict[str, object] = {}
                keep_going = True

                async def publisher() -> None:
                    async with open_client(alice, backoff=FAST, receive=False) as client:
                        n = 0
                        while keep_going:
                            acked.append(await client.publish("log", {"n": n}))
                            n += 1

                async with open_client(bob, positions={}, backoff=FAST) as reader:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(publisher)
                        await wait_for(lambda: len(acked) >= 50)

                        # PostgreSQL goes away under the load. A session opened before sees its
                        # publishes answered unavailable, fast; new sessions are refused 1013.
                        probe_device = await server.enroll("probe", alice.user_id)
                        async with connect(probe_device, heartbeat=False) as probe:
                            await trio.to_thread.run_sync(pg.stop)
                            before = len(acked)
                            started = trio.current_time()
                            try:
                                await probe.publish("probe", 1)
                            except Unavailable as exc:
                                refusals.append(exc.code)
                                during["unavailable_after_s"] = trio.current_time() - started
                                during["retry_after_ms"] = exc.fields.get("retry_after_ms")
                        await trio.sleep(OUTAGE_S)
                        with pytest.raises(ConnectionLost) as refused_handshake:
                            async with connect(bob, heartbeat=False):
                                pass
                        during["handshake"] = (refused_handshake.value.code, refused_handshake.value.reason)
                        during["readyz_pg_down"] = (await readyz(server)).status_code
                        during["acked_while_pg_down"] = len(acked) - before
                        await trio.to_thread.run_sync(pg.start)
                        await wait_for(lambda: len(acked) >= before + 50)

                        # Redis goes away: sessions end bus_lost, new ones 1013, until it is back.
                        await trio.to_thread.run_sync(rds.stop)
                        await trio.sleep(OUTAGE_S)
                        during["readyz_redis_down"] = (await readyz(server)).status_code
                        await trio.to_thread.run_sync(rds.start)
                        middle = len(acked)
                        await wait_for(lambda: len(acked) >= middle + 50)
                        keep_going = False
                    # Let the reader catch up with everything acked (it replays what it missed).
                    seen: dict[int, messages.StoredEvent] = {}
                    last = max(a.seq for a in acked)
                    while len(seen) < len(acked) or max(seen, default=0) < last:
                        item = await reader.receive()
                        if isinstance(item, messages.StoredEvent) and item.stream == "log":
                            seen[item.seq] = item
                async with connect(alice) as check:
                    stored = [e for p in [p async for p in check.replay_to_head("log")] for e in p.events]
                during["readyz_after"] = (await readyz(server)).status_code

    ids = [a.id for a in acked]
    assert len(set(ids)) == len(ids)
    assert sorted(a.seq for a in acked) == list(range(1, len(acked) + 1))  # gapless, each acked once
    assert [e.seq for e in stored] == list(range(1, len(acked) + 1))  # nothing half-written
    assert [e.id for e in stored] == ids
    assert sorted(seen) == [a.seq for a in acked]  # the reader holds exactly what was acked
    assert refusals == ["unavailable"]
    # Answered within the store's wait for a connection (1 s), not the publisher's 10 s commit bound;
    # once the breaker has opened, at once.
    assert float(during["unavailable_after_s"]) < 2.0  # type: ignore[arg-type]
    assert isinstance(during["retry_after_ms"], int)
    assert during["handshake"] == (1013, "unavailable")
    assert during["readyz_pg_down"] == 503
    assert during["acked_while_pg_down"] == 0
    assert during["readyz_redis_down"] == 503
    assert during["readyz_after"] == 200


async def wait_ready(server: LiveServer) -> None:
    while True:
        if (await readyz(server)).status_code == 200:
            return
        await trio.sleep(0.05)


async def wait_for(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (the callers' caps bound the wait)."""
    while True:
        if condition():
            return
        await trio.sleep(0.02)
