"""relay's benchmark (``bash scripts/bench``): relay against a bare reference relay, same workload, one run.

    bash scripts/bench [--users 250] [--devices 4] [--seconds 10] [--rate 2000] [--idle 5000]
                       [--replay 100000] [--procs 4] [--database-url URL --redis-url URL] [--json FILE]
                       [--workers N] [--fast-send on|off]

The server under test runs as a process pinned to CPU 0 (``relay serve``, SQLite with durable acks in a
temporary data dir, unless ``--database-url``/``--redis-url``), the load generator as ``--procs`` Node
processes (tests/bench/relaybench/loadgen.js, the real handshake and Ed25519) pinned to CPU 1. Phases:

1. **saturation**: every device keeps ``--window`` publishes unacknowledged; each publish is relayed to
   the user's other devices. Deliveries/s, acks/s, publish→ack and publish→delivery latency.
2. **fixed rate**: ``--rate`` publishes/s in all, evenly spread: latency at a load the node carries.
3. **idle sessions**: ``--idle`` authenticated sessions held open; the server's RSS growth per session.
4. **replay**: one client replays a stream of ``--replay`` events; events/s.
5. **handshakes**: new sessions (connect, challenge, auth, welcome) as fast as they go, for a few seconds.
6. **reference**: phase 1 against the bare trio-websocket relay (relaybench.reference), same devices:
   the ratio relay / reference is the headline.

It prints a table and (``--json``) writes the figures. The load generator reports its own CPU: when it
used more than 90 % of its core during a phase, that phase is flagged: the figure is a floor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from relay import crypto
from relay.protocol.names import device_name_key
from relay.store.base import AppendRequest, Enrollment, Store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
TICKS = os.sysconf("SC_CLK_TCK")
SERVER_CPU = 0
LOAD_CPU = 1
NOW_MS = lambda: int(time.time() * 1000)  # noqa: E731


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree(pid: int) -> list[int]:
    """``pid`` and its children (``relay serve --workers N`` is a parent and N workers)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return pids


def cpu_s(pid: int) -> float:
    """CPU seconds used by ``pid`` and its live children."""
    total = 0.0
    for one in tree(pid):
        try:
            fields = _stat(one)
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def rss_kb(pid: int) -> int:
    """Resident KB of ``pid`` and its live children."""
    total = 0
    for one in tree(pid):
        try:
            lines = Path(f"/proc/{one}/status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in lines if line.startswith("VmRSS:")), 0)
    return total


def pin(cpu: int) -> Any:
    def preexec() -> None:
        if os.cpu_count() and os.cpu_count() > cpu:  # type: ignore[operator]
            os.sched_setaffinity(0, {cpu})

    return preexec


# --- populating the store before the server starts -------------------------------------------------------


async def populate(store: Store, users: int, devices: int, *, name: str) -> list[dict[str, str]]:
    """``users`` × ``devices`` enrolled devices (their ids and seeds), straight through the store."""
    out: list[dict[str, str]] = []

    async def one_user(index: int) -> None:
        new = await store.create_user(now_ms=NOW_MS(), token_ttl_ms=3_600_000)
        tokens = [new.token.token] + [
            (await store.create_token(user_id=new.user_id, now_ms=NOW_MS(), token_ttl_ms=3_600_000)).token
            for _ in range(devices - 1)
        ]
        for d, token in enumerate(tokens):
            key = crypto.SigningKey.generate()
            device_name = f"{name} {index}.{d}"
            record = await store.enroll(
                Enrollment(
                    token_hash=crypto.hash_token(crypto.b64decode(token, crypto.TOKEN_BYTES) or b""),
                    public_key=key.public_key,
                    name=device_name,
                    name_key=device_name_key(device_name),
                    max_devices=max(20, devices),
                    now_ms=NOW_MS(),
                )
            )
            out.append({"user_id": new.user_id, "device_id": record.device_id, "seed": key.seed_b64})

    limiter = trio.CapacityLimiter(64)

    async def bounded(index: int) -> None:
        async with limiter:
            await one_user(index)

    async with trio.open_nursery() as nursery:
        for index in range(users):
            nursery.start_soon(bounded, index)
    return out


async def preload(store: Store, device: dict[str, str], stream: str, count: int) -> None:
    """``count`` events on ``stream`` by ``device``, appended with group commit."""
    body = b'{"pad":"' + b"x" * 64 + b'"}'
    next_id = iter(range(count))
    far = NOW_MS() + 86_400_000

    async def worker() -> None:
        for n in next_id:
            await store.append(
                AppendRequest(
                    user_id=device["user_id"],
                    device_id=device["device_id"],
                    id=f"p{n}",
                    stream=stream,
                    ts=NOW_MS(),
                    expires_at=far,
                    expect_seq=None,
                    body=body,
                    received_at=NOW_MS(),
                    max_streams=10_000,
                    max_stored_bytes=1 << 40,
                    clock_skew_ms=300_000,
                )
            )

    async with trio.open_nursery() as nursery:
        for _ in range(64):
            nursery.start_soon(worker)


# --- running the load generator --------------------------------------------------------------------------


def bucket_middle_us(index: int, fine_us: int, fine: int) -> float:
    """The middle of a latency bucket of loadgen.js (fine buckets, then eight per power of two)."""
    if index < fine:
        return (index + 0.5) * fine_us
    return fine * fine_us * 2 ** ((index - fine + 0.5) / 8)


def merge_histograms(parts: list[dict[str, Any]]) -> dict[str, float]:
    counts: dict[int, int] = {}
    total = 0
    worst = 0.0
    fine_us, fine = 10, 1000
    for part in parts:
        fine_us, fine = part["fine_us"], part["fine"]
        worst = max(worst, part["max_us"])
        for index, n in part["counts"].items():
            counts[int(index)] = counts.get(int(index), 0) + n
            total += n
    if not total:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}

    def quantile(q: float) -> float:
        seen = 0
        for index in sorted(counts):
            seen += counts[index]
            if seen >= q * total:
                return min(bucket_middle_us(index, fine_us, fine), worst) / 1000
        return worst / 1000

    return {
        "p50_ms": round(quantile(0.5), 3),
        "p99_ms": round(quantile(0.99), 3),
        "max_ms": round(worst / 1000, 3),
    }


