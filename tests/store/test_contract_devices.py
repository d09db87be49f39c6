"""The store contract for users, enrolment tokens and devices (PROTOCOL.md §2, §5), on every store."""

from __future__ import annotations

import pytest
import trio
from store_helpers import CAP_S, NOW, TOKEN_TTL_MS, enrollment, new_device, new_key, new_user

from relay.errors import DeviceRevoked, InvalidToken, KeyInUse, NameTaken, NotFound, TooManyDevices
from relay.store.base import DeviceRecord, Enrollment, Store, UnknownDevice

# --- users and tokens ----------------------------------------------------------------------------


async def test_a_new_user_comes_with_a_token_for_its_first_device(store: Store) -> None:
    with trio.fail_after(CAP_S):
        new = await store.create_user(now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
        assert new.token.expires_at == NOW + TOKEN_TTL_MS
        device = await store.enroll(enrollment(new.token, name="  Phone ", now_ms=NOW + 1))
        assert device.user_id == new.user_id
        assert device.created_at == NOW + 1
        assert not device.revoked
        assert await store.lookup_device(device.device_id) == device
        assert await store.list_devices(new.user_id) == [device]


async def test_users_are_listed_oldest_first(store: Store) -> None:
    with trio.fail_after(CAP_S):
        ids = [await new_user(store, now_ms=NOW + i) for i in (0, 1, 2)]
        assert await store.list_users() == ids


async def test_a_token_for_an_unknown_user_is_refused(store: Store) -> None:
    with trio.fail_after(CAP_S):
        with pytest.raises(NotFound):
            await store.create_token(
                user_id="00000000-0000-4000-8000-000000000000", now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS
            )


async def test_a_pairing_by_another_users_device_or_a_revoked_one_is_refused(store: Store) -> None:
    with trio.fail_after(CAP_S):
        alice = await new_device(store)
        bob = await new_device(store)
        with pytest.raises(NotFound):
            await store.create_token(
                user_id=alice.user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS, issued_by=bob.device_id
            )
        await store.revoke_device(alice.device_id, now_ms=NOW)
        with pytest.raises(DeviceRevoked):
            await store.create_token(
                user_id=alice.user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS, issued_by=alice.device_id
            )


# --- enrolment -----------------------------------------------------------------------------------


async def test_a_token_is_single_use(store: Store) -> None:
    with trio.fail_after(CAP_S):
        new = await store.create_user(now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
        await store.enroll(enrollment(new.token, name="Phone"))
        with pytest.raises(InvalidToken):
            await store.enroll(enrollment(new.token, name="Laptop"))


async def test_an_unknown_token_is_invalid(store: Store) -> None:
    with trio.fail_after(CAP_S):
        await new_user(store)
        unknown = Enrollment(
            token_hash=b"\0" * 32,
            public_key=new_key(),
            name="Phone",
            name_key="phone",
            max_devices=20,
            now_ms=NOW,
        )
        with pytest.raises(InvalidToken):
            await store.enroll(unknown)


async def test_a_token_is_valid_up_to_and_including_its_expiry(store: Store) -> None:
    with trio.fail_after(CAP_S):
        user_id = await new_user(store)
        late = await store.create_token(user_id=user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
        with pytest.raises(InvalidToken):
            await store.enroll(enrollment(late, now_ms=late.expires_at + 1))
        on_time = await store.create_token(user_id=user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
        await store.enroll(enrollment(on_time, now_ms=on_time.expires_at))


async def test_a_bound_token_enrols_only_its_key(store: Store) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(store)
        key = new_key()
        token = await store.create_token(
            user_id=first.user_id,
            now_ms=NOW,
            token_ttl_ms=TOKEN_TTL_MS,
            issued_by=first.device_id,
            bound_key=key,
        )
        with pytest.raises(InvalidToken):
            await store.enroll(enrollment(token, name="Laptop", public_key=new_key()))
        device = await store.enroll(enrollment(token, name="Laptop", public_key=key))
        assert device.public_key == key


async def test_names_collide_by_their_key(store: Store) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(store, name="Phone")
        for i, name in enumerate(("PHONE", "Ｐｈｏｎｅ", "phone")):
            token = await store.create_token(user_id=first.user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
            with pytest.raises(NameTaken):
                await store.enroll(enrollment(token, name=name))
            # The refusal left the token usable.
            await store.enroll(enrollment(token, name=f"Tablet {i}"))
        # Another user may use the name.
        await new_device(store, name="PHONE")


async def test_a_revoked_devices_name_is_free_again(store: Store) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(store, name="Phone")
        await store.revoke_device(first.device_id, now_ms=NOW)
        again = await new_device(store, first.user_id, name="phone")
        assert again.name == "phone"


async def test_a_key_is_enrolled_once_per_server_revoked_devices_included(store: Store) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(store)
        token = await store.create_token(user_id=first.user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
        with pytest.raises(KeyInUse):
            await store.enroll(enrollment(token, name="Laptop", public_key=first.public_key))
        await store.revoke_device(first.device_id, now_ms=NOW)
        other_user = await store.create_user(now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
        with pytest.raises(KeyInUse):
            await store.enroll(enrollment(other_user.token, name="Laptop", public_key=first.public_key))
        # Both tokens are still usable with another key.
        await store.enroll(enrollment(token, name="Laptop"))
        await store.enroll(enrollment(other_user.token, name="Laptop"))


async def test_too_many_devices_counts_non_revoked_devices(store: Store) -> None:
    with trio.fail_after(CAP_S):
        user_id = await new_user(store)
        devices: list[DeviceRecord] = []
        for i in range(3):
            token = await store.create_token(user_id=user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
            devices.append(await store.enroll(enrollment(token, name=f"d{i}", max_devices=3)))
        token = await store.create_token(user_id=user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
        with pytest.raises(TooManyDevices):
            await store.enroll(enrollment(token, name="d3", max_devices=3))
        await store.revoke_device(devices[0].device_id, now_ms=NOW)
        await store.enroll(enrollment(token, name="d3", max_devices=3))


async def test_the_name_is_checked_before_the_key_and_the_device_count(store: Store) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(store, name="Phone")
        token = await store.create_token(user_id=first.user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
        with pytest.raises(NameTaken):
            await store.enroll(enrollment(token, name="Phone", public_key=first.public_key, max_devices=1))
        with pytest.raises(KeyInUse):
            await store.enroll(enrollment(token, name="Other", public_key=first.public_key, max_devices=1))


# --- revocation and lookups ----------------------------------------------------------------------


async def test_revoking_voids_the_unused_tokens_the_device_issued(store: Store) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(store)
        pairing = await store.create_token(
            user_id=first.user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS, issued_by=first.device_id
        )
        operator = await store.create_token(user_id=first.user_id, now_ms=NOW, token_ttl_ms=TOKEN_TTL_MS)
        revoked = await store.revoke_device(first.device_id, now_ms=NOW + 5)
        assert revoked.revoked_at == NOW + 5
        with pytest.raises(InvalidToken):
            await store.enroll(enrollment(pairing, name="Laptop"))
        await store.enroll(enrollment(operator, name="Laptop"))


async def test_revoking_is_idempotent_and_scoped_to_the_user(store: Store) -> None:
    with trio.fail_after(CAP_S):
        alice = await new_device(store)
        bob = await new_device(store)
        with pytest.raises(NotFound):
            await store.revoke_device(alice.device_id, now_ms=NOW, user_id=bob.user_id)
        with pytest.raises(NotFound):
            await store.revoke_device("00000000-0000-4000-8000-000000000000", now_ms=NOW)
        once = await store.revoke_device(alice.device_id, now_ms=NOW + 1, user_id=alice.user_id)
        twice = await store.revoke_device(alice.device_id, now_ms=NOW + 2)
        assert once == twice
        assert twice.revoked_at == NOW + 1
        looked_up = await store.lookup_device(alice.device_id)
        assert isinstance(looked_up, DeviceRecord)
        assert looked_up.revoked
        assert await store.list_devices(alice.user_id) == [once]


async def test_lookup_of_an_unknown_device(store: Store) -> None:
    with trio.fail_after(CAP_S):
        assert await store.lookup_device("00000000-0000-4000-8000-000000000000") == UnknownDevice()


async def test_touch_device_records_when_it_was_last_seen(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        await store.touch_device(device.device_id, now_ms=NOW + 10)
        await store.touch_device(device.device_id, now_ms=NOW + 5)  # never goes back
        await store.touch_device("00000000-0000-4000-8000-000000000000", now_ms=NOW)  # unknown: nothing
        looked_up = await store.lookup_device(device.device_id)
        assert isinstance(looked_up, DeviceRecord)
        assert looked_up.last_seen_at == NOW + 10


# --- secrets -------------------------------------------------------------------------------------


async def test_secrets_are_made_once_and_kept(store: Store) -> None:
    with trio.fail_after(CAP_S):
        first = await store.load_or_create_secrets()
        assert len(first.signing_seed) == 32
        assert len(first.token_secret) == 32
        assert first.signing_seed != first.token_secret
        assert await store.load_or_create_secrets() == first
