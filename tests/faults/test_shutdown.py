"""Graceful shutdown of a real `relay serve` process under publish load (PROTOCOL.md §8): on SIGTERM it
stops reading, commits and acks what it already accepted, closes every session 1001 going_away spread
over RELAY_DRAIN_TIMEOUT_MS, and exits 0 within it. No acked event is lost; an event without an ack is
either stored whole or not at all."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_support import relay, relay_env, relay_serve

from relay.client import ConnectionLost, DeviceCredentials, RelayHttp, connect
from relay.protocol import messages

CAP_S = 90
DRAIN_MS = 2000


async def enrolled(url: str, env: dict[str, str], count: int) -> list[DeviceCredentials]:
    created = await relay("admin", "user", "create", "--json", env=env)
    user = created.json()
    devices = []
    async with RelayHttp(url) as http:
        for n in range(count):
            token = user["token"]
            if n:
                token = (
                    await relay("admin", "token", "create", "--user", user["user_id"], "--json", env=env)
                ).json()["token"]
            devices.append(await http.enroll(token, f"device {n}"))
    return devices


async def test_sigterm_under_load_acks_what_was_accepted_loses_nothing_and_exits_0_in_time(
    tmp_path: Path,
) -> None:
    env = relay_env(tmp_path, RELAY_DRAIN_TIMEOUT_MS=str(DRAIN_MS))
    acked: dict[str, messages.Ack] = {}
    sent: dict[str, int] = {}
    closes: list[tuple[int | None, str | None]] = []
    with trio.fail_after(CAP_S):
        async with relay_serve(env) as server:
            devices = await enrolled(server.url, env, 4)
            started = trio.Event()

            async def load(index: int, creds: DeviceCredentials) -> None:
                try:
                    async with connect(creds) as conn:
                        n = 0
                        waiting: list[object] = []
                        while True:
                            event_id = f"d{index}-{n}"
                            sent[event_id] = n
                            waiting.append(await conn.send_publish("load", {"d": index, "n": n}, id=event_id))
                            n += 1
                            if n == 200:
                                started.set()
                            if len(waiting) >= 32:
                                ack = await waiting.pop(0)()  # type: ignore[operator]
                                acked[ack.id] = ack
                except ConnectionLost as lost:
                    closes.append((lost.code, lost.reason))
                    # Acks that arrived before the close were recorded; later answers cannot come.

            async with trio.open_nursery() as nursery:
                for index, creds in enumerate(devices):
                    nursery.start_soon(load, index, creds)
                await started.wait()
                signalled = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
            exit_code = await server.process.wait()
            took = time.monotonic() - signalled
        log = server.log

        async with relay_serve(env) as again, connect(attrs.evolve(devices[0], url=again.url)) as reader:
            stored = [e for p in [p async for p in reader.replay_to_head("load")] for e in p.events]

    assert exit_code == 0
    assert took < DRAIN_MS / 1000 + 2.0  # the drain bound, plus the process's own exit
    assert closes == [(1001, "going_away")] * 4
    stored_ids = [e.id for e in stored]
    assert len(set(stored_ids)) == len(stored_ids)
    assert set(acked) <= set(stored_ids)  # no acked event lost
    for event in stored:  # whatever was stored was stored whole, as sent
        assert event.id in sent
        d, n = event.id[1:].split("-")
        assert event.body == f'{{"d":{d},"n":{n}}}'
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    assert len(acked) >= 300  # a real load was under way (one device alone had sent 200)
    assert "Traceback" not in log
