"""DELETE /v1/user (PROTOCOL.md §5): everything of the user goes, its devices are answered 410 meanwhile."""

from __future__ import annotations

from pathlib import Path

import attrs
import trio
from http_support import Relay, open_relay
from signed_support import (
    connect,
    error,
    first_device,
    handshake_refusal,
    pair,
    signed,
    store_events,
)
from trio.testing import MockClock

from relay.bus.local import LocalBus
from relay.config import Settings
from relay.errors import BusUnavailable
from relay.store.base import DeletedDevice, UnknownDevice


async def test_deleting_the_user_answers_the_counts_of_what_was_deleted(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    tablet = await pair(relay, phone, "Tablet")
    await signed(relay, phone, "DELETE", f"/v1/devices/{tablet.device_id}")  # revoked devices count too
    await store_events(relay, phone, "notes", 3)
    await store_events(relay, laptop, "photos", 2)

    answer = await signed(relay, laptop, "DELETE", "/v1/user")

    assert answer.status == 200
    assert answer.body == {"deleted": {"devices": 3, "streams": 2, "events": 5}}
    assert phone.user_id not in await relay.store.list_users()


async def test_after_deletion_the_devices_signed_requests_are_410_and_their_handshakes_account_deleted(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    assert (await signed(relay, phone, "DELETE", "/v1/user")).status == 200

    for device in (phone, laptop):
        for method, target in (("GET", "/v1/devices"), ("POST", "/v1/pairings"), ("DELETE", "/v1/user")):
            answer = await signed(relay, device, method, target, json={} if method == "POST" else None)
            assert answer.status == 410
            assert error(answer) == {
                "code": "account_deleted",
                "message": "This account has been deleted",
                "request_id": answer.headers["X-Request-ID"],
            }
        frame, close_code = await handshake_refusal(relay, device)
        assert (frame["type"], frame["code"], close_code) == ("error", "account_deleted", 1008)


async def test_deletion_ends_every_live_session_of_the_user_and_no_other(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    bob = await first_device(relay, "Bob's phone")
    sessions = [await connect(relay, phone), await connect(relay, laptop)]
    bobs = await connect(relay, bob)

    assert (await signed(relay, phone, "DELETE", "/v1/user")).status == 200

    assert [s.codes() for s in sessions] == [["account_deleted"], ["account_deleted"]]
    assert bobs.ended == []
    assert (await signed(relay, bob, "GET", "/v1/devices")).status == 200


async def test_deleted_device_ids_are_remembered_for_max_ttl_s_then_unknown(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    settings = Settings(data_dir=tmp_path, max_ttl_s=3600, default_ttl_s=600)
    async with open_relay(settings) as relay:
        phone = await first_device(relay)
        assert (await signed(relay, phone, "DELETE", "/v1/user")).status == 200
        await trio.sleep(3600)
        assert isinstance(
            await relay.store.lookup_device(phone.device_id, now_ms=relay.clock.now_ms()), DeletedDevice
        )
        at_bound = await signed(relay, phone, "GET", "/v1/devices")
        await trio.sleep(0.001)
        after = await signed(relay, phone, "GET", "/v1/devices")
        assert isinstance(
            await relay.store.lookup_device(phone.device_id, now_ms=relay.clock.now_ms()), UnknownDevice
        )
    assert at_bound.status == 410
    assert (after.status, error(after)["code"]) == (401, "unauthorized")


async def test_another_user_cannot_delete_a_user(relay: Relay, autojump_clock: MockClock) -> None:
    alice = await first_device(relay, "Alice's phone")
    bob = await first_device(relay, "Bob's phone")
    await store_events(relay, alice, "notes", 2)

    answer = await signed(relay, bob, "DELETE", "/v1/user")

    assert answer.body == {"deleted": {"devices": 1, "streams": 0, "events": 0}}
    assert (await signed(relay, alice, "GET", "/v1/devices")).status == 200
    assert await relay.store.stream_head(alice.user_id, "notes") == 2


async def test_a_body_or_a_query_on_the_deletion_is_400_and_deletes_nothing(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    with_body = await signed(relay, phone, "DELETE", "/v1/user", json={"confirm": True})
    with_query = await signed(relay, phone, "DELETE", "/v1/user?confirm=yes")
    assert (with_body.status, error(with_body)["path"]) == (400, "$")
    assert (with_query.status, error(with_query)["path"]) == (400, "$.query.confirm")
    assert phone.user_id in await relay.store.list_users()


async def test_a_revoked_device_cannot_delete_its_user(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    await signed(relay, phone, "DELETE", f"/v1/devices/{laptop.device_id}")
    answer = await signed(relay, laptop, "DELETE", "/v1/user")
    assert (answer.status, error(answer)["code"]) == (403, "device_revoked")
    assert phone.user_id in await relay.store.list_users()


@attrs.define(eq=False)
class DownBus(LocalBus):
    async def announce_user_deleted(self, user_id: str) -> None:
        raise BusUnavailable(detail="redis went away")


async def test_a_deletion_stands_when_the_bus_cannot_announce_it(
    settings: Settings, autojump_clock: MockClock
) -> None:
    async with open_relay(settings, bus=DownBus()) as relay:
        phone = await first_device(relay)
        answer = await signed(relay, phone, "DELETE", "/v1/user")
        users = await relay.store.list_users()
    assert answer.status == 200
    assert phone.user_id not in users


@attrs.define(eq=False)
class HangingBus(LocalBus):
    async def announce_user_deleted(self, user_id: str) -> None:
        await trio.sleep_forever()


async def test_a_bus_that_hangs_delays_the_answer_by_at_most_the_bus_timeout(
    settings: Settings, autojump_clock: MockClock
) -> None:
    from relay.http.notices import BUS_CALL_TIMEOUT_S

    async with open_relay(settings, bus=HangingBus()) as relay:
        phone = await first_device(relay)
        started = trio.current_time()
        answer = await signed(relay, phone, "DELETE", "/v1/user")
        waited = trio.current_time() - started
    assert answer.status == 200
    assert waited == BUS_CALL_TIMEOUT_S
