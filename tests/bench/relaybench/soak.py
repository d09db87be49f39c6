"""The soak test (``bash scripts/soak``): many sessions under steady traffic for minutes, on loopback.

    bash scripts/soak [--sessions 5000] [--minutes 10] [--rate 1000] [--procs 4] [--json FILE]

``--sessions`` devices (four per user) stay connected to one ``relay serve`` (SQLite, durable acks) for
``--minutes``, publishing ``--rate`` events per second in all, each relayed to the user's other three
devices. Every minute it prints the server's RSS and open file descriptors, acks and deliveries per
second, and publish→delivery p50/p99; at the end, whether memory stayed flat after the first minute's
warm-up (growth under 10 % and under 50 MB), whether the descriptors stayed flat (no leak: within 1 %),
and whether p99 stayed stable (no minute over three times the median minute). Exit status 1 if not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from relay import crypto

from .__main__ import HERE, LOAD_CPU, free_port, merge_histograms, pin, populate, rss_kb, start_relay, stop


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    from relay.app import open_default_store
    from relay.config import Settings

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp_text:
        tmp = Path(tmp_text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(
            RELAY_DATA_DIR=str(tmp / "data"),
            RELAY_LOG_LEVEL="warning",
            RELAY_HANDSHAKE_RATE="100000",
            RELAY_HANDSHAKE_BURST="100000",
        )
        store = await open_default_store(Settings.from_env(env))
        await store.migrate()
        server_key = crypto.SigningKey((await store.load_or_create_secrets()).signing_seed).public_key_b64
        print(f"enrolling {args.sessions} devices…", file=sys.stderr)
        devices = await populate(store, max(1, args.sessions // 4), 4, name="soak")
        await store.close()
        port = free_port()
        relay = await start_relay(tmp / "data", env, port)
        seconds = args.minutes * 60
        start_at = int((time.time() + 3 + len(devices) / 300) * 1000)
        phase = {
            "mode": "relay",
            "url": f"ws://127.0.0.1:{port}/v1/ws",
            "server_key": server_key,
            "phase": "rate",
            "seconds": seconds,
            "rate_per_device": args.rate / len(devices),
            "report_every": 60,
            "start_at": start_at,
        }
        minutes: dict[int, list[dict[str, Any]]] = {}
        samples: list[dict[str, Any]] = []
        try:
            async with trio.open_nursery() as nursery:
                for index in range(args.procs):
                    part = devices[index :: args.procs]
                    config = tmp / f"soak-{index}.json"
                    config.write_text(json.dumps({**phase, "devices": part}))
                    nursery.start_soon(_run_part, config, minutes)
                await trio.sleep(max(0.0, start_at / 1000 - time.time()))
                for minute in range(args.minutes):
                    await trio.sleep(60)
                    sample = {
                        "minute": minute + 1,
                        "rss_mb": round(rss_kb(relay.pid) / 1024, 1),
                        "fds": open_fds(relay.pid),
                    }
                    samples.append(sample)
                    print(json.dumps(sample), file=sys.stderr)
        finally:
            await stop(relay)
    rows = []
    for minute, parts in sorted(minutes.items()):
        delivery = merge_histograms([p["delivery"] for p in parts])
        rows.append(
            {
                "minute": minute + 1,
                "acks_per_s": round(sum(p["acks"] for p in parts) / 60),
                "deliveries_per_s": round(sum(p["deliveries"] for p in parts) / 60),
                "delivery_p50_ms": delivery["p50_ms"],
                "delivery_p99_ms": delivery["p99_ms"],
                "closed_sessions": sum(p.get("closed", 0) for p in parts),
                "errors": {k: v for p in parts for k, v in p.get("errors", {}).items()},
            }
        )
    for row, sample in zip(rows, samples, strict=False):
        row.update(sample)
    return {"sessions": len(devices), "rate": args.rate, "minutes": rows, "verdict": verdict(rows)}


async def _run_part(config: Path, minutes: dict[int, list[dict[str, Any]]]) -> None:
    process = await trio.lowlevel.open_process(
        ["node", str(HERE / "loadgen.js"), str(config)],
        stdout=subprocess.PIPE,
        preexec_fn=pin(LOAD_CPU),
    )
    assert process.stdout is not None
    buffer = b""
    async for chunk in process.stdout:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            parsed = json.loads(line)
            if "interval" in parsed:
                minutes.setdefault(parsed["interval"], []).append(parsed)
    await process.wait()


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Flat memory after warm-up, no fd leak, stable p99 (see the module docstring)."""
    if len(rows) < 2:
        return {"ok": True, "note": "too short to judge"}
    after = rows[1:]
    rss = [r["rss_mb"] for r in after if "rss_mb" in r]
    fds = [r["fds"] for r in after if "fds" in r]
    p99 = sorted(r["delivery_p99_ms"] for r in rows)
    growth_mb = rss[-1] - rss[0] if rss else 0.0
    memory_flat = not rss or (growth_mb < 50 and growth_mb <= 0.1 * rss[0])
    fds_flat = not fds or abs(fds[-1] - fds[0]) <= max(5, 0.01 * fds[0])
    median = p99[len(p99) // 2]
    p99_stable = max(p99) <= 3 * median
    return {
        "ok": memory_flat and fds_flat and p99_stable,
        "rss_growth_mb_after_warmup": round(growth_mb, 1),
        "memory_flat": memory_flat,
        "fds_flat": fds_flat,
        "p99_stable": p99_stable,
        "p99_median_ms": median,
        "p99_worst_ms": max(p99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = trio.run(soak, args)
    for row in results["minutes"]:
        print(json.dumps(row))
    print(json.dumps(results["verdict"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    sys.exit(0 if results["verdict"]["ok"] else 1)


if __name__ == "__main__":
    main()
