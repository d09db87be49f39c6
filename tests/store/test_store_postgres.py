"""What the PostgreSQL store promises beyond the contract: migrations under concurrency, secrets shared
by every node, driver errors, real cancellation, group commit, and seqs across nodes. Two stores on one
schema stand for two nodes. Real server, real threads, real clock, every test capped."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from postgres_helpers import connect, postgres_schema, schema_of, wait_for_lock_waiters
from psycopg import conninfo as pg_conninfo
from store_helpers import CAP_S, NOW, SKEW_MS, append_request, new_device

from relay.errors import StoreUnavailable
from relay.store.base import DeviceRecord
from relay.store.postgres import PostgresStore
from relay.store.postgres_migrations import (
    ADVISORY_KEYS,
    DEFAULT_MIGRATIONS_DIR,
    HOUSEKEEPING_LOCK,
    PURGE_LOCK,
)
from relay.store.postgres_pool import PgConnection

POOL = 4


@pytest.fixture
async def schema_url(postgres_url: str) -> AsyncIterator[str]:
    async with postgres_schema(postgres_url) as url:
        yield url


@pytest.fixture
async def pg_store(schema_url: str) -> AsyncIterator[PostgresStore]:
    with trio.fail_after(CAP_S):
        store = await PostgresStore.open(schema_url, pool_size=POOL)
        await store.migrate()
    try:
        yield store
    finally:
        with trio.fail_after(CAP_S):
            await store.close()


async def _query(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    def run() -> list[tuple[Any, ...]]:
        with connect(url) as conn:
            cur = conn.execute(sql.encode(), params)
            return cur.fetchall() if cur.description else []

    return await trio.to_thread.run_sync(run)


# --- migrations ----------------------------------------------------------------------------------

#: The migrations shipped with relay, in order.
SHIPPED = [path.stem for path in sorted(DEFAULT_MIGRATIONS_DIR.glob("*.sql"))]


def _schema_dir(tmp_path: Path, *extra: tuple[str, str]) -> Path:
    directory = tmp_path / "schema"
    directory.mkdir(exist_ok=True)
    for path in DEFAULT_MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, directory / path.name)
    for name, text in extra:
        (directory / name).write_text(text)
    return directory


async def test_migrations_are_applied_once_and_recorded(schema_url: str) -> None:
    with trio.fail_after(CAP_S):
        store = await PostgresStore.open(schema_url, pool_size=POOL)
        try:
            status = await store.migration_status()
            assert (status.applied, status.pending) == ([], SHIPPED)
            applied = await store.migrate()
            assert applied == SHIPPED
            assert await store.migrate() == []
            after = await store.migration_status()
            assert (after.applied, after.pending) == (applied, [])
        finally:
            await store.close()
        rows = await _query(schema_url, "SELECT name, length(sha256), applied_at > 0 FROM schema_migrations")
        assert sorted(rows) == [(name, 64, True) for name in applied]


async def test_stores_migrating_one_schema_at_once_apply_each_migration_once(
    schema_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(CAP_S):
        extra = ("900-extra.sql", "-- 900: a test migration\nCREATE TABLE extra (x BIGINT);\n")
        schema = _schema_dir(tmp_path, extra)
        stores = [await PostgresStore.open(schema_url, pool_size=2, migrations_dir=schema) for _ in range(3)]
        results: list[list[str]] = []

        async def migrate(store: PostgresStore) -> None:
            results.append(await store.migrate())

        try:
            async with trio.open_nursery() as nursery:
                for store in stores:
                    nursery.start_soon(migrate, store)
            assert sorted(name for applied in results for name in applied) == [*SHIPPED, "900-extra"]
            for store in stores:
                status = await store.migration_status()
                assert (status.applied, status.pending) == ([*SHIPPED, "900-extra"], [])
        finally:
            for store in stores:
                await store.close()


async def test_a_failing_migration_leaves_nothing_of_itself(schema_url: str, tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        broken = ("900-broken.sql", "-- 900: fails halfway\nCREATE TABLE half (x BIGINT);\nNOT SQL AT ALL;\n")
        store = await PostgresStore.open(
            schema_url, pool_size=POOL, migrations_dir=_schema_dir(tmp_path, broken)
        )
        try:
            with pytest.raises(StoreUnavailable) as caught:
                await store.migrate()
            assert isinstance(caught.value.__cause__, psycopg.errors.SyntaxError)
            status = await store.migration_status()
            assert (status.applied, status.pending) == (SHIPPED, ["900-broken"])
            tables = {
                name
                for (name,) in await _query(
                    schema_url,
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                    (schema_of(schema_url),),
                )
            }
            assert "half" not in tables
            assert "events" in tables
            await new_device(store)  # the store still works
        finally:
            await store.close()


async def test_an_edited_or_unknown_migration_is_refused(schema_url: str, tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        schema = _schema_dir(tmp_path)
        store = await PostgresStore.open(schema_url, pool_size=POOL, migrations_dir=schema)
        await store.migrate()
        await store.close()

        initial = schema / "001-initial.sql"
        initial.write_text(initial.read_text() + "\n-- edited\n")
        store = await PostgresStore.open(schema_url, pool_size=POOL, migrations_dir=schema)
        try:
            with pytest.raises(StoreUnavailable, match="edited"):
                await store.migrate()
        finally:
            await store.close()

        initial.unlink()
        (schema / "000-other.sql").write_text("-- 000: unrelated\nCREATE TABLE other (x BIGINT);\n")
        store = await PostgresStore.open(schema_url, pool_size=POOL, migrations_dir=schema)
        try:
            with pytest.raises(StoreUnavailable, match="unknown to this relay"):
                await store.migrate()
        finally:
            await store.close()


async def test_bodies_are_stored_as_their_canonical_text(pg_store: PostgresStore, schema_url: str) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(pg_store)
        body = '{"a":[1,2.5,"é\\u0000"],"b":null}'
        await pg_store.append(append_request(device, "e1", body=body.encode()))
        (kind,) = await _query(
            schema_url,
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = 'events' AND column_name = 'body'",
            (schema_of(schema_url),),
        )
        assert kind == ("text",)
        assert await _query(schema_url, "SELECT body, body_size FROM events") == [(body, len(body.encode()))]


# --- secrets -------------------------------------------------------------------------------------


async def test_every_store_on_one_database_gets_the_same_secrets(schema_url: str) -> None:
    with trio.fail_after(CAP_S):
        first = await PostgresStore.open(schema_url, pool_size=2)
        await first.migrate()
        stores = [first] + [await PostgresStore.open(schema_url, pool_size=2) for _ in range(3)]
        results: list[object] = []

        async def load(store: PostgresStore) -> None:
            results.append(await store.load_or_create_secrets())

        try:
            async with trio.open_nursery() as nursery:
                for store in stores:
                    nursery.start_soon(load, store)
        finally:
            for store in stores:
                await store.close()
        assert len(results) == 4
        assert all(r == results[0] for r in results)
        rows = await _query(schema_url, "SELECT name, length(secret) FROM server_secrets ORDER BY name")
        assert rows == [("server_key", 32), ("token_secret", 32)]

        later = await PostgresStore.open(schema_url, pool_size=1)
        try:
            assert await later.load_or_create_secrets() == results[0]
        finally:
            await later.close()


async def test_a_secret_of_the_wrong_size_stops_the_store(pg_store: PostgresStore, schema_url: str) -> None:
    with trio.fail_after(CAP_S):
        await _query(schema_url, "INSERT INTO server_secrets (name, secret) VALUES ('server_key', 'short')")
        with pytest.raises(StoreUnavailable, match="'server_key' in the database is not 32 bytes"):
            await pg_store.load_or_create_secrets()
        assert await _query(schema_url, "SELECT secret FROM server_secrets WHERE name = 'server_key'") == [
            (b"short",)
        ]


# --- driver errors -------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_server_that_cannot_be_reached_is_store_unavailable_at_once(postgres_url: str) -> None:
    with trio.fail_after(CAP_S):
        url = pg_conninfo.make_conninfo(postgres_url, host="127.0.0.1", port=str(_closed_port()))
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="cannot connect to PostgreSQL") as caught:
            await PostgresStore.open(url)
        assert isinstance(caught.value.__cause__, psycopg.OperationalError)
        assert time.monotonic() - started < 5


async def test_driver_errors_are_store_unavailable(schema_url: str) -> None:
    with trio.fail_after(CAP_S):
        store = await PostgresStore.open(schema_url, pool_size=POOL)  # never migrated: no tables
        try:
            with pytest.raises(StoreUnavailable, match="create_user") as caught:
                await store.create_user(now_ms=NOW, token_ttl_ms=1000)
            assert isinstance(caught.value.__cause__, psycopg.errors.UndefinedTable)
            with pytest.raises(StoreUnavailable) as caught:
                await store.list_users()
            assert isinstance(caught.value.__cause__, psycopg.errors.UndefinedTable)
            ghost = DeviceRecord(device_id="d", user_id="u", public_key=b"k", name="n", created_at=NOW)
            with pytest.raises(StoreUnavailable) as caught:
                await store.append(append_request(ghost, "e1"))
            assert isinstance(caught.value.__cause__, psycopg.errors.UndefinedTable)
        finally:
            await store.close()


async def test_lost_connections_are_store_unavailable_and_the_pool_recovers(postgres_url: str) -> None:
    with trio.fail_after(CAP_S):
        async with postgres_schema(postgres_url) as url:
            tagged = pg_conninfo.make_conninfo(url, application_name=f"relay-{schema_of(url)}")
            store = await PostgresStore.open(tagged, pool_size=POOL)
            try:
                await store.migrate()
                device = await new_device(store)
                killed = await _query(
                    url,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                    (f"relay-{schema_of(url)}",),
                )
                assert len(killed) == POOL
                outcomes: list[object] = []
                for _ in range(POOL + 2):
                    try:
                        outcomes.append(await store.lookup_device(device.device_id))
                    except StoreUnavailable as exc:
                        outcomes.append(exc.__cause__)
                # The first call on a dead connection fails; the pool then tests the others and
                # replaces them, so the calls that follow succeed.
                assert isinstance(outcomes[0], psycopg.OperationalError)
                assert outcomes[-POOL:] == [device] * POOL
                assert (await store.append(append_request(device, "e1"))).event.seq == 1
            finally:
                await store.close()


async def test_close_refuses_later_calls(schema_url: str) -> None:
    with trio.fail_after(CAP_S):
        store = await PostgresStore.open(schema_url, pool_size=POOL)
        await store.migrate()
        device = await new_device(store)
        await store.close()
        with pytest.raises(StoreUnavailable):
            await store.create_user(now_ms=NOW, token_ttl_ms=1000)
        with pytest.raises(StoreUnavailable):
            await store.append(append_request(device, "e1"))
        with pytest.raises(StoreUnavailable):
            await store.list_users()


# --- cancellation --------------------------------------------------------------------------------


def _sleep(conn: PgConnection) -> object:
    return conn.execute("SELECT pg_sleep(30)").fetchone()


async def _sleeping_backends(url: str) -> int:
    rows = await _query(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(30)'",
    )
    return int(rows[0][0])


async def test_a_cancelled_read_cancels_its_query_and_the_pool_still_works(
    pg_store: PostgresStore, schema_url: str
) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(pg_store)
        for _ in range(POOL + 2):  # more than the pool holds: every connection comes back
            started = time.monotonic()
            with trio.move_on_after(0.2) as scope:
                await pg_store._pool.run("sleep", _sleep, transaction=False)
            assert scope.cancelled_caught
            assert time.monotonic() - started < 2
            assert await _sleeping_backends(schema_url) == 0
        assert await pg_store.lookup_device(device.device_id) == device
        assert pg_store._pool.statistics().borrowed_tokens == 0


async def test_a_cancelled_write_is_rolled_back(pg_store: PostgresStore, schema_url: str) -> None:
    with trio.fail_after(CAP_S):

        def insert_then_sleep(conn: PgConnection) -> None:
            conn.execute("INSERT INTO users (user_id, created_at) VALUES ('half-written', 0)")
            _sleep(conn)

        with trio.move_on_after(0.2) as scope:
            await pg_store._writer.run("insert_then_sleep", insert_then_sleep)
        assert scope.cancelled_caught
        assert "half-written" not in await pg_store.list_users()
        assert await _query(schema_url, "SELECT count(*) FROM users") == [(0,)]
        assert pg_store.statistics().write_queue_depth == 0


async def _hold_user_lock(url: str, user_id: str, locked: trio.Event, release: trio.Event) -> None:
    """Lock the user's row in a transaction of another connection until ``release`` is set."""
    conn = await trio.to_thread.run_sync(connect, url)
    try:
        await trio.to_thread.run_sync(conn.execute, b"BEGIN")
        await trio.to_thread.run_sync(
            lambda: conn.execute("SELECT 1 FROM users WHERE user_id = %s FOR UPDATE", (user_id,))
        )
        locked.set()
        await release.wait()
        await trio.to_thread.run_sync(conn.execute, b"COMMIT")
    finally:
        await trio.to_thread.run_sync(conn.close)


