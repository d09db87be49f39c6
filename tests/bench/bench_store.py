"""Appends per second of the SQLite store: group commit against one transaction per append.

Not a test: run it by hand.

    .venv/bin/python tests/bench/bench_store.py [--publishers 4] [--appends 500] [--inflight 1 16]
                                                 [--dir PATH]

Each of ``--publishers`` devices publishes ``--appends`` events (about 100 bytes of body each) to one
shared stream, keeping up to ``--inflight`` appends outstanding (1: each waits for its ack, like a
client that publishes one at a time; 64 is the protocol's max_inflight). Every combination runs twice,
on a fresh database: with group commit (``max_group`` at its default) and with ``max_group=1``, one
``BEGIN IMMEDIATE … COMMIT`` (one WAL fsync, ``synchronous=FULL``) per append. The database lives in
a temporary directory under ``--dir`` (default: the system's temporary directory; put it on the disk
you care about, since on tmpfs an fsync costs nothing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import trio

from relay import crypto
from relay.protocol.names import device_name_key
from relay.store.base import AppendRequest, DeviceRecord, Enrollment
from relay.store.sqlite import SqliteStore
from relay.store.sqlite_writer import MAX_GROUP_REQUESTS

NOW = 1_700_000_000_000
BODY = b'{"text":"' + b"x" * 88 + b'"}'


async def _devices(store: SqliteStore, n: int) -> list[DeviceRecord]:
    user = await store.create_user(now_ms=NOW, token_ttl_ms=60_000)
    tokens = [user.token] + [
        await store.create_token(user_id=user.user_id, now_ms=NOW, token_ttl_ms=60_000) for _ in range(n - 1)
    ]
    devices = []
    for i, token in enumerate(tokens):
        raw = crypto.b64decode(token.token, crypto.TOKEN_BYTES)
        assert raw is not None
        name = f"device {i}"
        enrollment = Enrollment(
            token_hash=crypto.hash_token(raw),
            public_key=crypto.SigningKey.generate().public_key,
            name=name,
            name_key=device_name_key(name),
            max_devices=n,
            now_ms=NOW,
        )
        devices.append(await store.enroll(enrollment))
    return devices


async def run_one(
    directory: Path, *, publishers: int, appends: int, inflight: int, max_group: int
) -> tuple[float, int, int]:
    """Appends per second, transactions and appends, for one configuration on a fresh database."""
    store = await SqliteStore.open(directory, max_group=max_group)
    try:
        await store.migrate()
        devices = await _devices(store, publishers)
        before = store.statistics()

        async def publish(device: DeviceRecord, lane: int) -> None:
            for n in range(lane, appends, inflight):
                await store.append(
                    AppendRequest(
                        user_id=device.user_id,
                        device_id=device.device_id,
                        id=f"e{n}",
                        stream="bench",
                        ts=NOW,
                        expires_at=NOW + 86_400_000,
                        expect_seq=None,
                        body=BODY,
                        received_at=NOW,
                        max_streams=10_000,
                        max_stored_bytes=1 << 30,
                        clock_skew_ms=300_000,
                    )
                )

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for device in devices:
                for lane in range(inflight):
                    nursery.start_soon(publish, device, lane)
        elapsed = time.perf_counter() - started
        after = store.statistics()
        total = publishers * appends
        head = await store.stream_head(devices[0].user_id, "bench")
        assert head == total, (head, total)
        return total / elapsed, after.write_transactions - before.write_transactions, total
    finally:
        await store.close()


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--appends", type=int, default=500, help="appends per publisher")
    parser.add_argument("--inflight", type=int, nargs="+", default=[1, 16], help="outstanding appends each")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary database")
    args = parser.parse_args(argv)

    print(f"SQLite store, {args.publishers} publishers x {args.appends} appends of {len(BODY)}-byte bodies")
    print(f"{'inflight':>8}  {'mode':<22} {'appends/s':>10}  {'transactions':>12}  {'appends/txn':>11}")
    for inflight in args.inflight:
        for label, max_group in (
            (f"group commit ({MAX_GROUP_REQUESTS})", MAX_GROUP_REQUESTS),
            ("batch size 1", 1),
        ):
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                rate, transactions, total = await run_one(
                    Path(tmp),
                    publishers=args.publishers,
                    appends=args.appends,
                    inflight=inflight,
                    max_group=max_group,
                )
            print(
                f"{inflight:>8}  {label:<22} {rate:>10.0f}  {transactions:>12}  {total / transactions:>11.1f}"
            )


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
