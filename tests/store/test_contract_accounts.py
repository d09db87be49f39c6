"""The store contract for renaming devices, user summaries and deleting users (PROTOCOL.md §5, §6, §8),
on every store."""

from __future__ import annotations

import pytest
import trio
from store_helpers import (
    CAP_S,
    NOW,
    SKEW_MS,
    TOKEN_TTL_MS,
    TTL_MS,
    append_request,
    enrollment,
    new_device,
    new_user,
)

from relay.errors import AccountDeleted, InvalidToken, NameTaken, NotFound
from relay.protocol.names import device_name_key
from relay.store.base import DeletedCounts, DeletedDevice, DeviceRecord, Store, UnknownDevice, UserSummary

UNKNOWN = "00000000-0000-4000-8000-000000000000"
#: How long deleted device ids are remembered in these tests (max_ttl_s, in ms).
REMEMBER_MS = 30 * 86_400_000


async def rename(
    store: Store, device: DeviceRecord, name: str, *, user_id: str | None = None
) -> DeviceRecord:
    return await store.rename_device(
        device.device_id, name=name, name_key=device_name_key(name), now_ms=NOW + 1, user_id=user_id
    )


# --- renaming ------------------------------------------------------------------------------------


async def test_a_renamed_device_is_answered_and_listed_under_its_new_name(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store, name="Phone")
        renamed = await rename(store, device, "Pocket", user_id=device.user_id)
        assert renamed.name == "Pocket"
        assert renamed.device_id == device.device_id
        assert (renamed.created_at, renamed.public_key, renamed.revoked_at) == (
            device.created_at,
            device.public_key,
            None,
        )
        assert await store.lookup_device(device.device_id) == renamed
        assert await store.list_devices(device.user_id) == [renamed]


async def test_a_rename_to_the_name_key_of_another_live_device_is_name_taken(store: Store) -> None:
    with trio.fail_after(CAP_S):
        phone = await new_device(store, name="Phone")
        laptop = await new_device(store, phone.user_id, name="Laptop")
        for name in ("Phone", "PHONE", "Ｐｈｏｎｅ"):
            with pytest.raises(NameTaken):
                await rename(store, laptop, name)
        assert await store.lookup_device(laptop.device_id) == laptop


async def test_a_device_may_be_renamed_to_another_spelling_of_its_own_name(store: Store) -> None:
    with trio.fail_after(CAP_S):
        phone = await new_device(store, name="Phone")
        await new_device(store, phone.user_id, name="Laptop")
        assert (await rename(store, phone, "PHONE")).name == "PHONE"
        assert (await rename(store, phone, "PHONE")).name == "PHONE"


async def test_a_rename_frees_the_old_name_and_may_take_a_revoked_devices_name(store: Store) -> None:
    with trio.fail_after(CAP_S):
        phone = await new_device(store, name="Phone")
        old = await new_device(store, phone.user_id, name="Old")
        await store.revoke_device(old.device_id, now_ms=NOW)
        await rename(store, phone, "old")
        again = await new_device(store, phone.user_id, name="phone")
        assert again.name == "phone"


async def test_another_users_device_names_are_no_obstacle_to_a_rename(store: Store) -> None:
    with trio.fail_after(CAP_S):
        alice = await new_device(store, name="Phone")
        bob = await new_device(store, name="Laptop")
        assert (await rename(store, bob, "phone")).name == "phone"
        assert await store.lookup_device(alice.device_id) == alice


async def test_renaming_an_unknown_a_revoked_or_another_users_device_is_not_found(store: Store) -> None:
    with trio.fail_after(CAP_S):
        alice = await new_device(store, name="Phone")
        bob = await new_device(store, name="Phone")
        with pytest.raises(NotFound):
            await store.rename_device(UNKNOWN, name="X", name_key="x", now_ms=NOW)
        with pytest.raises(NotFound):
            await rename(store, alice, "Stolen", user_id=bob.user_id)
        await store.revoke_device(alice.device_id, now_ms=NOW)
        for user_id in (None, alice.user_id):
            with pytest.raises(NotFound):
                await rename(store, alice, "Late", user_id=user_id)
        looked_up = await store.lookup_device(alice.device_id)
        assert isinstance(looked_up, DeviceRecord)
        assert looked_up.name == "Phone"


async def test_two_concurrent_renames_to_one_name_let_exactly_one_win(store: Store) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(store, name="d0")
        devices = [first] + [await new_device(store, first.user_id, name=f"d{i}") for i in range(1, 8)]
        won: list[DeviceRecord] = []
        refused: list[str] = []

        async def try_rename(device: DeviceRecord, name: str) -> None:
            try:
                won.append(await rename(store, device, name))
            except NameTaken:
                refused.append(device.device_id)

        async with trio.open_nursery() as nursery:
            for i, device in enumerate(devices):
                nursery.start_soon(try_rename, device, "tablet" if i % 2 else "TABLET")
        assert len(won) == 1
        assert len(refused) == len(devices) - 1
        names = [d.name for d in await store.list_devices(first.user_id)]
        assert [n for n in names if device_name_key(n) == "tablet"] == [won[0].name]