async def run_loadgen(
    tmp: Path, devices: list[dict[str, str]], procs: int, phase: dict[str, Any], server_pid: int
) -> dict[str, Any]:
    """Run ``phase`` over ``procs`` Node processes sharing ``devices``; merged results and CPU use."""
    lead_s = 2.0 + len(devices) / 400  # time for every process to connect its devices first
    start_at = int((time.time() + lead_s) * 1000)
    slices = [devices[i::procs] for i in range(procs)]
    processes = []
    for index, part in enumerate(slices):
        if not part:
            continue
        config = tmp / f"load-{phase['phase']}-{index}.json"
        config.write_text(json.dumps({**phase, "devices": part, "start_at": start_at}))
        processes.append(
            await trio.lowlevel.open_process(
                ["node", str(HERE / "loadgen.js"), str(config)],
                stdout=subprocess.PIPE,
                preexec_fn=pin(LOAD_CPU),
            )
        )
    server_cpu_at_start: list[float] = []

    async def mark_start() -> None:
        await trio.sleep(max(0.0, start_at / 1000 - time.time()))
        server_cpu_at_start.append(cpu_s(server_pid))

    results: list[dict[str, Any]] = []

    async def collect(process: trio.Process) -> None:
        assert process.stdout is not None
        data = b""
        async for chunk in process.stdout:
            data += chunk
        await process.wait()
        for line in data.decode().splitlines():
            parsed = json.loads(line)
            if "ready" not in parsed:
                results.append(parsed)
        if process.returncode != 0:
            raise RuntimeError(f"the load generator failed (exit {process.returncode})")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(mark_start)
        for process in processes:
            nursery.start_soon(collect, process)
    server_cpu = cpu_s(server_pid) - (server_cpu_at_start[0] if server_cpu_at_start else 0.0)
    seconds = max((r.get("seconds") or phase.get("seconds") or 1) for r in results)
    load_cpu = sum(r.get("cpu_s", 0.0) for r in results)
    merged: dict[str, Any] = {
        "seconds": seconds,
        "acks_per_s": round(sum(r.get("acks", 0) for r in results) / seconds),
        "deliveries_per_s": round(sum(r.get("deliveries", 0) for r in results) / seconds),
        "publish_to_ack": merge_histograms([r["ack"] for r in results if "ack" in r]),
        "publish_to_delivery": merge_histograms([r["delivery"] for r in results if "delivery" in r]),
        "server_cpu_share": round(server_cpu / seconds, 2),
        "load_cpu_share": round(load_cpu / seconds, 2),
        "load_saturated": load_cpu / seconds > 0.9,
        "errors": {k: v for r in results for k, v in r.get("errors", {}).items()},
    }
    if phase["phase"] == "handshakes":
        merged["handshakes_per_s"] = round(sum(r["handshakes"] for r in results) / phase["seconds"])
    if phase["phase"] == "replay":
        merged["replay_events_per_s"] = round(results[0]["replayed"] / results[0]["replay_s"])
        merged["replayed"] = results[0]["replayed"]
    return merged


