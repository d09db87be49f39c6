"""How fast a revocation closes a live session, by the bus and by the store's revocation log alone.

Not a test: run it by hand.

    .venv/bin/python tests/bench/bench_revocation.py [--revocations 50] [--connected 50] [--dir PATH]

A real server (``relay.serving.serve`` in this process, on 127.0.0.1 and a free port, SQLite with
``synchronous=FULL`` in a temporary data dir under ``--dir``) and ``--connected`` devices of one user,
each connected through the reference client (``relay.client.connect``). Devices are revoked one at a
time, ``--revocations`` of them per path:

- ``bus``: ``store.revoke_device`` then ``bus.announce_device(..., "revoked", ...)``, as
  ``DELETE /v1/devices/{id}`` does;
- ``log``: ``store.revoke_device`` only, as ``relay admin device revoke`` in another process does: the
  gateway's revocation watcher (polling every ``REVOCATION_POLL_S``) finds it in the log.

For each revocation it measures the time from ``store.revoke_device`` returning (the revocation has
committed) to the client seeing its socket closed, and prints p50, p99 and max per path, plus how
many sessions closed with ``device_revoked``. Revocations are spaced by a random pause (up to one poll
interval, plus a little) so that the log path samples every phase of the watcher's polling.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from functools import partial
from pathlib import Path

import attrs
import trio

from relay.app import RelayApp, create_app
from relay.client import ConnectionLost, DeviceCredentials, RelayHttp, connect
from relay.config import Settings
from relay.gateway.revocations import REVOCATION_POLL_S
from relay.serving import serve

#: Cap of one close being seen (the guarantee is 1 s).
CLOSE_CAP_S = 5.0
TOKEN_TTL_MS = 900_000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@attrs.define(eq=False)
class Held:
    """One connected device: when its socket was seen closed, and with which reason."""

    creds: DeviceCredentials
    done: trio.Event = attrs.field(factory=trio.Event)
    closed_at: float = 0.0
    reason: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Keep a session open until the server closes it."""
        async with connect(self.creds) as conn:
            task_status.started()
            await conn.closed.wait()
            self.closed_at = time.perf_counter()
            lost: ConnectionLost | None = conn.lost
            self.reason = lost.reason if lost is not None else None
            self.done.set()


async def enroll(app: RelayApp, url: str, count: int, prefix: str) -> tuple[str, list[DeviceCredentials]]:
    """A new user with ``count`` devices, enrolled over HTTP."""
    runtime = app.services.runtime
    store, clock = runtime.store, runtime.clock
    user = await store.create_user(now_ms=clock.now_ms(), token_ttl_ms=TOKEN_TTL_MS)
    token = user.token.token
    devices = []
    async with RelayHttp(url) as http:
        for n in range(count):
            if n:
                issued = await store.create_token(
                    user_id=user.user_id, now_ms=clock.now_ms(), token_ttl_ms=TOKEN_TTL_MS
                )
                token = issued.token
            devices.append(await http.enroll(token, f"{prefix} {n}"))
    return user.user_id, devices


async def run_path(
    path: str, app: RelayApp, url: str, count: int, connected: int, rng: random.Random
) -> tuple[list[float], int]:
    """Revoke ``count`` of ``connected`` connected devices of a new user through ``path``."""
    runtime = app.services.runtime
    store, bus, clock = runtime.store, runtime.bus, runtime.clock
    user_id, devices = await enroll(app, url, connected, path)
    held = [Held(creds) for creds in devices]
    latencies: list[float] = []
    async with trio.open_nursery() as nursery:
        for one in held:
            await nursery.start(one.run)
        await trio.sleep(0.5)  # let presence notices settle
        for one in held[:count]:
            await trio.sleep(rng.uniform(0.01, REVOCATION_POLL_S + 0.01))
            record = await store.revoke_device(one.creds.device_id, now_ms=clock.now_ms())
            committed = time.perf_counter()
            if path == "bus":
                await bus.announce_device(user_id, "revoked", record.device_id, record.name, clock.now_ms())
            with trio.fail_after(CLOSE_CAP_S):
                await one.done.wait()
            latencies.append(one.closed_at - committed)
        nursery.cancel_scope.cancel()
    return latencies, sum(1 for one in held[:count] if one.reason == "device_revoked")


def ms(value: float) -> str:
    return f"{value * 1000:7.2f} ms"


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        settings = Settings(data_dir=Path(tmp), host="127.0.0.1", port=0, max_devices=args.connected + 1)
        app = create_app(settings)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            urls: list[str] = await nursery.start(
                partial(serve, settings, shutdown_trigger=stop.wait, app=app)
            )
            print(
                f"{args.revocations} revocations per path, {args.connected} connected devices of one user, "
                f"REVOCATION_POLL_S = {REVOCATION_POLL_S}; from revoke_device returning to the socket closed:"
            )
            for path in ("bus", "log"):
                latencies, revoked = await run_path(path, app, urls[0], args.revocations, args.connected, rng)
                p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
                print(
                    f"  {path:>3}: p50 {ms(p50)}  p99 {ms(p99)}  max {ms(max(latencies))}"
                    f"  ({revoked}/{len(latencies)} closed device_revoked)"
                )
            stop.set()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revocations", type=int, default=50)
    parser.add_argument("--connected", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", default=None)
    arguments = parser.parse_args()
    if arguments.revocations > arguments.connected:
        parser.error("--revocations cannot exceed --connected")
    logging.basicConfig(level=logging.WARNING)
    trio.run(main, arguments)
