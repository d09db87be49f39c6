"""What the PostgreSQL store promises about accounts beyond the contract: a deleted user leaves no row in
any table, the name and key rules are the database's own, and what SQLite gets from its single writer
(single-use tokens, device counts, quotas, log ids in commit order) holds across nodes. Two stores on
one schema stand for two nodes. Real server, real threads, every test capped."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import psycopg
import pytest
import trio
from postgres_helpers import connect, postgres_schema, schema_of, wait_for_lock_waiters
from store_helpers import (
    CAP_S,
    NOW,
    TOKEN_TTL_MS,
    append_request,
    enrollment,
    new_device,
    new_key,
    new_user,
    token_hash,
)

from relay import crypto
from relay.errors import InvalidToken, KeyInUse, NameTaken, QuotaExceeded, StoreUnavailable, TooManyDevices
from relay.protocol.names import device_name_key
from relay.store.base import DeletedDevice, DeviceRecord
from relay.store.postgres import PostgresStore
from relay.store.postgres_accounts_txn import revoke_device_txn
from relay.store.postgres_pool import PgConnection

REMEMBER_MS = 30 * 86_400_000
POOL = 4


@pytest.fixture
async def schema_url(postgres_url: str) -> AsyncIterator[str]:
    async with postgres_schema(postgres_url) as url:
        yield url


@pytest.fixture
async def nodes(schema_url: str) -> AsyncIterator[list[PostgresStore]]:
    """Two stores on one schema, migrated: two nodes of one relay."""
    with trio.fail_after(CAP_S):
        stores = [await PostgresStore.open(schema_url, pool_size=POOL) for _ in range(2)]
        await stores[0].migrate()
    try:
        yield stores
    finally:
        with trio.fail_after(CAP_S):
            for store in stores:
                await store.close()


# --- deleting a user leaves nothing behind -------------------------------------------------------


async def _traces_of_a_user(store: PostgresStore, tag: str) -> tuple[list[str], list[bytes], list[str]]:
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


def _rows(url: str) -> list[object]:
    """Every value of every row of every table of the schema, and each row as text (bytea as hex)."""
    with connect(url) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema_of(url),),
            )
        ]
        assert {"users", "devices", "events", "revocation_log", "server_secrets"} <= set(tables)
        values: list[object] = []
        for table in tables:
            query = psycopg.sql.SQL("SELECT t.*, t::text FROM {} AS t").format(psycopg.sql.Identifier(table))
            values += [v for row in conn.execute(query) for v in row]
    return values


def _found(values: list[object], texts: list[str], keys: list[bytes]) -> set[str]:
    """Which of ``texts`` and ``keys`` (named by their hex) occur in ``values``, as text or as bytes."""
    found: set[str] = set()
    for value in values:
        if isinstance(value, str):
            found.update(t for t in texts if t in value)
            found.update(k.hex() for k in keys if k.hex() in value.lower())  # a row as text: \\x...
        elif isinstance(value, bytes):
            found.update(t for t in texts if t.encode() in value)
            found.update(k.hex() for k in keys if k in value)
    return found


async def test_after_deleting_a_user_no_row_of_the_database_holds_anything_of_it(
    nodes: list[PostgresStore], schema_url: str
) -> None:
    with trio.fail_after(CAP_S):
        store = nodes[0]
        texts, keys, spellings = await _traces_of_a_user(store, "deleted")
        kept_texts, kept_keys, _ = await _traces_of_a_user(store, "kept")
        user_id = texts[0]
        await store.delete_user(user_id, now_ms=NOW, remember_ms=REMEMBER_MS)

        values = await trio.to_thread.run_sync(_rows, schema_url)
        assert _found(values, texts + spellings, keys) == set()
        # The search does find what is there: the other user, whole.
        assert _found(values, kept_texts, kept_keys) == {*kept_texts, *(k.hex() for k in kept_keys)}
        # What is left of the deleted user is keyed hashes, which still answer, on every node.
        assert await nodes[1].lookup_device(texts[5]) == DeletedDevice()


# --- names and keys: the database's own rules ----------------------------------------------------


async def test_a_name_clash_is_refused_by_the_databases_unique_index(nodes: list[PostgresStore]) -> None:
    with trio.fail_after(CAP_S):
        store = nodes[0]
        phone = await new_device(store, name="Phone")
        laptop = await new_device(store, phone.user_id, name="Laptop")
        with pytest.raises(NameTaken) as caught:
            await store.rename_device(laptop.device_id, name="PHONE", name_key="phone", now_ms=NOW)
        assert isinstance(caught.value.__cause__, psycopg.errors.UniqueViolation)

        def bypass(conn: PgConnection) -> None:
            conn.execute("UPDATE devices SET name_key = 'phone' WHERE device_id = %s", (laptop.device_id,))

        with pytest.raises(StoreUnavailable) as unavailable:
            await store._writer.run("bypass", bypass)
        assert isinstance(unavailable.value.__cause__, psycopg.errors.UniqueViolation)


async def test_two_nodes_renaming_to_one_name_let_exactly_one_win(nodes: list[PostgresStore]) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(nodes[0], name="d0")
        devices = [first] + [await new_device(nodes[0], first.user_id, name=f"d{i}") for i in range(1, 10)]
        won: list[DeviceRecord] = []
        refused: list[NameTaken] = []

        async def rename(n: int) -> None:
            try:
                won.append(
                    await nodes[n % 2].rename_device(
                        devices[n].device_id, name=f"Tablet{n}", name_key="tablet", now_ms=NOW
                    )
                )
            except NameTaken as exc:
                refused.append(exc)

        async with trio.open_nursery() as nursery:
            for n in range(len(devices)):
                nursery.start_soon(rename, n)
        assert (len(won), len(refused)) == (1, len(devices) - 1)


async def test_one_key_enrolled_for_two_users_on_two_nodes_at_once_is_enrolled_once(
    nodes: list[PostgresStore],
) -> None:
    with trio.fail_after(CAP_S):
        key = new_key()
        users = [await nodes[0].create_user(now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS) for _ in range(6)]
        enrolled: list[DeviceRecord] = []
        refused: list[KeyInUse] = []

        async def enroll(n: int) -> None:
            try:
                enrolled.append(await nodes[n % 2].enroll(enrollment(users[n].token, public_key=key)))
            except KeyInUse as exc:
                refused.append(exc)

        async with trio.open_nursery() as nursery:
            for n in range(len(users)):
                nursery.start_soon(enroll, n)
        assert (len(enrolled), len(refused)) == (1, len(users) - 1)


# --- what SQLite's single writer gives, across nodes ---------------------------------------------


async def test_a_token_used_on_two_nodes_at_once_enrols_one_device(nodes: list[PostgresStore]) -> None:
    with trio.fail_after(CAP_S):
        new = await nodes[0].create_user(now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
        enrolled: list[DeviceRecord] = []
        refused: list[InvalidToken] = []

        async def enroll(n: int) -> None:
            try:
                enrolled.append(await nodes[n % 2].enroll(enrollment(new.token, name=f"Device {n}")))
            except InvalidToken as exc:
                refused.append(exc)

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(enroll, n)
        assert (len(enrolled), len(refused)) == (1, 7)
        assert await nodes[1].list_devices(new.user_id) == enrolled


async def test_enrolments_on_two_nodes_at_once_never_exceed_max_devices(nodes: list[PostgresStore]) -> None:
    with trio.fail_after(CAP_S):
        user_id = await new_user(nodes[0])
        tokens = [
            await nodes[0].create_token(user_id=user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
            for _ in range(8)
        ]
        enrolled: list[DeviceRecord] = []
        refused: list[TooManyDevices] = []

        async def enroll(n: int) -> None:
            try:
                request = enrollment(tokens[n], name=f"Device {n}", max_devices=3)
                enrolled.append(await nodes[n % 2].enroll(request))
            except TooManyDevices as exc:
                refused.append(exc)

        async with trio.open_nursery() as nursery:
            for n in range(len(tokens)):
                nursery.start_soon(enroll, n)
        assert (len(enrolled), len(refused)) == (3, 5)


async def test_appends_on_two_nodes_at_once_never_exceed_the_byte_quota(nodes: list[PostgresStore]) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(nodes[0], name="d0")
        devices = [first] + [await new_device(nodes[1], first.user_id, name=f"d{i}") for i in (1, 2, 3)]
        ten = b'"12345678"'
        stored: list[int] = []
        refused: list[QuotaExceeded] = []

        async def publish(n: int) -> None:
            # Different streams and devices: nothing but the user's own row orders these appends.
            request = append_request(devices[n % 4], f"e{n}", stream=f"s{n}", body=ten, max_stored_bytes=100)
            try:
                stored.append((await nodes[n % 2].append(request)).event.seq)
            except QuotaExceeded as exc:
                refused.append(exc)

        async with trio.open_nursery() as nursery:
            for n in range(40):
                nursery.start_soon(publish, n)
        assert (len(stored), len(refused)) == (10, 30)
        summary = await nodes[0].get_user(first.user_id, now_ms=NOW, clock_skew_ms=0)
        assert (summary.events, summary.stored_bytes, summary.streams) == (10, 100, 10)


async def test_revocations_and_deletions_on_another_node_reach_the_log(nodes: list[PostgresStore]) -> None:
    with trio.fail_after(CAP_S):
        server, admin = nodes
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


async def test_log_ids_come_in_commit_order_without_gaps(nodes: list[PostgresStore], schema_url: str) -> None:
    with trio.fail_after(CAP_S):
        store = nodes[0]
        secret = (await store.load_or_create_secrets()).token_secret
        early, late, undone, after = [await new_device(store) for _ in range(4)]  # four users
        other_node = await trio.to_thread.run_sync(connect, schema_url)
        try:

            def revoke(device: DeviceRecord) -> None:
                other_node.execute(b"BEGIN")
                revoke_device_txn(
                    other_node, device_id=device.device_id, now_ms=NOW, user_id=None, token_secret=secret
                )

            # Another node's revocation has taken its id, and not committed yet...
            await trio.to_thread.run_sync(revoke, early)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(store.revoke_device, late.device_id, now_ms=0)
                )  # waits for it,
                await wait_for_lock_waiters(schema_url)
                await trio.to_thread.run_sync(other_node.execute, b"COMMIT")
            # and one rolled back leaves no hole.
            await trio.to_thread.run_sync(revoke, undone)
            await trio.to_thread.run_sync(other_node.execute, b"ROLLBACK")
            await store.revoke_device(after.device_id, now_ms=NOW)
        finally:
            await trio.to_thread.run_sync(other_node.close)
        entries = await nodes[1].revocations_since(0)
        assert [e.id for e in entries] == [1, 2, 3]
        assert [e.at for e in entries] == [NOW, 0, NOW]


async def test_polling_the_revocation_log_writes_nothing(nodes: list[PostgresStore]) -> None:
    with trio.fail_after(CAP_S):
        store = nodes[0]
        device = await new_device(store)
        await store.revoke_device(device.device_id, now_ms=NOW)
        before = store.statistics()
        for _ in range(20):
            latest = await store.latest_revocation()
            assert len(await store.revocations_since(latest - 1)) == 1
        assert store.statistics() == before