async def test_an_append_abandoned_while_its_group_runs_commits_as_a_whole(
    pg_store: PostgresStore, schema_url: str
) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(pg_store)
        locked, release = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_hold_user_lock, schema_url, device.user_id, locked, release)
            await locked.wait()
            with trio.move_on_after(CAP_S) as scope:
                async with trio.open_nursery() as inner:
                    inner.start_soon(pg_store.append, append_request(device, "e1"))
                    await wait_for_lock_waiters(schema_url)  # its group waits for the user's row
                    scope.cancel()
            release.set()
        retry = await pg_store.append(append_request(device, "e1"))
        assert (retry.duplicate, retry.event.seq) == (True, 1)
        assert pg_store.statistics().write_queue_depth == 0


async def test_an_append_abandoned_before_a_writer_took_it_is_dropped(schema_url: str) -> None:
    with trio.fail_after(CAP_S):
        store = await PostgresStore.open(schema_url, pool_size=POOL, writers=1)
        try:
            await store.migrate()
            blocked, other = await new_device(store), await new_device(store)
            locked, release = trio.Event(), trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_hold_user_lock, schema_url, blocked.user_id, locked, release)
                await locked.wait()
                nursery.start_soon(store.append, append_request(blocked, "b1"))
                await wait_for_lock_waiters(schema_url)  # the only writer is busy with it
                with trio.move_on_after(0.1) as scope:
                    await store.append(append_request(other, "o1"))
                assert scope.cancelled_caught
                release.set()
            assert await store.stream_head(blocked.user_id, "notes") == 1
            assert await store.stream_head(other.user_id, "notes") == 0
            appended = await store.append(append_request(other, "o1"))
            assert (appended.duplicate, appended.event.seq) == (False, 1)
            assert store.statistics().write_queue_depth == 0
        finally:
            await store.close()


