"""What the SQLite store promises about accounts beyond the contract: a deleted user leaves nothing in
the database or its files, the name rule is the database's own, and the revocation log is shared by
every process on the file and read without the writer. Real threads, real clock, every test capped."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from store_helpers import CAP_S, NOW, TOKEN_TTL_MS, append_request, new_device, token_hash

from relay import crypto
from relay.errors import NameTaken, StoreUnavailable
from relay.protocol.names import device_name_key
from relay.store.base import DeletedDevice, DeviceRecord
from relay.store.sqlite import DATABASE_FILE, SqliteStore

REMEMBER_MS = 30 * 86_400_000


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


# --- deleting a user leaves nothing behind -------------------------------------------------------


async def _traces_of_a_user(store: SqliteStore, tag: str) -> tuple[list[str], list[bytes], list[str]]:
    """A user with everything a user can have, each text marked with ``tag``.

    Returns the texts and the bytes the database holds of it, and other spellings of those bytes.
    """
    phone = await new_device(store, name=f"Phone {tag}")
    laptop = await new_device(store, phone.user_id, name=f"Laptop {tag}")
    old = await new_device(store, phone.user_id, name=f"Old {tag}")
    texts = [phone.user_id, f"stream-{tag}", f"event-{tag}", f"body {tag}", f"nonce-{tag}"]
    keys: list[bytes] = []
    for device in (phone, laptop, old):
        texts += [device.device_id, device.name]
        keys.append(device.public_key)
        body = f'"body {tag} {device.name}"'.encode()
        await store.append(append_request(device, f"event-{tag}", stream=f"stream-{tag}", body=body))
        await store.remember_nonce(device.device_id, f"nonce-{tag}", expires_at=NOW + 1, now_ms=NOW)
    operator = await store.create_token(user_id=phone.user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
    pairing = await store.create_token(
        user_id=phone.user_id,
        now_ms=NOW,
        token_ttl_ms=TOKEN_TTL_MS,
        issued_by=laptop.device_id,
        bound_key=crypto.SigningKey.generate().public_key,
    )
    keys += [token_hash(operator), token_hash(pairing)]
    await store.revoke_device(old.device_id, now_ms=NOW)
    await store.rename_device(
        laptop.device_id, name=f"Renamed {tag}", name_key=device_name_key(f"Renamed {tag}"), now_ms=NOW
    )
    texts.append(f"Renamed {tag}")
    return texts, keys, [crypto.b64encode(k) for k in keys]


def _rows(path: Path) -> list[object]:
    """Every value of every row of every table (sqlite_sequence and schema_migrations included)."""
    conn = sqlite3.connect(path)
    try:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        values: list[object] = [
            v for t in tables for row in conn.execute(f'SELECT * FROM "{t}"') for v in row
        ]
        values += list(conn.iterdump())
    finally:
        conn.close()
    return values


def _database_bytes(directory: Path) -> bytes:
    """The bytes of the database's files: the file itself and its -wal and -shm, if any."""
    return b"".join(p.read_bytes() for p in sorted(directory.glob(f"{DATABASE_FILE}*")))


def _found(values: list[object], texts: list[str], keys: list[bytes]) -> set[str]:
    """Which of ``texts`` and ``keys`` (named by their hex) occur in ``values``, as text or as bytes."""
    found: set[str] = set()
    for value in values:
        if isinstance(value, str):
            found.update(t for t in texts if t in value)
            found.update(k.hex() for k in keys if k.hex() in value.lower())  # iterdump writes X'..'
        elif isinstance(value, bytes):
            found.update(t for t in texts if t.encode() in value)
            found.update(k.hex() for k in keys if k in value)
    return found


async def test_after_deleting_a_user_no_row_of_the_database_holds_anything_of_it(
    sqlite_store: SqliteStore,
) -> None:
    with trio.fail_after(CAP_S):
        texts, keys, spellings = await _traces_of_a_user(sqlite_store, "deleted")
        kept_texts, kept_keys, _ = await _traces_of_a_user(sqlite_store, "kept")
        user_id = texts[0]
        await sqlite_store.delete_user(user_id, now_ms=NOW, remember_ms=REMEMBER_MS)

        values = _rows(sqlite_store.path)
        assert _found(values, texts + spellings, keys) == set()
        # The search does find what is there: the other user, whole.
        assert _found(values, kept_texts, kept_keys) == {*kept_texts, *(k.hex() for k in kept_keys)}
        # What is left of the deleted user is keyed hashes, which still answer.
        assert await sqlite_store.lookup_device(texts[5]) == DeletedDevice()