async def test_a_rename_racing_a_revocation_commits_before_it_or_not_at_all(store: Store) -> None:
    with trio.fail_after(CAP_S):
        for _ in range(10):
            device = await new_device(store, name="Phone")
            outcome: list[str] = []

            async def try_rename(device: DeviceRecord, outcome: list[str]) -> None:
                try:
                    await rename(store, device, "Renamed")
                    outcome.append("renamed")
                except NotFound:
                    outcome.append("not found")

            async def revoke(device: DeviceRecord) -> None:
                await store.revoke_device(device.device_id, now_ms=NOW)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(try_rename, device, outcome)
                nursery.start_soon(revoke, device)
            looked_up = await store.lookup_device(device.device_id)
            assert isinstance(looked_up, DeviceRecord)
            assert looked_up.revoked
            # Renamed only if the rename committed first; refused (and unchanged) otherwise.
            assert looked_up.name == ("Renamed" if outcome == ["renamed"] else "Phone")


# --- user summaries ------------------------------------------------------------------------------


async def test_a_user_summary_counts_live_and_revoked_devices_and_unexpired_events(store: Store) -> None:
    with trio.fail_after(CAP_S):
        phone = await new_device(store, name="Phone")
        laptop = await new_device(store, phone.user_id, name="Laptop")
        await new_device(store, phone.user_id, name="Old")
        await store.revoke_device((await store.list_devices(phone.user_id))[2].device_id, now_ms=NOW)
        ten = b'"12345678"'
        await store.append(append_request(phone, "e1", stream="a", body=ten, expires_at=NOW + 1000))
        await store.append(append_request(phone, "e2", stream="b", body=ten))
        await store.append(append_request(laptop, "e3", stream="b", body=b"1"))
        await store.append(append_request(laptop, "e4", stream="c", body=b"[]"))
        await new_device(store)  # another user's devices and events are not counted

        summary = await store.get_user(phone.user_id, now_ms=NOW, clock_skew_ms=SKEW_MS)
        assert summary == UserSummary(
            user_id=phone.user_id,
            created_at=NOW,
            devices=2,
            revoked_devices=1,
            streams=3,
            events=4,
            stored_bytes=23,
        )
        later = NOW + 1000 + SKEW_MS + 1  # e1 expired, so stream a holds nothing unexpired
        after = await store.get_user(phone.user_id, now_ms=later, clock_skew_ms=SKEW_MS)
        assert (after.streams, after.events, after.stored_bytes) == (2, 3, 13)


async def test_a_summary_of_an_unknown_user_is_not_found(store: Store) -> None:
    with trio.fail_after(CAP_S):
        with pytest.raises(NotFound):
            await store.get_user(UNKNOWN, now_ms=NOW, clock_skew_ms=SKEW_MS)


# --- deleting users ------------------------------------------------------------------------------


async def _populated_user(store: Store) -> tuple[DeviceRecord, DeviceRecord, DeviceRecord]:
    """A user with two live devices and a revoked one, three streams and five events (one expired)."""
    phone = await new_device(store, name="Phone")
    laptop = await new_device(store, phone.user_id, name="Laptop")
    old = await new_device(store, phone.user_id, name="Old")
    await store.append(append_request(old, "o1", stream="a"))
    await store.revoke_device(old.device_id, now_ms=NOW)
    await store.append(append_request(phone, "p1", stream="a", expires_at=NOW + 1))
    await store.append(append_request(phone, "p2", stream="b"))
    await store.append(append_request(laptop, "l1", stream="b"))
    await store.append(append_request(laptop, "l2", stream="c"))
    return phone, laptop, old


async def test_deleting_a_user_answers_the_rows_it_deleted(store: Store) -> None:
    with trio.fail_after(CAP_S):
        phone, _, _ = await _populated_user(store)
        later = NOW + 1 + SKEW_MS + 1  # p1 has expired but is still stored: it counts
        counts = await store.delete_user(phone.user_id, now_ms=later, remember_ms=REMEMBER_MS)
        assert counts == DeletedCounts(devices=3, streams=3, events=5)


async def test_deleting_an_unknown_user_is_not_found_and_a_user_is_deleted_once(store: Store) -> None:
    with trio.fail_after(CAP_S):
        with pytest.raises(NotFound):
            await store.delete_user(UNKNOWN, now_ms=NOW, remember_ms=REMEMBER_MS)
        user_id = await new_user(store)
        assert await store.delete_user(user_id, now_ms=NOW, remember_ms=REMEMBER_MS) == DeletedCounts(
            devices=0, streams=0, events=0
        )
        with pytest.raises(NotFound):
            await store.delete_user(user_id, now_ms=NOW, remember_ms=REMEMBER_MS)