# --- group commit and seqs across nodes ----------------------------------------------------------


async def test_concurrent_appends_share_transactions(pg_store: PostgresStore) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(pg_store, name="d0")
        devices = [first] + [await new_device(pg_store, first.user_id, name=f"d{i}") for i in (1, 2, 3)]
        before = pg_store.statistics()

        async def publish(n: int) -> None:
            await pg_store.append(append_request(devices[n % 4], f"e{n}"))

        async with trio.open_nursery() as nursery:
            for n in range(400):
                nursery.start_soon(publish, n)

        after = pg_store.statistics()
        requests = after.write_requests - before.write_requests
        transactions = after.write_transactions - before.write_transactions
        assert requests == 400
        assert transactions < requests / 4, (transactions, requests)
        assert after.write_queue_depth == 0
        assert await pg_store.stream_head(first.user_id, "notes") == 400


async def test_a_failing_append_fails_alone_and_leaves_no_gap(pg_store: PostgresStore) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(pg_store)
        before = pg_store.statistics()
        seqs: list[int] = []
        failed: list[StoreUnavailable] = []

        async def publish(n: int) -> None:
            # ts beyond BIGINT: the server refuses the write of this one append, inside its savepoint.
            request = append_request(device, f"e{n}", ts=2**63 if n == 10 else NOW)
            try:
                seqs.append((await pg_store.append(request)).event.seq)
            except StoreUnavailable as exc:
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            for n in range(21):
                nursery.start_soon(publish, n)
        assert len(failed) == 1
        assert isinstance(failed[0].__cause__, psycopg.errors.NumericValueOutOfRange)
        assert sorted(seqs) == list(range(1, 21))
        after = pg_store.statistics()
        assert after.write_transactions - before.write_transactions < 21  # it shared its group
        events = await pg_store.read_events(
            device.user_id, "notes", after=0, head=20, limit=100, now_ms=NOW, clock_skew_ms=SKEW_MS
        )
        assert [e.seq for e in events] == list(range(1, 21))
        assert "e10" not in {e.id for e in events}