async def test_after_deleting_a_user_the_database_files_hold_none_of_its_bytes(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        store = await SqliteStore.open(tmp_path)
        await store.migrate()
        texts, keys, spellings = await _traces_of_a_user(store, "deleted")
        kept_texts, kept_keys, _ = await _traces_of_a_user(store, "kept")
        await store.delete_user(texts[0], now_ms=NOW, remember_ms=REMEMBER_MS)
        await store.close()  # the last connection checkpoints the WAL into the file and removes it
        data = _database_bytes(tmp_path)
        # secure_delete: the deleted rows were overwritten, not just unlinked from their pages.
        assert [t for t in texts + spellings if t.encode() in data] == []
        assert [k for k in keys if k in data] == []
        assert all(t.encode() in data for t in kept_texts)
        assert all(k in data for k in kept_keys)


# --- names: the database's own rule --------------------------------------------------------------


async def test_a_name_clash_is_refused_by_the_databases_unique_index(sqlite_store: SqliteStore) -> None:
    with trio.fail_after(CAP_S):
        phone = await new_device(sqlite_store, name="Phone")
        laptop = await new_device(sqlite_store, phone.user_id, name="Laptop")
        with pytest.raises(NameTaken) as caught:
            await sqlite_store.rename_device(laptop.device_id, name="PHONE", name_key="phone", now_ms=NOW)
        assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)

        def bypass(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE devices SET name_key = 'phone' WHERE device_id = ?", (laptop.device_id,))

        with pytest.raises(StoreUnavailable) as unavailable:
            await sqlite_store._writer.submit("bypass", bypass)
        assert isinstance(unavailable.value.__cause__, sqlite3.IntegrityError)


async def test_two_stores_on_one_file_renaming_to_one_name_let_exactly_one_win(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        stores = [await SqliteStore.open(tmp_path) for _ in range(2)]
        try:
            await stores[0].migrate()
            first = await new_device(stores[0], name="d0")
            devices = [first] + [
                await new_device(stores[0], first.user_id, name=f"d{i}") for i in range(1, 10)
            ]
            won: list[DeviceRecord] = []
            refused: list[NameTaken] = []

            async def rename(n: int) -> None:
                try:
                    won.append(
                        await stores[n % 2].rename_device(
                            devices[n].device_id, name=f"Tablet{n}", name_key="tablet", now_ms=NOW
                        )
                    )
                except NameTaken as exc:
                    refused.append(exc)

            async with trio.open_nursery() as nursery:
                for n in range(len(devices)):
                    nursery.start_soon(rename, n)
            assert (len(won), len(refused)) == (1, len(devices) - 1)
        finally:
            for store in stores:
                await store.close()


# --- the revocation log, across processes and without the writer ---------------------------------


async def test_revocations_and_deletions_by_another_process_reach_the_log(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        server, admin = [await SqliteStore.open(tmp_path) for _ in range(2)]
        try:
            await server.migrate()
            phone = await new_device(server)
            laptop = await new_device(server, phone.user_id, name="Laptop")
            seen = await server.latest_revocation()
            await admin.revoke_device(laptop.device_id, now_ms=NOW)
            assert await server.latest_revocation() > seen
            await admin.delete_user(phone.user_id, now_ms=NOW, remember_ms=REMEMBER_MS)
            kinds = [e.kind for e in await server.revocations_since(seen)]
            assert kinds == ["device_revoked", "user_deleted"]
            # Both know the secret that keys the hashes: the server recognises the deleted device.
            assert await server.lookup_device(phone.device_id, now_ms=NOW) == DeletedDevice()
        finally:
            await server.close()
            await admin.close()


async def test_polling_the_revocation_log_never_goes_through_the_writer(sqlite_store: SqliteStore) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(sqlite_store)
        await sqlite_store.revoke_device(device.device_id, now_ms=NOW)
        before = sqlite_store.statistics()
        for _ in range(20):
            latest = await sqlite_store.latest_revocation()
            assert len(await sqlite_store.revocations_since(latest - 1)) == 1
        assert sqlite_store.statistics() == before