# --- servers ---------------------------------------------------------------------------------------------


async def start_relay(data_dir: Path, env: dict[str, str], port: int, workers: int = 1) -> trio.Process:
    log = (data_dir.parent / "serve.log").open("wb")
    command = [sys.executable, "-m", "relay", "serve", "--port", str(port)]
    if workers > 1:
        command += ["--workers", str(workers)]
    process = await trio.lowlevel.open_process(
        command,
        env=env,
        stdout=log,
        stderr=log,
        # One worker: CPU 0, beside the load generator's CPU 1. More: every CPU (shared with it).
        preexec_fn=pin(SERVER_CPU) if workers == 1 else None,
    )
    await wait_listening(port, process)
    return process


async def start_reference(port: int) -> trio.Process:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "relaybench.reference", "--port", str(port)],
        env=env,
        preexec_fn=pin(SERVER_CPU),
    )
    await wait_listening(port, process)
    return process


async def wait_listening(port: int, process: trio.Process) -> None:
    with trio.fail_after(60):
        while True:
            if process.poll() is not None:
                raise RuntimeError("the server exited before it listened")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.aclose()
                return
            except OSError:
                await trio.sleep(0.05)


async def stop(process: trio.Process) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(20):
            await process.wait()
        if process.poll() is None:
            process.kill()


