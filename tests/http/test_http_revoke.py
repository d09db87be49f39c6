"""DELETE /v1/devices/{id} (PROTOCOL.md §5), the device path's routing, and isolation between users."""

from __future__ import annotations

import httpx
import pytest
import trio
from http_support import T0_MS, Relay, open_relay
from signed_support import FlakyBus, authorization, connect, error, first_device, names, pair, send, signed
from trio.testing import MockClock

from relay.config import Settings

UNKNOWN_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


# --- DELETE /v1/devices/{id} ---------------------------------------------------------------------------


async def test_revoking_a_device_is_204_closes_its_sessions_and_tells_the_others(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    phone_session = await connect(relay, phone)
    laptop_session = await connect(relay, laptop)

    answer = await signed(relay, phone, "DELETE", f"/v1/devices/{laptop.device_id}")

    assert (answer.status, answer.body) == (204, None)
    assert laptop_session.codes() == ["device_revoked"]
    notice = {
        "type": "device",
        "change": "revoked",
        "device_id": laptop.device_id,
        "name": "Laptop",
        "at": T0_MS,
    }
    assert phone_session.frames[-1] == notice
    [stored] = [d for d in await relay.store.list_devices(phone.user_id) if d.device_id == laptop.device_id]
    assert stored.revoked_at == T0_MS


async def test_revoking_an_already_revoked_device_is_204_and_announces_nothing_more(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    assert (await signed(relay, phone, "DELETE", f"/v1/devices/{laptop.device_id}")).status == 204
    await trio.sleep(1)
    phone_session = await connect(relay, phone)

    again = await signed(relay, phone, "DELETE", f"/v1/devices/{laptop.device_id}")

    assert again.status == 204
    assert phone_session.frames == []
    [stored] = [d for d in await relay.store.list_devices(phone.user_id) if d.device_id == laptop.device_id]
    assert stored.revoked_at == T0_MS  # the first revocation's time


async def test_a_device_may_revoke_itself_and_is_then_403(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    session = await connect(relay, phone)
    assert (await signed(relay, phone, "DELETE", f"/v1/devices/{phone.device_id}")).status == 204
    assert session.codes() == ["device_revoked"]
    after = await signed(relay, phone, "GET", "/v1/devices")
    assert (after.status, error(after)["code"]) == (403, "device_revoked")


async def test_revoking_an_unknown_device_is_404(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    answer = await signed(relay, phone, "DELETE", f"/v1/devices/{UNKNOWN_ID}")
    assert (answer.status, error(answer)["code"]) == (404, "not_found")


async def test_a_body_or_query_on_a_revocation_is_400_and_revokes_nothing(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    with_body = await signed(relay, phone, "DELETE", f"/v1/devices/{laptop.device_id}", json={})
    with_query = await signed(relay, phone, "DELETE", f"/v1/devices/{laptop.device_id}?force=1")
    assert (with_body.status, error(with_body)["path"]) == (400, "$")
    assert (with_query.status, error(with_query)["path"]) == (400, "$.query.force")
    assert not any(d.revoked for d in await relay.store.list_devices(phone.user_id))


async def test_a_revocation_stands_when_the_bus_cannot_announce_it(
    settings: Settings, autojump_clock: MockClock
) -> None:
    async with open_relay(settings, bus=FlakyBus(notices_down=True)) as relay:
        phone = await first_device(relay)
        laptop = await pair(relay, phone, "Laptop")
        answer = await signed(relay, phone, "DELETE", f"/v1/devices/{laptop.device_id}")
        after = await signed(relay, laptop, "GET", "/v1/devices")
    assert (answer.status, after.status) == (204, 403)


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
@pytest.mark.parametrize(
    "segment",
    [
        "0F8FAD5B-D9CB-469F-A165-70867728950E",
        "0f8fad5bd9cb469fa16570867728950e",
        "{0f8fad5b-d9cb-469f-a165-70867728950e}",
        "0f8fad5b-d9cb-469f-a165-70867728950",
        "me",
    ],
)
async def test_a_path_id_that_is_not_a_lowercase_uuid_is_404_before_the_signature(
    relay: Relay, autojump_clock: MockClock, method: str, segment: str
) -> None:
    phone = await first_device(relay)
    unsigned = await send(relay, method, f"/v1/devices/{segment}")
    signed_answer = await signed(relay, phone, method, f"/v1/devices/{segment}", json={"name": "X"})
    for answer in (unsigned, signed_answer):
        assert (answer.status, error(answer)["code"]) == (404, "not_found")


async def test_a_known_device_path_with_another_method_is_405_naming_patch_and_delete(
    relay: Relay, autojump_clock: MockClock
) -> None:
    answer = await send(relay, "GET", f"/v1/devices/{UNKNOWN_ID}")
    assert answer.status == 405
    assert {m.strip() for m in answer.headers["Allow"].split(",")} >= {"PATCH", "DELETE"}


async def test_a_204_has_no_body_and_no_content_type_on_the_wire(
    relay: Relay, autojump_clock: MockClock
) -> None:
    # Quart's test client invents a Content-Type for a body-less answer; httpx's ASGI transport does not.
    phone = await first_device(relay)
    target = f"/v1/devices/{phone.device_id}"
    transport = httpx.ASGITransport(app=relay.app)
    with trio.fail_after(10):
        async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
            response = await client.delete(
                target, headers={"Authorization": authorization(relay, phone, "DELETE", target)}
            )
    assert (response.status_code, response.content, response.headers.get("content-type")) == (204, b"", None)


# --- isolation between users ----------------------------------------------------------------------------


async def test_another_users_device_cannot_list_rename_or_revoke_a_users_devices(
    relay: Relay, autojump_clock: MockClock
) -> None:
    alice = await first_device(relay, "Alice's phone")
    alices_laptop = await pair(relay, alice, "Alice's laptop")
    bob = await first_device(relay, "Bob's phone")
    await connect(relay, alices_laptop)
    alice_session = await connect(relay, alice)

    listed = await signed(relay, bob, "GET", "/v1/devices")
    listed_revoked = await signed(relay, bob, "GET", "/v1/devices?revoked=true")
    renamed = await signed(
        relay, bob, "PATCH", f"/v1/devices/{alices_laptop.device_id}", json={"name": "Mine"}
    )
    revoked = await signed(relay, bob, "DELETE", f"/v1/devices/{alices_laptop.device_id}")
    unknown = await signed(relay, bob, "DELETE", f"/v1/devices/{UNKNOWN_ID}")

    assert names(listed.body["devices"]) == ["Bob's phone"]
    assert listed.body["devices"][0]["online"] is False
    assert listed_revoked.body["devices"] == []
    for answer in (renamed, revoked):
        assert (answer.status, error(answer)["code"]) == (404, "not_found")
        assert error(answer)["message"] == error(unknown)["message"]  # the same answer as an unknown id
    stored = {d.device_id: d for d in await relay.store.list_devices(alice.user_id)}
    assert stored[alices_laptop.device_id].name == "Alice's laptop"
    assert not stored[alices_laptop.device_id].revoked
    assert alice_session.frames == []
    assert alice_session.ended == []


async def test_a_user_may_reuse_a_name_another_user_holds(relay: Relay, autojump_clock: MockClock) -> None:
    await first_device(relay, "Phone")
    bob = await first_device(relay, "Bob's phone")
    answer = await signed(relay, bob, "PATCH", f"/v1/devices/{bob.device_id}", json={"name": "Phone"})
    assert answer.status == 200
