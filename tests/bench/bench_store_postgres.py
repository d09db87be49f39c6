"""Appends per second of the PostgreSQL store: group sizes against one transaction per append.

Not a test: run it by hand, against a server whose commits really reach the disk (``fsync=on``,
``synchronous_commit=on``; the test suite's throwaway server has both off, so a commit costs nothing
there but its round trips):

    .venv/bin/python tests/bench/bench_store_postgres.py --url postgresql://... [--publishers 4]
        [--users 1] [--appends 500] [--inflight 1 16] [--groups 1 16 64 256] [--writers 1 2]

Each of ``--publishers`` devices (spread over ``--users`` users, each user's devices publishing to one
shared stream of that user) publishes ``--appends`` events (about 100 bytes of body each), keeping up
to ``--inflight`` appends outstanding (1: each waits for its ack, like a client that publishes one at
a time; 64 is the protocol's max_inflight). Every combination of ``--inflight``, ``--writers`` (writer
tasks: groups committing at once) and ``--groups`` (``max_group``; 1 is one ``BEGIN … COMMIT`` per
append, i.e. no group commit) runs on a fresh schema of the database at ``--url`` (default:
``RELAY_TEST_POSTGRES_URL``), dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time

import psycopg
import trio
from psycopg import conninfo as pg_conninfo
from psycopg import sql

from relay import crypto
from relay.protocol.names import device_name_key
from relay.store.base import AppendRequest, DeviceRecord, Enrollment
from relay.store.postgres import POOL_CONNECTIONS, PostgresStore

NOW = 1_700_000_000_000
BODY = b'{"text":"' + b"x" * 88 + b'"}'


def _admin(url: str, statement: sql.Composed) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


async def _devices(store: PostgresStore, n: int, users: int) -> list[DeviceRecord]:
    devices = []
    for u in range(users):
        user = await store.create_user(now_ms=NOW, token_ttl_ms=60_000)
        mine = range(u, n, users)
        tokens = [user.token] + [
            await store.create_token(user_id=user.user_id, now_ms=NOW, token_ttl_ms=60_000)
            for _ in range(len(mine) - 1)
        ]
        for i, token in zip(mine, tokens, strict=True):
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
    url: str, *, publishers: int, users: int, appends: int, inflight: int, writers: int, max_group: int
) -> tuple[float, int, int]:
    """Appends per second, transactions and appends, for one configuration on a fresh schema."""
    schema = f"relay_bench_{secrets.token_hex(4)}"
    await trio.to_thread.run_sync(_admin, url, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        schema_url = pg_conninfo.make_conninfo(url, options=f"-c search_path={schema}")
        store = await PostgresStore.open(
            schema_url, pool_size=max(POOL_CONNECTIONS, writers + 1), writers=writers, max_group=max_group
        )
        try:
            await store.migrate()
            devices = await _devices(store, publishers, users)
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
            heads = {d.user_id: await store.stream_head(d.user_id, "bench") for d in devices}
            assert sum(heads.values()) == total, (heads, total)
            return total / elapsed, after.write_transactions - before.write_transactions, total
        finally:
            await store.close()
    finally:
        drop = sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema))
        await trio.to_thread.run_sync(_admin, url, drop)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("RELAY_TEST_POSTGRES_URL", ""))
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--users", type=int, default=1, help="users the publishers are spread over")
    parser.add_argument("--appends", type=int, default=500, help="appends per publisher")
    parser.add_argument("--inflight", type=int, nargs="+", default=[1, 16], help="outstanding appends each")
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 16, 64, 256], help="max_group values")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2], help="writer tasks")
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("--url (or RELAY_TEST_POSTGRES_URL) is required")

    with psycopg.connect(args.url) as conn:
        settings = {
            name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            for name in ("fsync", "synchronous_commit")
        }
    print(
        f"PostgreSQL store, {args.publishers} publishers ({args.users} users) x {args.appends} appends"
        f" of {len(BODY)}-byte bodies; server: "
        + ", ".join(f"{name}={value[0] if value else '?'}" for name, value in settings.items())
    )
    print(
        f"{'inflight':>8}  {'writers':>7}  {'max_group':>9}  {'appends/s':>10}"
        f"  {'transactions':>12}  {'appends/txn':>11}"
    )
    for inflight in args.inflight:
        for writers in args.writers:
            for max_group in args.groups:
                rate, transactions, total = await run_one(
                    args.url,
                    publishers=args.publishers,
                    users=args.users,
                    appends=args.appends,
                    inflight=inflight,
                    writers=writers,
                    max_group=max_group,
                )
                print(
                    f"{inflight:>8}  {writers:>7}  {max_group:>9}  {rate:>10.0f}  {transactions:>12}"
                    f"  {total / transactions:>11.1f}"
                )


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