# --- the run ---------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from relay.app import open_default_store
    from relay.config import Settings

    if shutil.which("node") is None:
        raise SystemExit("node is needed for the load generator (Debian: apt install nodejs)")
    figures: dict[str, Any] = {
        "workload": {"users": args.users, "devices": args.devices, "window": args.window}
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp_text:
        tmp = Path(tmp_text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(
            RELAY_DATA_DIR=str(tmp / "data"),
            RELAY_LOG_LEVEL="warning",
            RELAY_HANDSHAKE_RATE="100000",
            RELAY_HANDSHAKE_BURST="100000",
            RELAY_PUBLISH_RATE="100000",
            RELAY_PUBLISH_BURST="100000",
        )
        if args.database_url:
            env["RELAY_DATABASE_URL"] = args.database_url
        if args.redis_url:
            env["RELAY_REDIS_URL"] = args.redis_url
        if not args.fast_send:
            env["RELAY_FAST_SEND"] = "off"
        figures["workload"].update(
            workers=args.workers,
            fast_send=args.fast_send,
            store="postgresql" if args.database_url else "sqlite",
            bus="redis" if args.redis_url else "in-process",
        )
        settings = Settings.from_env(env)
        store = await open_default_store(settings)
        await store.migrate()
        secrets = await store.load_or_create_secrets()
        server_key = crypto.SigningKey(secrets.signing_seed).public_key_b64
        print("enrolling devices…", file=sys.stderr)
        devices = await populate(store, args.users, args.devices, name="bench")
        idle_devices = await populate(store, max(1, args.idle // 4), 4, name="idle") if args.idle else []
        if args.replay:
            print(f"preloading {args.replay} events for the replay…", file=sys.stderr)
            replayer = (await populate(store, 1, 1, name="replay"))[0]
            await preload(store, replayer, "history", args.replay)
        await store.close()

        port = free_port()
        relay_process = await start_relay(tmp / "data", env, port, args.workers)
        url = f"ws://127.0.0.1:{port}/v1/ws"
        base = {"mode": "relay", "url": url, "server_key": server_key}
        try:
            print("saturation…", file=sys.stderr)
            figures["saturation"] = await run_loadgen(
                tmp,
                devices,
                args.procs,
                {**base, "phase": "saturate", "seconds": args.seconds, "window": args.window},
                relay_process.pid,
            )
            print("fixed rate…", file=sys.stderr)
            per_device = args.rate / len(devices)
            figures["fixed_rate"] = await run_loadgen(
                tmp,
                devices,
                args.procs,
                {**base, "phase": "rate", "seconds": args.seconds, "rate_per_device": per_device},
                relay_process.pid,
            )
            figures["fixed_rate"]["rate"] = args.rate
            if idle_devices:
                print(f"{len(idle_devices)} idle sessions…", file=sys.stderr)
                before = rss_kb(relay_process.pid)
                async with trio.open_nursery() as nursery:
                    hold = 8 + len(idle_devices) / 300
                    nursery.start_soon(
                        run_loadgen,
                        tmp,
                        idle_devices,
                        args.procs,
                        {**base, "phase": "idle", "seconds": hold},
                        relay_process.pid,
                    )
                    await trio.sleep(2 + len(idle_devices) / 400 + hold * 0.6)
                    during = rss_kb(relay_process.pid)
                figures["idle"] = {
                    "sessions": len(idle_devices),
                    "kb_per_session": round((during - before) / len(idle_devices), 1),
                }
            if args.replay:
                print("replay…", file=sys.stderr)
                figures["replay"] = await run_loadgen(
                    tmp,
                    [replayer],
                    1,
                    {**base, "phase": "replay", "stream": "history", "seconds": 600},
                    relay_process.pid,
                )
            print("handshakes…", file=sys.stderr)
            figures["handshakes"] = await run_loadgen(
                tmp,
                devices,
                args.procs,
                # at most one handshake per device at a time: a second session of a device replaces the first
                {**base, "phase": "handshakes", "seconds": 5, "concurrency": min(16, len(devices))},
                relay_process.pid,
            )
            figures["server_rss_mb"] = round(rss_kb(relay_process.pid) / 1024, 1)
        finally:
            await stop(relay_process)

        print("reference…", file=sys.stderr)
        ref_port = free_port()
        reference = await start_reference(ref_port)
        try:
            figures["reference"] = await run_loadgen(
                tmp,
                devices,
                args.procs,
                {
                    "mode": "reference",
                    "url": f"ws://127.0.0.1:{ref_port}/",
                    "phase": "saturate",
                    "seconds": args.seconds,
                    "window": args.window,
                },
                reference.pid,
            )
        finally:
            await stop(reference)
    relay_rate = figures["saturation"]["deliveries_per_s"]
    reference_rate = figures["reference"]["deliveries_per_s"] or 1
    figures["relay_over_reference"] = round(relay_rate / reference_rate, 2)
    return figures


def table(figures: dict[str, Any]) -> str:
    s, f, r = figures["saturation"], figures["fixed_rate"], figures["reference"]
    w = figures["workload"]
    rows = [
        (
            "workload",
            f"{w['users']} x {w['devices']}, window {w['window']}",
            f"{w.get('store')}, {w.get('bus')} bus, {w.get('workers')} worker(s),"
            f" fast send {'on' if w.get('fast_send') else 'off'}",
        ),
        ("deliveries/s at saturation", f"{s['deliveries_per_s']:,}", f"reference {r['deliveries_per_s']:,}"),
        ("relay / reference", f"{figures['relay_over_reference']}x", ""),
        ("acks/s at saturation", f"{s['acks_per_s']:,}", ""),
        ("publish→ack p50/p99/max (saturation)", _lat(s["publish_to_ack"]), ""),
        ("publish→delivery p50/p99/max (saturation)", _lat(s["publish_to_delivery"]), ""),
        (f"publish→delivery at {f['rate']}/s", _lat(f["publish_to_delivery"]), ""),
        (f"publish→ack at {f['rate']}/s", _lat(f["publish_to_ack"]), ""),
        (
            "server CPU share (saturation)",
            f"{s['server_cpu_share']}",
            f"load gen {s['load_cpu_share']}" + (" SATURATED" if s["load_saturated"] else ""),
        ),
        ("server RSS", f"{figures.get('server_rss_mb')} MB", ""),
    ]
    if "idle" in figures:
        rows.append(
            (
                "KB per idle session",
                f"{figures['idle']['kb_per_session']}",
                f"{figures['idle']['sessions']} sessions",
            )
        )
    if "replay" in figures:
        rows.append(
            (
                "replay events/s",
                f"{figures['replay']['replay_events_per_s']:,}",
                f"{figures['replay']['replayed']:,} events",
            )
        )
    rows.append(("handshakes/s", f"{figures['handshakes']['handshakes_per_s']:,}", ""))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a.ljust(width)}  {b:>22}  {c}" for a, b, c in rows)


def _lat(h: dict[str, float]) -> str:
    return f"{h['p50_ms']}/{h['p99_ms']}/{h['max_ms']} ms"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=250)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--replay", type=int, default=100_000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--workers", type=int, default=1, help="relay serve --workers (needs --redis-url)")
    parser.add_argument(
        "--fast-send", choices=["on", "off"], default="on", help="RELAY_FAST_SEND for the server"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the temporary data dir goes (its disk matters)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    arguments = parser.parse_args()
    arguments.fast_send = arguments.fast_send == "on"
    results = trio.run(main, arguments)
    print(table(results))
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")