async def test_nothing_of_a_deleted_user_is_found_afterwards(store: Store) -> None:
    with trio.fail_after(CAP_S):
        phone, laptop, old = await _populated_user(store)
        user_id = phone.user_id
        await store.delete_user(user_id, now_ms=NOW, remember_ms=REMEMBER_MS)

        assert user_id not in await store.list_users()
        assert await store.list_devices(user_id) == []
        with pytest.raises(NotFound):
            await store.get_user(user_id, now_ms=NOW, clock_skew_ms=SKEW_MS)
        assert (
            await store.list_streams(user_id, after=None, limit=10, now_ms=NOW, clock_skew_ms=SKEW_MS) == []
        )
        assert await store.recent_streams(user_id, limit=10, now_ms=NOW, clock_skew_ms=SKEW_MS) == ({}, False)
        for stream in ("a", "b", "c"):
            assert await store.stream_head(user_id, stream) == 0
            assert (
                await store.read_events(
                    user_id, stream, after=0, head=10, limit=10, now_ms=NOW, clock_skew_ms=SKEW_MS
                )
                == []
            )
        with pytest.raises(NotFound):
            await store.create_token(user_id=user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
        for device in (phone, laptop, old):
            with pytest.raises(NotFound):
                await store.revoke_device(device.device_id, now_ms=NOW)
            with pytest.raises(NotFound):
                await rename(store, device, "Again")


async def test_a_deleted_users_tokens_are_invalid_those_its_devices_issued_included(store: Store) -> None:
    with trio.fail_after(CAP_S):
        phone = await new_device(store)
        operator = await store.create_token(user_id=phone.user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
        pairing = await store.create_token(
            user_id=phone.user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS, issued_by=phone.device_id
        )
        await store.delete_user(phone.user_id, now_ms=NOW, remember_ms=REMEMBER_MS)
        for token in (operator, pairing):
            with pytest.raises(InvalidToken):
                await store.enroll(enrollment(token, name="Laptop"))


async def test_a_deleted_users_keys_and_names_are_free_again(store: Store) -> None:
    with trio.fail_after(CAP_S):
        phone = await new_device(store, name="Phone")
        await store.delete_user(phone.user_id, now_ms=NOW, remember_ms=REMEMBER_MS)
        other = await store.create_user(now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
        again = await store.enroll(enrollment(other.token, name="Phone", public_key=phone.public_key))
        assert again.public_key == phone.public_key
        assert again.device_id != phone.device_id


async def test_a_deleted_users_devices_are_deleted_devices_until_their_memory_expires(store: Store) -> None:
    with trio.fail_after(CAP_S):
        phone = await new_device(store, name="Phone")
        laptop = await new_device(store, phone.user_id, name="Laptop")
        old = await new_device(store, phone.user_id, name="Old")
        await store.revoke_device(old.device_id, now_ms=NOW + REMEMBER_MS)  # its log entry is not old
        await store.delete_user(phone.user_id, now_ms=NOW, remember_ms=REMEMBER_MS)
        until = NOW + REMEMBER_MS
        for device in (phone, laptop, old):
            assert await store.lookup_device(device.device_id) == DeletedDevice()
            assert await store.lookup_device(device.device_id, now_ms=until) == DeletedDevice()
            assert await store.lookup_device(device.device_id, now_ms=until + 1) == UnknownDevice()
        assert await store.lookup_device(UNKNOWN, now_ms=NOW) == UnknownDevice()
        # Without a time, the memory counts until housekeeping forgets it.
        assert await store.purge_housekeeping(now_ms=until, batch=100) == 0
        assert await store.lookup_device(phone.device_id) == DeletedDevice()
        assert await store.purge_housekeeping(now_ms=until + 1, batch=100) == 3
        assert await store.lookup_device(phone.device_id) == UnknownDevice()


async def test_an_append_by_a_device_of_a_deleted_user_is_account_deleted(store: Store) -> None:
    with trio.fail_after(CAP_S):
        phone = await new_device(store)
        await store.append(append_request(phone, "e1"))
        await store.delete_user(phone.user_id, now_ms=NOW, remember_ms=REMEMBER_MS)
        for event_id in ("e1", "e2"):  # neither a retry nor a new event
            with pytest.raises(AccountDeleted):
                await store.append(append_request(phone, event_id, received_at=NOW + 1))


async def test_deleting_a_user_leaves_other_users_as_they_were(store: Store) -> None:
    with trio.fail_after(CAP_S):
        phone, _, _ = await _populated_user(store)
        bob = await new_device(store, name="Phone")
        await store.append(append_request(bob, "p1", stream="a"))
        token = await store.create_token(
            user_id=bob.user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS, issued_by=bob.device_id
        )
        before = await store.get_user(bob.user_id, now_ms=NOW, clock_skew_ms=SKEW_MS)
        await store.delete_user(phone.user_id, now_ms=NOW, remember_ms=REMEMBER_MS)
        assert await store.list_users() == [bob.user_id]
        assert await store.lookup_device(bob.device_id) == bob
        assert await store.get_user(bob.user_id, now_ms=NOW, clock_skew_ms=SKEW_MS) == before
        events = await store.read_events(
            bob.user_id, "a", after=0, head=1, limit=10, now_ms=NOW, clock_skew_ms=SKEW_MS
        )
        assert [e.id for e in events] == ["p1"]
        await store.enroll(enrollment(token, name="Laptop"))
        assert (
            await store.append(append_request(bob, "p2", stream="a", expires_at=NOW + TTL_MS))
        ).event.seq == 2
