"""GET /v1/devices and PATCH /v1/devices/{id} (PROTOCOL.md §6): listing, presence, renames."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from http_support import T0_MS, Relay, open_relay
from signed_support import FlakyBus, connect, error, first_device, names, pair, signed
from trio.testing import MockClock

from relay.config import Settings
from relay.store.sqlite import SqliteStore

UNKNOWN_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


# --- GET /v1/devices -----------------------------------------------------------------------------


async def test_the_list_shows_the_users_devices_with_presence_and_the_current_one(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    await trio.sleep(1)
    laptop = await pair(relay, phone, "Laptop")
    await connect(relay, laptop)

    answer = await signed(relay, phone, "GET", "/v1/devices")

    assert answer.status == 200
    assert answer.body == {
        "devices": [
            {
                "device_id": phone.device_id,
                "name": "Phone",
                "created_at": T0_MS,
                "last_seen_at": None,
                "online": False,
                "current": True,
            },
            {
                "device_id": laptop.device_id,
                "name": "Laptop",
                "created_at": T0_MS + 1000,
                "last_seen_at": None,
                "online": True,
                "current": False,
            },
        ]
    }
    assert list(answer.body["devices"][0]) == [
        "device_id",
        "name",
        "created_at",
        "last_seen_at",
        "online",
        "current",
    ]


async def test_last_seen_at_is_when_the_devices_last_session_ended(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    await relay.store.touch_device(phone.device_id, now_ms=T0_MS + 5)
    answer = await signed(relay, phone, "GET", "/v1/devices")
    assert answer.body["devices"][0]["last_seen_at"] == T0_MS + 5


async def test_revoked_devices_are_listed_only_with_revoked_true_and_carry_revoked_at(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    await trio.sleep(2)
    assert (await signed(relay, phone, "DELETE", f"/v1/devices/{laptop.device_id}")).status == 204

    default = await signed(relay, phone, "GET", "/v1/devices")
    explicit = await signed(relay, phone, "GET", "/v1/devices?revoked=false")
    revoked = await signed(relay, phone, "GET", "/v1/devices?revoked=true")

    assert names(default.body["devices"]) == names(explicit.body["devices"]) == ["Phone"]
    assert "revoked_at" not in default.body["devices"][0]
    [gone] = revoked.body["devices"]
    assert gone["device_id"] == laptop.device_id
    assert gone["revoked_at"] == T0_MS + 2000
    assert (gone["current"], gone["online"]) == (False, False)


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("?revoked=TRUE", "$.query.revoked"),
        ("?revoked=1", "$.query.revoked"),
        ("?revoked=", "$.query.revoked"),
        ("?revoked", "$.query.revoked"),
        ("?revoked=true&revoked=true", "$.query.revoked"),
        ("?limit=10", "$.query.limit"),
        ("?revoked=true&x=1", "$.query.x"),
        ("?odd%20name=1", "$.query['odd name']"),
    ],
)
async def test_any_other_query_parameter_or_value_is_400_with_its_path(
    relay: Relay, autojump_clock: MockClock, query: str, path: str
) -> None:
    phone = await first_device(relay)
    answer = await signed(relay, phone, "GET", f"/v1/devices{query}")
    assert (answer.status, error(answer)["code"], error(answer)["path"]) == (400, "bad_request", path)


async def test_a_body_on_the_list_is_400(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    answer = await signed(relay, phone, "GET", "/v1/devices", json={"revoked": True})
    assert (answer.status, error(answer)["path"]) == (400, "$")


async def test_the_list_is_503_when_presence_cannot_be_read(relay: Relay, autojump_clock: MockClock) -> None:
    bus = FlakyBus(presence_down=True)
    async with open_relay(relay.settings, bus=bus) as other:
        phone = await first_device(other)
        answer = await signed(other, phone, "GET", "/v1/devices")
    assert (answer.status, error(answer)["code"]) == (503, "unavailable")
    assert answer.headers["Retry-After"] == "1"


# --- PATCH /v1/devices/{id} ---------------------------------------------------------------------------


async def test_a_rename_answers_the_device_with_its_stored_name_and_is_announced(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    phone_session = await connect(relay, phone)
    laptop_session = await connect(relay, laptop)

    answer = await signed(
        relay, phone, "PATCH", f"/v1/devices/{laptop.device_id}", json={"name": "  Work laptop "}
    )

    assert answer.status == 200
    assert answer.body == {
        "device_id": laptop.device_id,
        "name": "Work laptop",
        "created_at": T0_MS,
        "last_seen_at": None,
        "online": True,
        "current": False,
    }
    notice = {
        "type": "device",
        "change": "renamed",
        "device_id": laptop.device_id,
        "name": "Work laptop",
        "at": T0_MS,
    }
    assert notice in phone_session.frames
    assert notice in laptop_session.frames  # a renamed device's own session hears it too
    [stored] = [d for d in await relay.store.list_devices(phone.user_id) if d.device_id == laptop.device_id]
    assert stored.name == "Work laptop"


async def test_a_device_may_rename_itself_and_change_only_the_case(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    answer = await signed(relay, phone, "PATCH", f"/v1/devices/{phone.device_id}", json={"name": "PHONE"})
    assert (answer.status, answer.body["name"], answer.body["current"]) == (200, "PHONE", True)


async def test_a_name_another_device_holds_is_409_name_taken(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    answer = await signed(
        relay, phone, "PATCH", f"/v1/devices/{laptop.device_id}", json={"name": "ｐｈｏｎｅ"}
    )
    assert (answer.status, error(answer)["code"]) == (409, "name_taken")


async def test_a_revoked_devices_name_is_free_again(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    await signed(relay, phone, "DELETE", f"/v1/devices/{laptop.device_id}")
    answer = await signed(relay, phone, "PATCH", f"/v1/devices/{phone.device_id}", json={"name": "Laptop"})
    assert answer.status == 200


async def test_two_concurrent_renames_to_one_name_let_exactly_one_win(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    tablet = await pair(relay, phone, "Tablet")
    statuses: dict[str, int] = {}

    async def rename(device_id: str) -> None:
        answer = await signed(relay, phone, "PATCH", f"/v1/devices/{device_id}", json={"name": "Shared"})
        statuses[device_id] = answer.status

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rename, laptop.device_id)
            nursery.start_soon(rename, tablet.device_id)

    assert sorted(statuses.values()) == [200, 409]
    listed = await signed(relay, phone, "GET", "/v1/devices")
    assert sorted(names(listed.body["devices"])) == sorted(
        ["Phone", "Shared", "Laptop" if statuses[laptop.device_id] == 409 else "Tablet"]
    )


async def test_two_concurrent_renames_to_one_name_on_sqlite_let_the_unique_index_pick_one(
    tmp_path: Path,
) -> None:
    # Real time (the SQLite store works in threads); the database's unique index decides.
    store = await SqliteStore.open(tmp_path)
    async with open_relay(Settings(data_dir=tmp_path), store) as relay:  # type: ignore[arg-type]
        phone = await first_device(relay)
        laptop = await pair(relay, phone, "Laptop")
        tablet = await pair(relay, phone, "Tablet")
        statuses: list[int] = []

        async def rename(device_id: str) -> None:
            answer = await signed(relay, phone, "PATCH", f"/v1/devices/{device_id}", json={"name": "SHARED"})
            statuses.append(answer.status)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for device in (laptop, tablet) * 3:
                    nursery.start_soon(rename, device.device_id)
        listed = await signed(relay, phone, "GET", "/v1/devices")

    assert sorted(statuses) == [200, 200, 200, 409, 409, 409]  # one device wins, then keeps its name
    assert [n.casefold() for n in names(listed.body["devices"])].count("shared") == 1


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b"", "$"),
        (b"[]", "$"),
        (b"{}", "$.name"),
        (b'{"name": null}', "$.name"),
        (b'{"name": ""}', "$.name"),
        (b'{"name": "   "}', "$.name"),
        (b'{"name": 7}', "$.name"),
        (b'{"name": "' + b"x" * 65 + b'"}', "$.name"),
        (b'{"name": "tab\\there"}', "$.name"),
        (b'{"name": "", "extra": 1}', "$.extra"),
        (b'{"Name": "Phone"}', "$.Name"),
    ],
)
async def test_a_malformed_rename_is_400_with_a_path(
    relay: Relay, autojump_clock: MockClock, body: bytes, path: str
) -> None:
    phone = await first_device(relay)
    answer = await signed(relay, phone, "PATCH", f"/v1/devices/{phone.device_id}", body=body)
    assert (answer.status, error(answer)["code"], error(answer)["path"]) == (400, "bad_request", path)


async def test_renaming_an_unknown_or_revoked_device_is_404(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    await signed(relay, phone, "DELETE", f"/v1/devices/{laptop.device_id}")

    unknown = await signed(relay, phone, "PATCH", f"/v1/devices/{UNKNOWN_ID}", json={"name": "X"})
    revoked = await signed(relay, phone, "PATCH", f"/v1/devices/{laptop.device_id}", json={"name": "X"})

    for answer in (unknown, revoked):
        assert (answer.status, error(answer)) == (
            404,
            {"code": "not_found", "message": "No such device", "request_id": answer.headers["X-Request-ID"]},
        )


async def test_a_rename_stands_when_the_bus_cannot_announce_it_or_tell_presence(
    settings: Settings, autojump_clock: MockClock
) -> None:
    bus = FlakyBus()
    async with open_relay(settings, bus=bus) as relay:
        phone = await first_device(relay)
        bus.notices_down = bus.presence_down = True
        answer = await signed(relay, phone, "PATCH", f"/v1/devices/{phone.device_id}", json={"name": "Mine"})
        [stored] = await relay.store.list_devices(phone.user_id)
    assert (answer.status, answer.body["name"], answer.body["online"]) == (200, "Mine", False)
    assert stored.name == "Mine"
