"""What the SQLite store promises beyond the contract: files, durability across reopening, migrations,
secrets, group commit, and what cancellation does. Real threads, real clock, every test capped."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from store_helpers import CAP_S, NOW, SKEW_MS, append_request, new_device, token_hash

from relay import crypto
from relay.errors import StoreUnavailable
from relay.store import sqlite_txn
from relay.store.secret_files import SERVER_KEY_FILE, TOKEN_SECRET_FILE
from relay.store.sqlite import DATABASE_FILE, SqliteStore
from relay.store.sqlite_migrations import DEFAULT_MIGRATIONS_DIR


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    with trio.fail_after(CAP_S):
        store = await SqliteStore.open(tmp_path)
        await store.migrate()
    try:
        yield store
    finally:
        with trio.fail_after(CAP_S):
            await store.close()


# --- files and settings --------------------------------------------------------------------------


async def test_the_database_is_a_private_wal_file_in_the_data_dir(sqlite_store: SqliteStore) -> None:
    with trio.fail_after(CAP_S):
        assert sqlite_store.path.name == DATABASE_FILE
        assert stat.S_IMODE(sqlite_store.path.stat().st_mode) == 0o600

        def pragmas(conn: sqlite3.Connection) -> tuple[object, ...]:
            names = ("journal_mode", "synchronous", "secure_delete", "foreign_keys")
            return tuple(conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names)

        # Through the writer itself: pragmas such as synchronous belong to a connection.
        assert await sqlite_store._writer.submit("pragmas", pragmas, exclusive=True) == ("wal", 2, 1, 1)


async def test_tokens_are_stored_only_as_hashes(sqlite_store: SqliteStore) -> None:
    with trio.fail_after(CAP_S):
        new = await sqlite_store.create_user(now_ms=NOW, token_ttl_ms=900_000)
        await sqlite_store.close()
        data = b"".join(p.read_bytes() for p in sqlite_store.path.parent.glob(f"{DATABASE_FILE}*"))
        assert new.token.token.encode() not in data
        raw = crypto.b64decode(new.token.token, crypto.TOKEN_BYTES)
        assert raw is not None
        assert raw not in data
        assert token_hash(new.token) in data


# --- durability across reopening -----------------------------------------------------------------


async def test_acked_events_survive_reopening_and_seqs_continue(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        store = await SqliteStore.open(tmp_path)
        await store.migrate()
        device = await new_device(store)
        for i in range(3):
            await store.append(append_request(device, f"e{i}"))
        await store.close()

        store = await SqliteStore.open(tmp_path)
        try:
            assert await store.migrate() == []
            assert await store.lookup_device(device.device_id) == device
            assert await store.stream_head(device.user_id, "notes") == 3
            assert (await store.append(append_request(device, "e1"))).duplicate is True
            assert (await store.append(append_request(device, "e3"))).event.seq == 4
            events = await store.read_events(
                device.user_id, "notes", after=0, head=4, limit=10, now_ms=NOW, clock_skew_ms=SKEW_MS
            )
            assert [e.id for e in events] == ["e0", "e1", "e2", "e3"]
        finally:
            await store.close()


# --- secrets -------------------------------------------------------------------------------------


async def test_secrets_are_private_files_kept_across_reopening(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        store = await SqliteStore.open(tmp_path)
        first = await store.load_or_create_secrets()
        await store.close()
        for name in (SERVER_KEY_FILE, TOKEN_SECRET_FILE):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
            assert (tmp_path / name).stat().st_size == 32
        assert (tmp_path / SERVER_KEY_FILE).read_bytes() == first.signing_seed
        assert set(os.listdir(tmp_path)) == {DATABASE_FILE, SERVER_KEY_FILE, TOKEN_SECRET_FILE}

        store = await SqliteStore.open(tmp_path)
        try:
            assert await store.load_or_create_secrets() == first
        finally:
            await store.close()


async def test_two_stores_creating_secrets_at_once_agree(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        stores = [await SqliteStore.open(tmp_path) for _ in range(4)]
        results: list[object] = []

        async def load(store: SqliteStore) -> None:
            results.append(await store.load_or_create_secrets())

        async with trio.open_nursery() as nursery:
            for store in stores:
                nursery.start_soon(load, store)
        for store in stores:
            await store.close()
        assert len(results) == 4
        assert all(r == results[0] for r in results)


async def test_a_secret_of_the_wrong_size_stops_the_store(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        (tmp_path / SERVER_KEY_FILE).write_bytes(b"short")
        store = await SqliteStore.open(tmp_path)
        try:
            with pytest.raises(StoreUnavailable, match=r"server\.key holds 5 bytes"):
                await store.load_or_create_secrets()
            assert (tmp_path / SERVER_KEY_FILE).read_bytes() == b"short"
        finally:
            await store.close()


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


async def test_migrations_are_applied_once_and_recorded(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        store = await SqliteStore.open(tmp_path)
        try:
            status = await store.migration_status()
            assert status.applied == []
            assert status.pending[0] == "001-initial"
            applied = await store.migrate()
            assert applied == status.pending
            assert await store.migrate() == []
            after = await store.migration_status()
            assert (after.applied, after.pending) == (applied, [])
        finally:
            await store.close()
        with sqlite3.connect(tmp_path / DATABASE_FILE) as conn:
            rows = conn.execute(
                "SELECT name, length(sha256), applied_at > 0 FROM schema_migrations"
            ).fetchall()
        conn.close()
        assert rows == [(name, 64, 1) for name in applied]


async def test_two_stores_migrating_one_file_at_once_apply_each_migration_once(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        extra = ("900-extra.sql", "-- 900: a test migration\nCREATE TABLE extra (x INTEGER) STRICT;\n")
        schema = _schema_dir(tmp_path, extra)
        stores = [await SqliteStore.open(tmp_path / "data", migrations_dir=schema) for _ in range(2)]
        results: list[list[str]] = []

        async def migrate(store: SqliteStore) -> None:
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


async def test_a_failing_migration_leaves_nothing_of_itself(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        broken = (
            "900-broken.sql",
            "-- 900: fails halfway\nCREATE TABLE half (x INTEGER);\nNOT SQL AT ALL;\n",
        )
        store = await SqliteStore.open(tmp_path / "data", migrations_dir=_schema_dir(tmp_path, broken))
        try:
            with pytest.raises(StoreUnavailable) as caught:
                await store.migrate()
            assert isinstance(caught.value.__cause__, sqlite3.Error)
            status = await store.migration_status()
            assert (status.applied, status.pending) == (SHIPPED, ["900-broken"])
            with sqlite3.connect(store.path) as conn:
                tables = {
                    name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
            conn.close()
            assert "half" not in tables
            assert "events" in tables
            # The writer survived: the store still works.
            await new_device(store)
        finally:
            await store.close()


async def test_an_edited_or_unknown_migration_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        schema = _schema_dir(tmp_path)
        store = await SqliteStore.open(tmp_path / "data", migrations_dir=schema)
        await store.migrate()
        await store.close()

        initial = schema / "001-initial.sql"
        initial.write_text(initial.read_text() + "\n-- edited\n")
        store = await SqliteStore.open(tmp_path / "data", migrations_dir=schema)
        try:
            with pytest.raises(StoreUnavailable, match="edited"):
                await store.migrate()
        finally:
            await store.close()

        initial.unlink()
        (schema / "000-other.sql").write_text("-- 000: unrelated\nCREATE TABLE other (x INTEGER);\n")
        store = await SqliteStore.open(tmp_path / "data", migrations_dir=schema)
        try:
            with pytest.raises(StoreUnavailable, match="unknown to this relay"):
                await store.migrate()
        finally:
            await store.close()


async def test_driver_errors_are_store_unavailable(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        store = await SqliteStore.open(tmp_path)  # never migrated: no tables
        try:
            with pytest.raises(StoreUnavailable) as caught:
                await store.create_user(now_ms=NOW, token_ttl_ms=1000)
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            with pytest.raises(StoreUnavailable) as caught:
                await store.list_users()
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        finally:
            await store.close()


# --- group commit --------------------------------------------------------------------------------


async def test_concurrent_appends_share_transactions(sqlite_store: SqliteStore) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(sqlite_store, name="d0")
        devices = [first] + [await new_device(sqlite_store, first.user_id, name=f"d{i}") for i in (1, 2, 3)]
        before = sqlite_store.statistics()

        async def publish(n: int) -> None:
            await sqlite_store.append(append_request(devices[n % 4], f"e{n}"))

        async with trio.open_nursery() as nursery:
            for n in range(400):
                nursery.start_soon(publish, n)

        after = sqlite_store.statistics()
        requests = after.write_requests - before.write_requests
        transactions = after.write_transactions - before.write_transactions
        assert requests == 400
        assert transactions < requests / 4, (transactions, requests)
        assert after.write_queue_depth == 0
        assert await sqlite_store.stream_head(first.user_id, "notes") == 400


async def test_two_stores_on_one_file_still_assign_seqs_without_gaps(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        stores = [await SqliteStore.open(tmp_path) for _ in range(2)]
        try:
            await stores[0].migrate()
            device = await new_device(stores[0])
            seqs: list[int] = []

            async def publish(n: int) -> None:
                appended = await stores[n % 2].append(append_request(device, f"e{n}"))
                seqs.append(appended.event.seq)

            async with trio.open_nursery() as nursery:
                for n in range(200):
                    nursery.start_soon(publish, n)
            assert sorted(seqs) == list(range(1, 201))
        finally:
            for store in stores:
                await store.close()


# --- cancellation --------------------------------------------------------------------------------


async def _block_writer(store: SqliteStore, release: threading.Event, started: threading.Event) -> None:
    def wait(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(CAP_S)

    await store._writer.submit("block", wait, exclusive=True)


async def _wait_for(event: threading.Event) -> None:
    assert await trio.to_thread.run_sync(event.wait, CAP_S)


async def test_a_write_abandoned_before_the_writer_took_it_is_dropped(sqlite_store: SqliteStore) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(sqlite_store)
        release, started = threading.Event(), threading.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_block_writer, sqlite_store, release, started)
            await _wait_for(started)
            with trio.move_on_after(0.05) as scope:
                await sqlite_store.append(append_request(device, "e1"))
            assert scope.cancelled_caught
            release.set()
        assert await sqlite_store.stream_head(device.user_id, "notes") == 0
        # The writer lives on; the client's retry is a first publish.
        appended = await sqlite_store.append(append_request(device, "e1"))
        assert (appended.duplicate, appended.event.seq) == (False, 1)
        assert sqlite_store.statistics().write_queue_depth == 0


async def test_a_write_abandoned_while_running_commits_as_a_whole(sqlite_store: SqliteStore) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(sqlite_store)
        release, started = threading.Event(), threading.Event()
        request = append_request(device, "e1")

        def append_then_wait(conn: sqlite3.Connection) -> object:
            appended = sqlite_txn.append_txn(conn, request)
            started.set()
            release.wait(CAP_S)
            return appended

        with trio.move_on_after(CAP_S) as scope:
            async with trio.open_nursery() as nursery:

                async def caller() -> None:
                    await sqlite_store._writer.submit("append", append_then_wait)

                nursery.start_soon(caller)
                await _wait_for(started)
                scope.cancel()
        release.set()
        retry = await sqlite_store.append(request)  # queued behind the abandoned one
        assert (retry.duplicate, retry.event.seq) == (True, 1)


async def test_a_failing_request_fails_alone_and_the_writer_survives(sqlite_store: SqliteStore) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(sqlite_store)

        def bug(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO users (user_id, created_at) VALUES ('half-written', 0)")
            raise RuntimeError("a bug")

        results: list[object] = []

        async def run_bug() -> None:
            with pytest.raises(RuntimeError):
                await sqlite_store._writer.submit("bug", bug)

        async def publish(n: int) -> None:
            results.append((await sqlite_store.append(append_request(device, f"e{n}"))).event.seq)

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(publish, n)
            nursery.start_soon(run_bug)
            for n in range(10, 20):
                nursery.start_soon(publish, n)
        assert sorted(results) == list(range(1, 21))  # type: ignore[type-var]
        assert "half-written" not in await sqlite_store.list_users()


async def test_a_cancelled_read_is_interrupted_and_the_pool_still_works(sqlite_store: SqliteStore) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(sqlite_store)

        def endless(conn: sqlite3.Connection) -> object:
            sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
            return conn.execute(sql).fetchone()

        for _ in range(6):  # more than the pool holds: interrupted connections come back
            with trio.move_on_after(0.05) as scope:
                await sqlite_store._readers.run("endless", endless)
            assert scope.cancelled_caught
        assert await sqlite_store.lookup_device(device.device_id) == device


async def test_close_refuses_later_writes(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        store = await SqliteStore.open(tmp_path)
        await store.migrate()
        await store.close()
        with pytest.raises(StoreUnavailable):
            await store.create_user(now_ms=NOW, token_ttl_ms=1000)
        with pytest.raises(StoreUnavailable):
            await store.list_users()
