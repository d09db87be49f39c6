"""POST /v1/pairings (PROTOCOL.md §2): tokens for the user's next device, bound or not, single use."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from http_support import T0_MS, Relay, enroll_body, open_relay
from signed_support import enroll_with, error, first_device, pair, server_key, signed
from trio.testing import MockClock

from relay import crypto
from relay.client.http import parse_pairing_uri
from relay.config import Settings


async def test_a_pairing_answers_201_with_a_token_its_expiry_and_a_uri(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)

    answer = await signed(relay, phone, "POST", "/v1/pairings", json={})

    assert answer.status == 201
    assert list(answer.body) == ["token", "expires_at", "uri"]
    token = answer.body["token"]
    assert crypto.b64decode(token, crypto.TOKEN_BYTES) is not None
    assert answer.body["expires_at"] == T0_MS + relay.settings.token_ttl_s * 1000
    assert answer.body["uri"] == (
        f"relay:pair?url=http%3A%2F%2Flocalhost&token={token}&server_key={server_key(relay)}"
    )
    assert answer.headers["Cache-Control"] == "no-store"


async def test_the_uri_is_what_the_reference_client_parses(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    answer = await signed(
        relay, phone, "POST", "/v1/pairings", json={}, headers={"Host": "relay.example:8443"}
    )
    parsed = parse_pairing_uri(answer.body["uri"])
    assert (parsed.url, parsed.token, parsed.server_key) == (
        "http://relay.example:8443",
        answer.body["token"],
        server_key(relay),
    )


async def test_the_host_is_lower_cased_and_a_default_port_left_out(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    answer = await signed(relay, phone, "POST", "/v1/pairings", json={}, headers={"Host": "Relay.Example:80"})
    assert parse_pairing_uri(answer.body["uri"]).url == "http://relay.example"


async def test_the_uri_uses_relay_public_url_when_set(tmp_path: Path, autojump_clock: MockClock) -> None:
    settings = Settings(data_dir=tmp_path, public_url="https://relay.example.org/base")
    async with open_relay(settings) as relay:
        phone = await first_device(relay)
        answer = await signed(
            relay, phone, "POST", "/v1/pairings", json={}, headers={"Host": "10.0.0.1:8080"}
        )
    assert answer.body["uri"].startswith("relay:pair?url=https%3A%2F%2Frelay.example.org%2Fbase&token=")


async def test_without_a_usable_host_and_public_url_the_pairing_is_400(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    answer = await signed(relay, phone, "POST", "/v1/pairings", json={}, headers={"Host": "bad host/x"})
    assert (answer.status, error(answer)["path"]) == (400, "$.headers.host")


async def test_a_pairing_token_enrols_another_device_of_the_same_user(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    assert laptop.user_id == phone.user_id
    listed = await signed(relay, laptop, "GET", "/v1/devices")
    assert [d["name"] for d in listed.body["devices"]] == ["Phone", "Laptop"]


async def test_a_pairing_token_is_single_use(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    token = (await signed(relay, phone, "POST", "/v1/pairings", json={})).body["token"]
    await enroll_with(relay, token, "Laptop")

    again = await relay.enroll(enroll_body(token, crypto.SigningKey.generate(), "Tablet"))

    assert (again.status, error(again)["code"]) == (401, "invalid_token")


async def test_a_bound_pairing_token_enrols_only_its_key(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    bound = crypto.SigningKey.generate()
    answer = await signed(relay, phone, "POST", "/v1/pairings", json={"public_key": bound.public_key_b64})
    token = answer.body["token"]

    other = await relay.enroll(enroll_body(token, crypto.SigningKey.generate(), "Intruder"))
    mine = await relay.enroll(enroll_body(token, bound, "Laptop"))

    assert answer.status == 201
    assert (other.status, error(other)["code"]) == (401, "invalid_token")
    assert mine.status == 201
    assert mine.body["user_id"] == phone.user_id


async def test_a_null_public_key_is_an_unbound_token(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    answer = await signed(relay, phone, "POST", "/v1/pairings", json={"public_key": None})
    assert answer.status == 201
    await enroll_with(relay, answer.body["token"], "Laptop")


async def test_a_pairing_token_is_valid_until_its_expiry_and_invalid_one_millisecond_later(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    on_time = (await signed(relay, phone, "POST", "/v1/pairings", json={})).body["token"]
    late = (await signed(relay, phone, "POST", "/v1/pairings", json={})).body["token"]
    await trio.sleep(relay.settings.token_ttl_s)

    await enroll_with(relay, on_time, "Laptop")
    await trio.sleep(0.001)
    answer = await relay.enroll(enroll_body(late, crypto.SigningKey.generate(), "Tablet"))

    assert (answer.status, error(answer)["code"]) == (401, "invalid_token")


async def test_the_token_lifetime_follows_relay_token_ttl_s(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    async with open_relay(Settings(data_dir=tmp_path, token_ttl_s=60)) as relay:
        phone = await first_device(relay)
        answer = await signed(relay, phone, "POST", "/v1/pairings", json={})
        assert answer.body["expires_at"] == relay.clock.now_ms() + 60_000


async def test_revoking_a_device_voids_the_unused_tokens_it_issued(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    by_laptop = (await signed(relay, laptop, "POST", "/v1/pairings", json={})).body["token"]
    by_phone = (await signed(relay, phone, "POST", "/v1/pairings", json={})).body["token"]

    assert (await signed(relay, phone, "DELETE", f"/v1/devices/{laptop.device_id}")).status == 204
    voided = await relay.enroll(enroll_body(by_laptop, crypto.SigningKey.generate(), "Tablet"))

    assert (voided.status, error(voided)["code"]) == (401, "invalid_token")
    await enroll_with(relay, by_phone, "Tablet")  # the other device's token is untouched


async def test_a_pairing_by_another_user_enrols_into_that_user_only(
    relay: Relay, autojump_clock: MockClock
) -> None:
    alice = await first_device(relay, "Alice's phone")
    bob = await first_device(relay, "Bob's phone")
    bobs_laptop = await pair(relay, bob, "Laptop")
    assert bobs_laptop.user_id == bob.user_id != alice.user_id
    alices = await signed(relay, alice, "GET", "/v1/devices")
    assert [d["name"] for d in alices.body["devices"]] == ["Alice's phone"]


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b"", "$"),
        (b"[]", "$"),
        (b"null", "$"),
        (b'{"public_key": null, "public_key": null}', "$"),
        (b'{"publicKey": "x"}', "$.publicKey"),
        (b'{"public_key": null, "ttl": 60}', "$.ttl"),
        (b'{"public_key": "abc"}', "$.public_key"),
        (b'{"public_key": 7}', "$.public_key"),
        (b'{"public_key": "' + crypto.b64encode(bytes(33)).encode() + b'"}', "$.public_key"),
        (b'{"public_key": "' + crypto.b64encode(bytes(32)).encode() + b'="}', "$.public_key"),
    ],
)
async def test_a_malformed_pairing_body_is_400_with_a_path(
    relay: Relay, autojump_clock: MockClock, body: bytes, path: str
) -> None:
    phone = await first_device(relay)
    answer = await signed(relay, phone, "POST", "/v1/pairings", body=body)
    assert (answer.status, error(answer)["code"], error(answer)["path"]) == (400, "bad_request", path)


async def test_an_unknown_query_parameter_is_400(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    answer = await signed(relay, phone, "POST", "/v1/pairings?ttl=60", json={})
    assert (answer.status, error(answer)["path"]) == (400, "$.query.ttl")


async def test_a_pairing_by_a_revoked_device_is_403(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    await signed(relay, laptop, "DELETE", f"/v1/devices/{laptop.device_id}")
    answer = await signed(relay, laptop, "POST", "/v1/pairings", json={})
    assert (answer.status, error(answer)["code"]) == (403, "device_revoked")


async def test_another_method_on_pairings_is_405_naming_post(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    answer = await signed(relay, phone, "GET", "/v1/pairings")
    assert answer.status == 405
    assert "POST" in answer.headers["Allow"]
