"""End-to-end publishing through a real `relay serve`: 4 devices of one user, each publishing as fast as
its acks come back, every event relayed live to the other 3.

Not a test: run it by hand.

    .venv/bin/python tests/bench/bench_publish.py [--devices 4] [--seconds 10] [--window 1 64] [--dir PATH]

The server runs as its own process (``relay serve --port 0``, SQLite with ``synchronous=FULL`` in a
temporary data dir under ``--dir``, the system's temporary directory by default) and the devices are
reference clients (``relay.client``) in this process. ``--window`` is how many publishes each device
keeps unacknowledged: 1 waits for each ack before the next publish; 64 is the protocol's
``max_inflight``. For each window it prints acks/s, deliveries/s, publish→ack and publish→delivery
latency (p50, p99, max, from this process's monotonic clock), and the CPU seconds the server and this
load generator used. The load generator is one Python process: when its CPU share approaches 100 % of
a core it is the bottleneck, and the line says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from relay.client import DeviceCredentials, RelayHttp, connect
from relay.client.connection import LiveMessage
from relay.protocol import messages

#: The line `relay serve` logs once it listens (JSON or text); the URL ends at a quote or space.
LISTENING = re.compile(r"listening on (https?://[^\s\",]+)[\",\s]")

RELAY = [sys.executable, "-m", "relay"]
TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def start_server(data_dir: Path, env: dict[str, str]) -> tuple[trio.Process, str]:
    """``relay serve --port 0`` with its log in ``data_dir/serve.log``; its process and base URL."""
    log_path = data_dir / "serve.log"
    log = log_path.open("wb")
    process = await trio.lowlevel.open_process(
        [*RELAY, "serve", "--port", "0"], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    with trio.fail_after(30):
        while not LISTENING.search(text := log_path.read_text()):
            if process.poll() is not None:
                raise RuntimeError(f"relay serve failed:\n{text}")
            await trio.sleep(0.05)
    url = LISTENING.search(text).group(1)  # type: ignore[union-attr]
    return process, url


async def enroll_devices(url: str, env: dict[str, str], count: int) -> list[DeviceCredentials]:
    created = await trio.run_process(
        [*RELAY, "admin", "user", "create", "--json"], env=env, capture_stdout=True
    )
    user = json.loads(created.stdout)
    devices = []
    async with RelayHttp(url) as http:
        for n in range(count):
            token = user["token"]
            if n:
                issued = await trio.run_process(
                    [*RELAY, "admin", "token", "create", "--user", user["user_id"], "--json"],
                    env=env,
                    capture_stdout=True,
                )
                token = json.loads(issued.stdout)["token"]
            devices.append(await http.enroll(token, f"bench {n}"))
    return devices


async def run_window(
    devices: list[DeviceCredentials], window: int, seconds: float, server_pid: int
) -> dict[str, object]:
    ack_latency: list[float] = []
    delivery_latency: list[float] = []
    acks = 0
    deliveries = 0
    stop_at = 0.0
    sent_at: dict[str, float] = {}

    async def device(index: int, creds: DeviceCredentials, ready: trio.Event, go: trio.Event) -> None:
        nonlocal acks, deliveries
        send, receive = trio.open_memory_channel[LiveMessage](100_000)
        async with connect(creds, live=send) as conn:

            async def listen() -> None:
                nonlocal deliveries
                async for msg in receive:
                    if isinstance(msg, messages.Event):
                        started = sent_at.get(msg.event.id)
                        if started is not None and time.monotonic() < stop_at:
                            delivery_latency.append(time.monotonic() - started)
                            deliveries += 1

            async def publish_loop() -> None:
                nonlocal acks
                in_flight: list[tuple[float, object]] = []
                n = 0
                while time.monotonic() < stop_at:
                    while len(in_flight) < window:
                        event_id = f"{index}-{window}-{n}"
                        n += 1
                        sent_at[event_id] = time.monotonic()
                        waiter = await conn.send_publish("bench", {"n": n, "pad": "x" * 64}, id=event_id)
                        in_flight.append((sent_at[event_id], waiter))
                    started, waiter = in_flight.pop(0)
                    await waiter()  # type: ignore[operator]
                    now = time.monotonic()
                    if now < stop_at:
                        acks += 1
                        ack_latency.append(now - started)
                for _, waiter in in_flight:
                    await waiter()  # type: ignore[operator]

            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                ready.set()
                await go.wait()
                await publish_loop()
                await trio.sleep(0.5)  # let the last deliveries arrive
                nursery.cancel_scope.cancel()

    readies = [trio.Event() for _ in devices]
    go = trio.Event()
    async with trio.open_nursery() as nursery:
        for index, creds in enumerate(devices):
            nursery.start_soon(device, index, creds, readies[index], go)
        for ready in readies:
            await ready.wait()
        server_cpu = process_cpu_s(server_pid)
        own_cpu = resource.getrusage(resource.RUSAGE_SELF)
        began = time.monotonic()
        stop_at = began + seconds
        go.set()
    elapsed = seconds
    own = resource.getrusage(resource.RUSAGE_SELF)
    own_cpu_s = own.ru_utime + own.ru_stime - own_cpu.ru_utime - own_cpu.ru_stime
    return {
        "window": window,
        "acks_per_s": round(acks / elapsed),
        "deliveries_per_s": round(deliveries / elapsed),
        "ack_ms": {q: round(percentile(ack_latency, p) * 1000, 2) for q, p in (("p50", 0.5), ("p99", 0.99))}
        | {"max": round(max(ack_latency, default=0) * 1000, 2)},
        "delivery_ms": {
            q: round(percentile(delivery_latency, p) * 1000, 2) for q, p in (("p50", 0.5), ("p99", 0.99))
        }
        | {"max": round(max(delivery_latency, default=0) * 1000, 2)},
        "server_cpu_s": round(process_cpu_s(server_pid) - server_cpu, 2),
        "load_cpu_s": round(own_cpu_s, 2),
        "load_saturated": own_cpu_s > 0.9 * (elapsed + 0.5),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--window", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(RELAY_DATA_DIR=str(Path(tmp) / "data"), RELAY_LOG_LEVEL="info")
        process, url = await start_server(Path(tmp), env)
        try:
            devices = await enroll_devices(url, env, args.devices)
            print(f"relay serve at {url}, {args.devices} devices of one user, {args.seconds:g} s per window")
            for window in args.window:
                result = await run_window(devices, window, args.seconds, process.pid)
                print(json.dumps(result))
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                await process.wait()


if __name__ == "__main__":
    trio.run(main)
