"""The PostgreSQL store decides a group's appends in a batch (relay/store/postgres_append_txn.py): here it
is held, on many seeded random groups, to exactly what the one-at-a-time path (the twin of SQLite's
``append_txn``) answers and writes. Both run in one transaction on a direct connection, rolled back in
between, on the same state; no test here needs a clock or a second node."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio
from postgres_helpers import connect, postgres_schema
from store_helpers import CAP_S, NOW, SKEW_MS

from relay.errors import AccountDeleted, RelayError
from relay.store.base import Appended, AppendRequest
from relay.store.postgres import PostgresStore
from relay.store.postgres_append_txn import append_txn
from relay.store.postgres_pool import PgConnection
from relay.store.postgres_txn import lock_user_txn
from relay.store.postgres_writer import _Append, append_group_txn

SEEDS = range(40)
GROUP = 30

#: (user, device) pairs a request may name: d3 is revoked, d4 is another user's, u3 does not exist.
SENDERS = [("u1", "d1"), ("u1", "d2"), ("u1", "d3"), ("u1", "d4"), ("u2", "d4"), ("u3", "d1")]
BODIES = [b"1", b'"two"', b"[3,3,3]", b'{"four":4}']


@pytest.fixture
async def migrated_url(postgres_url: str) -> AsyncIterator[str]:
    """A fresh schema holding relay's tables, and nothing else."""
    async with postgres_schema(postgres_url) as url:
        with trio.fail_after(CAP_S):
            store = await PostgresStore.open(url, pool_size=1)
            try:
                await store.migrate()
            finally:
                await store.close()
        yield url


def _setup_txn(conn: PgConnection) -> None:
    for user in ("u1", "u2"):
        conn.execute("INSERT INTO users (user_id, created_at) VALUES (%s, %s)", (user, NOW))
    for device, user, revoked_at in (
        ("d1", "u1", None),
        ("d2", "u1", None),
        ("d3", "u1", NOW),
        ("d4", "u2", None),
    ):
        conn.execute(
            "INSERT INTO devices (device_id, user_id, public_key, name, name_key, created_at, revoked_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (device, user, device.encode(), device, device, NOW, revoked_at),
        )


def _request(rng: random.Random, *, received_at: int) -> AppendRequest:
    user_id, device_id = rng.choice(SENDERS)
    return AppendRequest(
        user_id=user_id,
        device_id=device_id,
        id=rng.choice("abcdef"),
        stream=rng.choice(["s1", "s2", "s3"]),
        ts=NOW,
        expires_at=received_at + rng.choice([1, 1, 1000, 10**7]),
        expect_seq=rng.choice([None, None, None, None, 0, 1, 2, 3]),
        body=rng.choice(BODIES),
        received_at=received_at,
        max_streams=rng.choice([1, 2, 3, 10]),
        max_stored_bytes=rng.choice([12, 25, 40, 1000]),
        clock_skew_ms=SKEW_MS,
    )


def _outcome(result: Appended | BaseException | None) -> tuple[Any, ...]:
    if isinstance(result, Appended):
        return ("appended", result.event, result.duplicate)
    assert isinstance(result, RelayError), result
    return (type(result).__name__, result.fields)


def _one_at_a_time_txn(conn: PgConnection, requests: list[AppendRequest]) -> list[tuple[Any, ...]]:
    """The oracle: in the group's order (by user, then stream), each decided from the database."""
    order = sorted(range(len(requests)), key=lambda i: (requests[i].user_id, requests[i].stream))
    outcomes: dict[int, tuple[Any, ...]] = {}
    for i in order:
        r = requests[i]
        result: Appended | BaseException
        try:
            if lock_user_txn(conn, r.user_id) is None:
                raise AccountDeleted()
            result = append_txn(conn, r)
        except RelayError as exc:
            result = exc
        outcomes[i] = _outcome(result)
    return [outcomes[i] for i in range(len(requests))]


def _batch_txn(conn: PgConnection, requests: list[AppendRequest]) -> list[tuple[Any, ...]]:
    group = [_Append(r) for r in requests]
    append_group_txn(conn, group)
    return [_outcome(q.value if q.error is None else q.error) for q in group]


def _state_txn(conn: PgConnection) -> list[object]:
    return [
        conn.execute("SELECT * FROM events ORDER BY user_id, stream, seq").fetchall(),
        conn.execute("SELECT * FROM streams ORDER BY user_id, name").fetchall(),
        conn.execute("SELECT user_id, held_bytes FROM users ORDER BY user_id").fetchall(),
    ]


def _compare(url: str, seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    before = [_request(rng, received_at=NOW) for _ in range(8)]
    later = NOW + SKEW_MS + 2  # events of `before` that expire at NOW + 1 are expired by then
    group = [_request(rng, received_at=rng.choice([NOW, later])) for _ in range(GROUP)]
    with connect(url) as conn, conn.transaction(force_rollback=True):
        _setup_txn(conn)
        _one_at_a_time_txn(conn, before)
        with conn.transaction(force_rollback=True):
            batch = _batch_txn(conn, group)
            batch_state = _state_txn(conn)
        with conn.transaction(force_rollback=True):
            oracle = _one_at_a_time_txn(conn, group)
            oracle_state = _state_txn(conn)
    assert batch == oracle, seed
    assert batch_state == oracle_state, seed
    return batch


async def test_a_batch_answers_and_writes_what_one_at_a_time_would(migrated_url: str) -> None:
    with trio.fail_after(CAP_S):
        seen: set[str] = set()
        for seed in SEEDS:
            outcomes = await trio.to_thread.run_sync(_compare, migrated_url, seed)
            seen.update("duplicate" if o == ("appended", o[1], True) else str(o[0]) for o in outcomes)
        # The seeds reach every answer an append can get.
        assert seen >= {
            "appended",
            "duplicate",
            "AccountDeleted",
            "DeviceRevoked",
            "IdConflict",
            "QuotaExceeded",
            "SeqConflict",
        }


async def test_an_append_the_server_refuses_fails_alone_after_the_batch_falls_back(migrated_url: str) -> None:
    with trio.fail_after(CAP_S):

        def run() -> list[tuple[Any, ...]]:
            rng = random.Random(7)
            group = [_request(rng, received_at=NOW) for _ in range(GROUP)]
            # Accepted by every check, refused by the server (ts beyond BIGINT): the batch's one write
            # fails, and the group is made again one append at a time, each in its savepoint.
            group[5] = attrs.evolve(
                group[5],
                user_id="u1",
                device_id="d1",
                id="bad",
                expect_seq=None,
                ts=2**63,
                max_streams=10,
                max_stored_bytes=1000,
            )
            with connect(migrated_url) as conn, conn.transaction(force_rollback=True):
                _setup_txn(conn)
                with conn.transaction(force_rollback=True):
                    batch = _batch_txn(conn, group)
                    batch_state = _state_txn(conn)
                with conn.transaction(force_rollback=True):
                    oracle = _one_at_a_time_txn(conn, group)
                    oracle_state = _state_txn(conn)
            assert batch == oracle
            assert batch_state == oracle_state
            return batch

        outcomes = await trio.to_thread.run_sync(run)
        assert outcomes[5] == ("StoreUnavailable", {})
        assert sum(1 for o in outcomes if o[0] == "appended") > 1
