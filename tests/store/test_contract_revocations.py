"""The store contract for the revocation log, the HTTP nonce cache (PROTOCOL.md §3, §5) and the
housekeeping that forgets them, on every store."""

from __future__ import annotations

import pytest
import trio
from store_helpers import CAP_S, NOW, SKEW_MS, TOKEN_TTL_MS, append_request, new_device, new_user

from relay.errors import AccountDeleted, NotFound
from relay.store.base import (
    EXPIRED_TOKEN_RETENTION_MS,
    REVOCATION_LOG_RETENTION_MS,
    RevocationEntry,
    Store,
    revocation_subject,
)

UNKNOWN = "00000000-0000-4000-8000-000000000000"
REMEMBER_MS = 30 * 86_400_000


async def token_secret(store: Store) -> bytes:
    return (await store.load_or_create_secrets()).token_secret


# --- the revocation log --------------------------------------------------------------------------


async def test_the_revocation_log_starts_empty(store: Store) -> None:
    with trio.fail_after(CAP_S):
        assert await store.latest_revocation() == 0
        assert await store.revocations_since(0) == []


async def test_a_first_revocation_logs_a_keyed_hash_of_the_device_id(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        await store.revoke_device(device.device_id, now_ms=NOW + 5)
        latest = await store.latest_revocation()
        assert latest > 0
        subject = revocation_subject(await token_secret(store), device.device_id)
        assert await store.revocations_since(0) == [
            RevocationEntry(id=latest, kind="device_revoked", subject=subject, at=NOW + 5)
        ]
        assert len(subject) == 32
        assert device.device_id.encode() not in subject


async def test_an_idempotent_or_refused_revocation_logs_nothing(store: Store) -> None:
    with trio.fail_after(CAP_S):
        alice = await new_device(store)
        bob = await new_device(store)
        await store.revoke_device(alice.device_id, now_ms=NOW)
        latest = await store.latest_revocation()
        await store.revoke_device(alice.device_id, now_ms=NOW + 1)
        with pytest.raises(NotFound):
            await store.revoke_device(UNKNOWN, now_ms=NOW)
        with pytest.raises(NotFound):
            await store.revoke_device(bob.device_id, now_ms=NOW, user_id=alice.user_id)
        assert await store.latest_revocation() == latest
        assert len(await store.revocations_since(0)) == 1


async def test_a_deletion_logs_a_keyed_hash_of_the_user_id(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        await store.delete_user(device.user_id, now_ms=NOW + 7, remember_ms=REMEMBER_MS)
        (entry,) = await store.revocations_since(0)
        assert (entry.kind, entry.at) == ("user_deleted", NOW + 7)
        assert entry.subject == revocation_subject(await token_secret(store), device.user_id)
        assert entry.id == await store.latest_revocation()


async def test_log_entries_come_in_ascending_ids_after_a_cursor_at_most_limit(store: Store) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(store, name="d0")
        devices = [first] + [await new_device(store, first.user_id, name=f"d{i}") for i in range(1, 5)]
        for i, device in enumerate(devices):
            await store.revoke_device(device.device_id, now_ms=NOW + i)
        secret = await token_secret(store)
        entries = await store.revocations_since(0)
        ids = [e.id for e in entries]
        assert ids == sorted(ids)
        assert len(set(ids)) == 5
        assert [e.subject for e in entries] == [revocation_subject(secret, d.device_id) for d in devices]
        assert len({e.subject for e in entries}) == 5
        assert await store.latest_revocation() == ids[-1]
        assert await store.revocations_since(0, limit=2) == entries[:2]
        assert await store.revocations_since(ids[1], limit=2) == entries[2:4]
        assert await store.revocations_since(ids[-1]) == []
        assert await store.revocations_since(0, limit=0) == []


async def test_concurrent_revocations_each_log_once(store: Store) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(store, name="d0")
        devices = [first] + [await new_device(store, first.user_id, name=f"d{i}") for i in range(1, 10)]
        async with trio.open_nursery() as nursery:
            for device in devices * 3:  # each revoked three times at once

                async def revoke(device_id: str = device.device_id) -> None:
                    await store.revoke_device(device_id, now_ms=NOW)

                nursery.start_soon(revoke)
        secret = await token_secret(store)
        subjects = [e.subject for e in await store.revocations_since(0)]
        assert sorted(subjects) == sorted(revocation_subject(secret, d.device_id) for d in devices)


# --- the HTTP nonce cache ------------------------------------------------------------------------


async def test_a_nonce_is_accepted_once_until_its_memory_expires(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        until = NOW + SKEW_MS
        assert await store.remember_nonce(device.device_id, "n1", expires_at=until, now_ms=NOW) is True
        assert await store.remember_nonce(device.device_id, "n1", expires_at=until, now_ms=NOW) is False
        # A replay refused does not extend the memory (its later expiry is ignored)...
        assert (
            await store.remember_nonce(device.device_id, "n1", expires_at=until + 50, now_ms=until) is False
        )
        # ...which ends after expires_at: then the pair is new again, and remembered anew.
        assert await store.remember_nonce(device.device_id, "n1", expires_at=until + 99, now_ms=until + 1)
        assert not await store.remember_nonce(
            device.device_id, "n1", expires_at=until + 99, now_ms=until + 99
        )


async def test_nonces_are_remembered_per_device(store: Store) -> None:
    with trio.fail_after(CAP_S):
        phone = await new_device(store)
        laptop = await new_device(store, phone.user_id, name="Laptop")
        other = await new_device(store)
        for device in (phone, laptop, other):
            assert await store.remember_nonce(device.device_id, "same", expires_at=NOW + 1, now_ms=NOW)
        assert await store.remember_nonce(phone.device_id, "other", expires_at=NOW + 1, now_ms=NOW)


async def test_two_concurrent_calls_with_one_nonce_let_exactly_one_through(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        answers: list[bool] = []

        async def remember() -> None:
            answers.append(await store.remember_nonce(device.device_id, "n", expires_at=NOW + 1, now_ms=NOW))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(remember)
        assert sorted(answers) == [False] * 19 + [True]


async def test_a_nonce_of_a_device_that_does_not_exist_is_account_deleted(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        with pytest.raises(AccountDeleted):
            await store.remember_nonce(UNKNOWN, "n", expires_at=NOW + 1, now_ms=NOW)
        await store.delete_user(device.user_id, now_ms=NOW, remember_ms=REMEMBER_MS)
        with pytest.raises(AccountDeleted):
            await store.remember_nonce(device.device_id, "n", expires_at=NOW + 1, now_ms=NOW)


async def test_a_revoked_devices_nonces_are_still_remembered(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        await store.revoke_device(device.device_id, now_ms=NOW)
        assert await store.remember_nonce(device.device_id, "n", expires_at=NOW + 1, now_ms=NOW) is True
        assert await store.remember_nonce(device.device_id, "n", expires_at=NOW + 1, now_ms=NOW) is False


# --- housekeeping --------------------------------------------------------------------------------


async def test_housekeeping_forgets_nonces_once_their_memory_expired(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        for i in range(3):
            await store.remember_nonce(device.device_id, f"n{i}", expires_at=NOW + i, now_ms=NOW)
        assert await store.purge_housekeeping(now_ms=NOW, batch=10) == 0
        assert await store.purge_housekeeping(now_ms=NOW + 2, batch=10) == 2
        # n2 is still remembered, until NOW + 2 inclusive.
        assert not await store.remember_nonce(device.device_id, "n2", expires_at=NOW + 9, now_ms=NOW + 2)
        assert await store.purge_housekeeping(now_ms=NOW + 3, batch=10) == 1


async def test_housekeeping_prunes_old_log_entries_but_always_keeps_the_newest(store: Store) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(store, name="d0")
        devices = [first] + [await new_device(store, first.user_id, name=f"d{i}") for i in range(1, 4)]
        for i, device in enumerate(devices):
            await store.revoke_device(device.device_id, now_ms=NOW + i)
        entries = await store.revocations_since(0)
        edge = NOW + 1 + REVOCATION_LOG_RETENTION_MS  # entries at NOW and NOW + 1 are not older yet
        assert await store.purge_housekeeping(now_ms=edge, batch=10) == 1
        assert await store.revocations_since(0) == entries[1:]
        far = NOW + 100 * REVOCATION_LOG_RETENTION_MS
        assert await store.purge_housekeeping(now_ms=far, batch=10) == 2
        assert await store.revocations_since(0) == entries[3:]
        assert await store.purge_housekeeping(now_ms=far, batch=10) == 0
        assert await store.latest_revocation() == entries[-1].id
        # Ids are never reused: the next entry comes after every pruned one.
        other = await new_device(store)
        await store.revoke_device(other.device_id, now_ms=far)
        (_, newest) = await store.revocations_since(0)
        assert newest.id > entries[-1].id
        assert await store.revocations_since(entries[-1].id) == [newest]


async def test_housekeeping_deletes_tokens_expired_more_than_a_day_ago(store: Store) -> None:
    with trio.fail_after(CAP_S):
        user_id = await new_user(store)  # comes with a token expiring at NOW + TOKEN_TTL_MS
        await store.create_token(user_id=user_id, now_ms=NOW + 10, token_ttl_ms=TOKEN_TTL_MS)
        expired = NOW + TOKEN_TTL_MS
        assert await store.purge_housekeeping(now_ms=expired + EXPIRED_TOKEN_RETENTION_MS, batch=10) == 0
        assert await store.purge_housekeeping(now_ms=expired + EXPIRED_TOKEN_RETENTION_MS + 1, batch=10) == 1
        assert await store.purge_housekeeping(now_ms=expired + EXPIRED_TOKEN_RETENTION_MS + 11, batch=10) == 1
        # The user is untouched, and still gets tokens.
        assert await store.list_users() == [user_id]
        await store.create_token(user_id=user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)


async def test_housekeeping_works_in_batches_across_what_it_forgets(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)  # its user's token is used: still deleted a day after expiry
        for i in range(4):
            await store.remember_nonce(device.device_id, f"n{i}", expires_at=NOW, now_ms=NOW)
        gone = await new_device(store)
        await store.delete_user(gone.user_id, now_ms=NOW, remember_ms=1)  # leaves one device hash
        later = NOW + TOKEN_TTL_MS + EXPIRED_TOKEN_RETENTION_MS + 1
        done = [await store.purge_housekeeping(now_ms=later, batch=3) for _ in range(4)]
        # 4 nonces, 1 device hash, 2 tokens (the log keeps its only entry).
        assert done == [3, 3, 1, 0]


async def test_expired_events_are_purged_apart_from_housekeeping(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        await store.append(append_request(device, "e1", expires_at=NOW))
        await store.remember_nonce(device.device_id, "n", expires_at=NOW, now_ms=NOW)
        later = NOW + SKEW_MS + 1
        assert await store.purge_housekeeping(now_ms=later, batch=10) == 1  # the nonce only
        assert await store.purge_expired(now_ms=later, clock_skew_ms=SKEW_MS, batch=10) == 1  # the event only
        assert await store.stream_head(device.user_id, "notes") == 1