async def test_two_stores_standing_for_two_nodes_assign_gapless_seqs(schema_url: str) -> None:
    with trio.fail_after(CAP_S):
        stores = [await PostgresStore.open(schema_url, pool_size=POOL) for _ in range(2)]
        try:
            await stores[0].migrate()
            first = await new_device(stores[0], name="d0")
            devices = [first] + [await new_device(stores[1], first.user_id, name=f"d{i}") for i in (1, 2, 3)]
            seqs: dict[str, list[int]] = {"a": [], "b": []}

            async def publish(n: int) -> None:
                stream = "ab"[n % 2]
                request = append_request(devices[n % 4], f"e{n}", stream=stream)
                seqs[stream].append((await stores[(n // 2) % 2].append(request)).event.seq)

            async with trio.open_nursery() as nursery:
                for n in range(400):
                    nursery.start_soon(publish, n)
            for stream in "ab":
                assert sorted(seqs[stream]) == list(range(1, 201))
                events = await stores[1].read_events(
                    first.user_id, stream, after=0, head=200, limit=1000, now_ms=NOW, clock_skew_ms=SKEW_MS
                )
                assert [e.seq for e in events] == list(range(1, 201))
        finally:
            for store in stores:
                await store.close()


async def test_groups_of_many_users_on_two_nodes_never_deadlock(schema_url: str) -> None:
    with trio.fail_after(CAP_S):
        stores = [await PostgresStore.open(schema_url, pool_size=POOL, writers=3) for _ in range(2)]
        try:
            await stores[0].migrate()
            devices = [await new_device(stores[0], name=f"d{i}") for i in range(6)]  # six users
            appended: list[int] = []

            async def publish(n: int) -> None:
                # Each node sees the users and streams in another order: only the lock order keeps
                # their groups from waiting for each other in a circle.
                order = n if n % 2 else -n
                device = devices[order % 6]
                request = append_request(device, f"e{n}", stream=f"s{(n * 7) % 5}")
                appended.append((await stores[n % 2].append(request)).event.seq)

            async with trio.open_nursery() as nursery:
                for n in range(600):
                    nursery.start_soon(publish, n)
            assert len(appended) == 600
            heads = 0
            for device in devices:
                for listed in await stores[1].list_streams(
                    device.user_id, after=None, limit=10, now_ms=NOW, clock_skew_ms=SKEW_MS
                ):
                    heads += listed[1]
            assert heads == 600
        finally:
            for store in stores:
                await store.close()


# --- purging, one node at a time -----------------------------------------------------------------


async def _hold_advisory_lock(url: str, key: int) -> PgConnection:
    """Another node's connection, in a transaction holding relay's advisory lock ``key``."""

    def hold() -> PgConnection:
        conn = connect(url)
        conn.execute(b"BEGIN")
        conn.execute(f"SELECT pg_advisory_xact_lock({ADVISORY_KEYS})".encode(), (key,))
        return conn

    return await trio.to_thread.run_sync(hold)


async def test_the_purge_runs_on_one_node_at_a_time(pg_store: PostgresStore, schema_url: str) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(pg_store)
        for i in range(3):
            await pg_store.append(append_request(device, f"e{i}", expires_at=NOW + 1))
        later = NOW + 1 + SKEW_MS + 1
        other_node = await _hold_advisory_lock(schema_url, PURGE_LOCK)
        try:
            # Another node is purging: this one skips its turn at once rather than wait.
            assert await pg_store.purge_expired(now_ms=later, clock_skew_ms=SKEW_MS, batch=10) == 0
            await trio.to_thread.run_sync(other_node.execute, b"COMMIT")
            assert await pg_store.purge_expired(now_ms=later, clock_skew_ms=SKEW_MS, batch=2) == 2
            assert await pg_store.purge_expired(now_ms=later, clock_skew_ms=SKEW_MS, batch=2) == 1
        finally:
            await trio.to_thread.run_sync(other_node.close)
        assert await pg_store.stream_head(device.user_id, "notes") == 3


async def test_housekeeping_runs_on_one_node_at_a_time(pg_store: PostgresStore, schema_url: str) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(pg_store)
        for i in range(3):
            await pg_store.remember_nonce(device.device_id, f"n{i}", expires_at=NOW, now_ms=NOW)
        other_node = await _hold_advisory_lock(schema_url, HOUSEKEEPING_LOCK)
        try:
            assert await pg_store.purge_housekeeping(now_ms=NOW + 1, batch=10) == 0
            # The purge of events is another lock: it does not wait for housekeeping.
            assert await pg_store.purge_expired(now_ms=NOW, clock_skew_ms=SKEW_MS, batch=10) == 0
            await trio.to_thread.run_sync(other_node.execute, b"COMMIT")
            assert await pg_store.purge_housekeeping(now_ms=NOW + 1, batch=10) == 3
        finally:
            await trio.to_thread.run_sync(other_node.close)
