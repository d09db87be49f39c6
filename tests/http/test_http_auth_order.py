"""Signed HTTP requests (PROTOCOL.md §3): time, nonces, revoked and deleted devices, the order of checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from http_support import Answer, Relay, open_relay
from signed_support import assert_unauthorized, authorization, error, first_device, pair, send, signed
from trio.testing import MockClock
from werkzeug.datastructures import Headers

from relay import crypto
from relay.config import Settings


async def list_with(relay: Relay, value: str) -> Answer:
    return await send(relay, "GET", "/v1/devices", headers=Headers({"Authorization": value}))


# --- time and nonces ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset_ms", "status"),
    [(-300_000, 200), (-300_001, 401), (300_000, 200), (300_001, 401), (0, 200)],
    ids=["at-the-past-bound", "one-ms-past-the-past-bound", "at-the-future-bound", "one-ms-beyond", "now"],
)
async def test_ts_is_accepted_within_the_clock_skew_bounds_inclusive(
    relay: Relay, autojump_clock: MockClock, offset_ms: int, status: int
) -> None:
    phone = await first_device(relay)
    answer = await signed(relay, phone, "GET", "/v1/devices", ts=relay.clock.now_ms() + offset_ms)
    if status == 401:
        assert_unauthorized(relay, answer)
    else:
        assert answer.status == 200


async def test_the_skew_bound_follows_the_setting(tmp_path: Path, autojump_clock: MockClock) -> None:
    async with open_relay(Settings(data_dir=tmp_path, clock_skew_ms=1000)) as relay:
        phone = await first_device(relay)
        inside = await signed(relay, phone, "GET", "/v1/devices", ts=relay.clock.now_ms() - 1000)
        outside = await signed(relay, phone, "GET", "/v1/devices", ts=relay.clock.now_ms() - 1001)
        assert inside.status == 200
        assert_unauthorized(relay, outside)


async def test_a_replayed_nonce_is_401_even_with_a_fresh_signature(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    nonce = crypto.random_nonce(crypto.HTTP_NONCE_BYTES)
    first = await signed(relay, phone, "GET", "/v1/devices", nonce=nonce)
    await trio.sleep(1)
    again = await signed(relay, phone, "GET", "/v1/devices", nonce=nonce)  # new ts, new signature
    assert first.status == 200
    assert_unauthorized(relay, again)


async def test_a_replay_of_the_exact_same_request_is_401(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    value = authorization(relay, phone, "GET", "/v1/devices")
    first = await list_with(relay, value)
    again = await list_with(relay, value)
    assert first.status == 200
    assert_unauthorized(relay, again)


async def test_a_nonce_is_per_device(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    nonce = crypto.random_nonce(crypto.HTTP_NONCE_BYTES)
    assert (await signed(relay, phone, "GET", "/v1/devices", nonce=nonce)).status == 200
    assert (await signed(relay, laptop, "GET", "/v1/devices", nonce=nonce)).status == 200


async def test_a_refused_request_does_not_spend_its_nonce(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    nonce = crypto.random_nonce(crypto.HTTP_NONCE_BYTES)
    forged = await signed(relay, phone, "GET", "/v1/devices", nonce=nonce, key=crypto.SigningKey.generate())
    stale = await signed(relay, phone, "GET", "/v1/devices", nonce=nonce, ts=relay.clock.now_ms() - 400_000)
    genuine = await signed(relay, phone, "GET", "/v1/devices", nonce=nonce)
    assert (forged.status, stale.status, genuine.status) == (401, 401, 200)


async def test_a_nonce_is_remembered_until_ts_plus_skew_and_may_be_used_again_after(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    nonce = crypto.random_nonce(crypto.HTTP_NONCE_BYTES)
    signed_at = relay.clock.now_ms()
    assert (await signed(relay, phone, "GET", "/v1/devices", nonce=nonce, ts=signed_at)).status == 200
    await trio.sleep(300)  # now == ts + skew: still remembered
    at_bound = await signed(relay, phone, "GET", "/v1/devices", nonce=nonce)
    assert_unauthorized(relay, at_bound)
    await trio.sleep(0.001)
    after = await signed(relay, phone, "GET", "/v1/devices", nonce=nonce)
    assert after.status == 200


# --- revoked and deleted -------------------------------------------------------------------------------


async def test_a_revoked_device_with_a_valid_signature_is_403_device_revoked(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    assert (await signed(relay, phone, "DELETE", f"/v1/devices/{laptop.device_id}")).status == 204

    valid = await signed(relay, laptop, "GET", "/v1/devices")
    forged = await signed(relay, laptop, "GET", "/v1/devices", key=crypto.SigningKey.generate())

    assert valid.status == 403
    assert error(valid) == {
        "code": "device_revoked",
        "message": "This device has been revoked",
        "request_id": valid.headers["X-Request-ID"],
    }
    assert_unauthorized(relay, forged)  # revocation is revealed only to a holder of the key


async def test_a_revoked_device_is_403_even_with_a_stale_ts_or_a_reused_nonce(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    nonce = crypto.random_nonce(crypto.HTTP_NONCE_BYTES)
    assert (await signed(relay, laptop, "GET", "/v1/devices", nonce=nonce)).status == 200
    assert (await signed(relay, phone, "DELETE", f"/v1/devices/{laptop.device_id}")).status == 204

    stale = await signed(relay, laptop, "GET", "/v1/devices", ts=0)
    reused = await signed(relay, laptop, "GET", "/v1/devices", nonce=nonce)

    assert (stale.status, reused.status) == (403, 403)


async def test_a_device_of_a_deleted_account_is_410_whatever_the_signature(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    assert (await signed(relay, phone, "DELETE", "/v1/user")).status == 200

    valid = await signed(relay, phone, "GET", "/v1/devices")
    forged = await signed(relay, phone, "GET", "/v1/devices", key=crypto.SigningKey.generate())
    stale = await signed(relay, phone, "GET", "/v1/devices", ts=0)

    for answer in (valid, forged, stale):
        assert answer.status == 410
        assert error(answer)["code"] == "account_deleted"


async def test_head_on_a_get_route_is_signed_with_the_method_head(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    as_head = await signed(relay, phone, "HEAD", "/v1/devices")
    value = authorization(relay, phone, "GET", "/v1/devices")
    as_get = await send(relay, "HEAD", "/v1/devices", headers=Headers({"Authorization": value}))
    assert (as_head.status, as_get.status) == (200, 401)


async def test_options_is_answered_without_a_signature(relay: Relay, autojump_clock: MockClock) -> None:
    answer = await send(relay, "OPTIONS", "/v1/devices")
    assert answer.status == 200
    assert "GET" in answer.headers["Allow"]


# --- routing first -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "/v1/nowhere", 404),
        ("GET", "/v1/nowhere?x=1", 404),
        ("GET", "/v1/pairings", 405),
        ("PUT", "/v1/devices", 405),
        ("POST", "/v1/devices/0f8fad5b-d9cb-469f-a165-70867728950e", 405),
        ("GET", "/v1/user", 405),
        ("PATCH", "/v1/devices/0F8FAD5B-D9CB-469F-A165-70867728950E", 404),
        ("DELETE", "/v1/devices/not-a-uuid", 404),
        ("DELETE", "/v1/devices/", 404),
        ("GET", "/v1/devices/", 404),
    ],
)
async def test_routing_comes_before_the_signature(
    relay: Relay, autojump_clock: MockClock, method: str, target: str, status: int
) -> None:
    answer = await send(relay, method, target, body=b"not json")
    assert answer.status == status
    assert error(answer)["code"] == {404: "not_found", 405: "method_not_allowed"}[status]
    if status == 405:
        assert answer.headers["Allow"]


async def test_the_signature_comes_before_the_query_and_the_body(
    relay: Relay, autojump_clock: MockClock
) -> None:
    assert_unauthorized(relay, await send(relay, "GET", "/v1/devices?bogus=1"))
    assert_unauthorized(relay, await send(relay, "POST", "/v1/pairings", body=b"not json"))


async def test_a_signed_body_over_max_frame_bytes_is_413(tmp_path: Path, autojump_clock: MockClock) -> None:
    async with open_relay(Settings(data_dir=tmp_path, max_event_bytes=1000, max_frame_bytes=5096)) as relay:
        phone = await first_device(relay)
        answer = await signed(relay, phone, "POST", "/v1/pairings", body=b"{" + b" " * 5096 + b"}")
    assert answer.status == 413
    assert error(answer)["code"] == "too_large"
