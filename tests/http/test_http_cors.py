"""RELAY_CORS_ORIGINS (PROTOCOL.md §6): preflights and exposed headers for allowed origins only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from http_support import Relay, open_relay
from signed_support import first_device, send, signed
from trio.testing import MockClock
from werkzeug.datastructures import Headers

from relay.config import Settings

ALLOWED = "https://app.example.com"


@pytest.fixture
async def cors_relay(tmp_path: Path, autojump_clock: MockClock) -> AsyncIterator[Relay]:
    settings = Settings.from_env(
        {"RELAY_CORS_ORIGINS": f"{ALLOWED}, http://localhost:3000"}, data_dir=tmp_path
    )
    async with open_relay(settings) as relay:
        yield relay


def preflight(origin: str, method: str = "PATCH") -> Headers:
    return Headers(
        {
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type, x-request-id",
        }
    )


def access_control(headers: Headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("access-control-")}


async def test_a_preflight_from_an_allowed_origin_allows_the_three_headers(
    cors_relay: Relay, autojump_clock: MockClock
) -> None:
    target = "/v1/devices/0f8fad5b-d9cb-469f-a165-70867728950e"
    answer = await send(cors_relay, "OPTIONS", target, headers=preflight(ALLOWED))
    assert answer.status == 204
    allowed = access_control(answer.headers)
    assert allowed["access-control-allow-origin"] == ALLOWED
    assert allowed["access-control-allow-headers"] == "Authorization, Content-Type, X-Request-ID"
    assert {"PATCH", "DELETE"} <= {m.strip() for m in allowed["access-control-allow-methods"].split(",")}
    assert int(allowed["access-control-max-age"]) > 0
    assert "Origin" in answer.headers["Vary"]
    assert "access-control-allow-credentials" not in allowed


async def test_a_preflight_needs_no_signature_and_routing_still_comes_first(
    cors_relay: Relay, autojump_clock: MockClock
) -> None:
    answer = await send(cors_relay, "OPTIONS", "/v1/nowhere", headers=preflight(ALLOWED))
    assert answer.status == 404


async def test_answers_to_an_allowed_origin_expose_the_request_id_errors_included(
    cors_relay: Relay, autojump_clock: MockClock
) -> None:
    phone = await first_device(cors_relay)
    ok = await signed(cors_relay, phone, "GET", "/v1/devices", headers={"Origin": "http://localhost:3000"})
    refused = await send(cors_relay, "GET", "/v1/devices", headers=Headers({"Origin": ALLOWED}))
    for answer, origin in ((ok, "http://localhost:3000"), (refused, ALLOWED)):
        assert answer.headers["Access-Control-Allow-Origin"] == origin
        exposed = {h.strip() for h in answer.headers["Access-Control-Expose-Headers"].split(",")}
        assert "X-Request-ID" in exposed
    assert refused.status == 401
    assert "WWW-Authenticate" in exposed


@pytest.mark.parametrize(
    "origin", ["https://evil.example.com", "https://app.example.com:8443", "null", "HTTPS://x"]
)
async def test_another_origin_gets_no_cors_headers(
    cors_relay: Relay, autojump_clock: MockClock, origin: str
) -> None:
    answer = await send(cors_relay, "OPTIONS", "/v1/devices", headers=preflight(origin, "GET"))
    plain = await send(cors_relay, "GET", "/healthz", headers=Headers({"Origin": origin}))
    assert access_control(answer.headers) == {}
    assert access_control(plain.headers) == {}
    assert answer.status == 200  # the plain OPTIONS answer, which a browser takes as a refusal


async def test_without_relay_cors_origins_nothing_is_allowed(relay: Relay, autojump_clock: MockClock) -> None:
    answer = await send(relay, "OPTIONS", "/v1/devices", headers=preflight("https://app.example.com", "GET"))
    plain = await send(relay, "GET", "/healthz", headers=Headers({"Origin": "https://app.example.com"}))
    assert access_control(answer.headers) == access_control(plain.headers) == {}
    assert "Vary" not in plain.headers


async def test_the_request_id_of_a_preflight_is_still_set(
    cors_relay: Relay, autojump_clock: MockClock
) -> None:
    headers = preflight(ALLOWED, "GET")
    headers["X-Request-ID"] = "pre-1"
    with trio.fail_after(10):
        answer = await send(cors_relay, "OPTIONS", "/v1/devices", headers=headers)
    assert answer.headers["X-Request-ID"] == "pre-1"
