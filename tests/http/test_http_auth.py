"""Signed HTTP requests (PROTOCOL.md §3): what is accepted, and one 401 for everything else."""

from __future__ import annotations

import httpx
import pytest
import trio
from http_support import Answer, Relay
from signed_support import (
    Device,
    assert_unauthorized,
    authorization,
    error,
    first_device,
    pair,
    send,
    server_key,
    signed,
)
from trio.testing import MockClock
from werkzeug.datastructures import Headers

from relay import crypto
from relay.client.credentials import DeviceCredentials
from relay.client.http import RelayHttp


async def list_with(relay: Relay, value: str) -> Answer:
    return await send(relay, "GET", "/v1/devices", headers=Headers({"Authorization": value}))


# --- accepted --------------------------------------------------------------------------------------------


async def test_a_request_signed_by_an_enrolled_device_is_accepted(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    answer = await signed(relay, phone, "GET", "/v1/devices")
    assert answer.status == 200, answer.body
    assert [d["device_id"] for d in answer.body["devices"]] == [phone.device_id]


async def test_the_reference_clients_signed_auth_is_accepted_over_a_real_asgi_transport(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    creds = DeviceCredentials(
        url="http://relay.test",
        server_key=server_key(relay),
        user_id=phone.user_id,
        device_id=phone.device_id,
        name=phone.name,
        key=phone.key,
    )
    transport = httpx.ASGITransport(app=relay.app)
    with trio.fail_after(10):
        async with RelayHttp(creds.url, creds=creds, clock=relay.clock, transport=transport) as http:
            listed = await http.json("GET", "/v1/devices?revoked=false")
            pairing = await http.json("POST", "/v1/pairings", body={})
    assert [d["device_id"] for d in listed["devices"]] == [phone.device_id]
    assert pairing["uri"].startswith("relay:pair?url=http%3A%2F%2Frelay.test&token=")


async def test_the_scheme_name_is_matched_without_regard_to_case(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    value = authorization(relay, phone, "GET", "/v1/devices").replace("Relay-Ed25519", "rELAY-ed25519")
    answer = await list_with(relay, value)
    assert answer.status == 200


# --- the path and query exactly as sent ------------------------------------------------------------------


async def raw_request(relay: Relay, device: Device, target: str, signed_target: str) -> httpx.Response:
    """``GET target`` as the bytes of the request line, signed over ``signed_target``."""
    transport = httpx.ASGITransport(app=relay.app)
    header = authorization(relay, device, "GET", signed_target)
    with trio.fail_after(10):
        async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
            return await client.get(target, headers={"Authorization": header})


@pytest.mark.parametrize(
    ("target", "signed_target", "status"),
    [
        ("/v1/%64evices", "/v1/%64evices", 200),
        ("/v1/%64evices", "/v1/devices", 401),
        ("/v1/devices?revoked=%74rue", "/v1/devices?revoked=%74rue", 200),
        ("/v1/devices?revoked=%74rue", "/v1/devices?revoked=true", 401),
        ("/v1/devices?revoked=false", "/v1/devices", 401),
    ],
)
async def test_the_signature_covers_the_path_and_query_exactly_as_sent_on_the_request_line(
    relay: Relay, autojump_clock: MockClock, target: str, signed_target: str, status: int
) -> None:
    phone = await first_device(relay)
    response = await raw_request(relay, phone, target, signed_target)
    assert response.status_code == status, response.text


async def test_a_server_that_gives_no_raw_path_gets_the_decoded_path_encoded_again(
    relay: Relay, autojump_clock: MockClock
) -> None:
    async def without_raw_path(scope: dict[str, object], receive: object, send: object) -> None:
        await relay.app({k: v for k, v in scope.items() if k != "raw_path"}, receive, send)  # type: ignore[arg-type]

    phone = await first_device(relay)
    header = authorization(relay, phone, "GET", "/v1/devices?revoked=true")
    with trio.fail_after(10):
        transport = httpx.ASGITransport(app=without_raw_path)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
            response = await client.get("/v1/devices?revoked=true", headers={"Authorization": header})
    assert response.status_code == 200, response.text


# --- every malformed header is the same 401 ---------------------------------------------------------------


def header_variants(good: str, device_id: str) -> dict[str, str]:
    scheme, _, rest = good.partition(" ")
    device, ts, nonce, sig = rest.split(", ")
    ts_value = ts.removeprefix("ts=")
    nonce_value = nonce.removeprefix("nonce=")
    sig_value = sig.removeprefix("sig=")
    return {
        "empty": "",
        "scheme only": scheme,
        "other scheme": f"Bearer {rest}",
        "scheme with a suffix": f"{scheme}x {rest}",
        "two spaces after the scheme": f"{scheme}  {rest}",
        "a tab after the scheme": f"{scheme}\t{rest}",
        "parameters out of order": f"{scheme} {ts}, {device}, {nonce}, {sig}",
        "a parameter missing": f"{scheme} {device}, {ts}, {nonce}",
        "a parameter twice": f"{scheme} {device}, {ts}, {ts}, {nonce}, {sig}",
        "an unknown parameter": f"{scheme} {device}, {ts}, {nonce}, {sig}, v=1",
        "a trailing comma": f"{scheme} {rest},",
        "trailing white space inside": f"{scheme} {rest} x",
        "comma without space": f"{scheme} {device},{ts}, {nonce}, {sig}",
        "two spaces after a comma": f"{scheme} {device},  {ts}, {nonce}, {sig}",
        "a space before a comma": f"{scheme} {device} , {ts}, {nonce}, {sig}",
        "quoted value": f'{scheme} device="{device_id}", {ts}, {nonce}, {sig}',
        "upper-case parameter name": f"{scheme} DEVICE={device_id}, {ts}, {nonce}, {sig}",
        "space around equals": f"{scheme} device = {device_id}, {ts}, {nonce}, {sig}",
        "upper-case device id": f"{scheme} device={device_id.upper()}, {ts}, {nonce}, {sig}",
        "device id without hyphens": f"{scheme} device={device_id.replace('-', '')}, {ts}, {nonce}, {sig}",
        "device id in braces": f"{scheme} device={{{device_id}}}, {ts}, {nonce}, {sig}",
        "ts with a leading zero": f"{scheme} {device}, ts=0{ts_value}, {nonce}, {sig}",
        "ts with a plus sign": f"{scheme} {device}, ts=+{ts_value}, {nonce}, {sig}",
        "negative ts": f"{scheme} {device}, ts=-{ts_value}, {nonce}, {sig}",
        "ts with a fraction": f"{scheme} {device}, ts={ts_value}.0, {nonce}, {sig}",
        "ts with an exponent": f"{scheme} {device}, ts=1.764e12, {nonce}, {sig}",
        "ts in hex": f"{scheme} {device}, ts=0x{int(ts_value):x}, {nonce}, {sig}",
        "ts beyond 2^53-1": f"{scheme} {device}, ts=9007199254740992, {nonce}, {sig}",
        "ts of seventeen digits": f"{scheme} {device}, ts=10000000000000000, {nonce}, {sig}",
        "ts in Arabic-Indic digits": f"{scheme} {device}, ts=١٧٦٤, {nonce}, {sig}",
        "empty ts": f"{scheme} {device}, ts=, {nonce}, {sig}",
        "nonce of 15 bytes": f"{scheme} {device}, {ts}, nonce={crypto.b64encode(bytes(15))}, {sig}",
        "nonce of 17 bytes": f"{scheme} {device}, {ts}, nonce={crypto.b64encode(bytes(17))}, {sig}",
        "nonce padded": f"{scheme} {device}, {ts}, nonce={nonce_value}==, {sig}",
        "nonce in standard base64": f"{scheme} {device}, {ts}, nonce=+{nonce_value[1:]}, {sig}",
        "nonce with trailing bits": f"{scheme} {device}, {ts}, nonce={nonce_value[:-1]}B, {sig}",
        "sig of 63 bytes": f"{scheme} {device}, {ts}, {nonce}, sig={crypto.b64encode(bytes(63))}",
        "sig padded": f"{scheme} {device}, {ts}, {nonce}, sig={sig_value}==",
        "sig with trailing bits": f"{scheme} {device}, {ts}, {nonce}, sig={sig_value[:-1]}B",
        "non-ASCII in the value": f"{scheme} {device}, {ts}, {nonce}, {sig}é",
    }


VARIANT_NAMES = list(header_variants("S device=d, ts=1, nonce=n, sig=s", "d"))


@pytest.mark.parametrize("variant", VARIANT_NAMES)
async def test_a_malformed_authorization_header_is_401_unauthorized(
    relay: Relay, autojump_clock: MockClock, variant: str
) -> None:
    phone = await first_device(relay)
    good = authorization(relay, phone, "GET", "/v1/devices", nonce=crypto.b64encode(b"\x01" * 16))
    value = header_variants(good, phone.device_id)[variant]
    assert_unauthorized(relay, await list_with(relay, value))


async def test_the_unmodified_header_of_the_variants_is_accepted(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    good = authorization(relay, phone, "GET", "/v1/devices", nonce=crypto.b64encode(b"\x01" * 16))
    assert (await list_with(relay, good)).status == 200


async def test_a_missing_authorization_header_is_401_unauthorized(
    relay: Relay, autojump_clock: MockClock
) -> None:
    assert_unauthorized(relay, await send(relay, "GET", "/v1/devices"))


async def test_two_authorization_headers_are_401_even_when_one_is_valid(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    headers = Headers()
    headers.add("Authorization", authorization(relay, phone, "GET", "/v1/devices"))
    headers.add("Authorization", authorization(relay, phone, "GET", "/v1/devices"))
    assert_unauthorized(relay, await send(relay, "GET", "/v1/devices", headers=headers))


# --- devices, keys and signatures -------------------------------------------------------------------------


async def test_an_unknown_device_is_401_like_a_bad_signature(relay: Relay, autojump_clock: MockClock) -> None:
    stranger = Device("user", "0f8fad5b-d9cb-469f-a165-70867728950e", crypto.SigningKey.generate(), "X")
    assert_unauthorized(relay, await signed(relay, stranger, "GET", "/v1/devices"))


async def test_a_signature_by_another_key_is_401(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    answer = await signed(relay, phone, "GET", "/v1/devices", key=crypto.SigningKey.generate())
    assert_unauthorized(relay, answer)


async def test_the_key_of_another_device_of_the_same_user_does_not_sign_for_it(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    laptop = await pair(relay, phone, "Laptop")
    assert_unauthorized(relay, await signed(relay, phone, "GET", "/v1/devices", key=laptop.key))


@pytest.mark.parametrize(
    ("what", "method", "signed_target", "signed_body"),
    [
        ("another path", "POST", "/v1/enroll", b"{}"),
        ("another query", "POST", "/v1/pairings?x=1", b"{}"),
        ("another body", "POST", "/v1/pairings", b'{"public_key": null}'),
        ("no body", "POST", "/v1/pairings", b""),
        ("another method", "PUT", "/v1/pairings", b"{}"),
    ],
)
async def test_a_signature_over_another_request_is_401(
    relay: Relay, autojump_clock: MockClock, what: str, method: str, signed_target: str, signed_body: bytes
) -> None:
    phone = await first_device(relay)
    value = authorization(relay, phone, method, signed_target, signed_body)
    answer = await send(relay, "POST", "/v1/pairings", body=b"{}", headers=Headers({"Authorization": value}))
    assert_unauthorized(relay, answer)


async def test_a_signature_for_another_server_key_is_401(relay: Relay, autojump_clock: MockClock) -> None:
    phone = await first_device(relay)
    other = crypto.SigningKey.generate().public_key_b64
    assert_unauthorized(relay, await signed(relay, phone, "GET", "/v1/devices", signed_server_key=other))


async def test_every_refusal_answers_the_same_body_but_for_the_request_id(
    relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(relay)
    stranger = Device("user", "0f8fad5b-d9cb-469f-a165-70867728950e", phone.key, "X")
    nonce = crypto.random_nonce(crypto.HTTP_NONCE_BYTES)
    assert (await signed(relay, phone, "GET", "/v1/devices", nonce=nonce)).status == 200
    answers = [
        await send(relay, "GET", "/v1/devices"),
        await list_with(relay, "Relay-Ed25519 nonsense"),
        await signed(relay, stranger, "GET", "/v1/devices"),
        await signed(relay, phone, "GET", "/v1/devices", key=crypto.SigningKey.generate()),
        await signed(relay, phone, "GET", "/v1/devices", ts=relay.clock.now_ms() - 300_001),
        await signed(relay, phone, "GET", "/v1/devices", nonce=nonce),
    ]
    bodies = []
    for answer in answers:
        body = error(answer)
        del body["request_id"]
        bodies.append((answer.status, dict(answer.headers).get("WWW-Authenticate"), body))
    assert len({repr(b) for b in bodies}) == 1, bodies
