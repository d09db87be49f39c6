"""The §6 error edge: request ids, error bodies and headers, no 5xx for what a client can send."""

from __future__ import annotations

from pathlib import Path

import pytest
from http_support import Relay, open_relay
from quart.testing.connections import WebsocketResponseError
from trio.testing import MockClock
from werkzeug.exceptions import RequestTimeout

from relay.config import Settings
from relay.errors import RateLimited, SeqConflict, Unauthorized
from relay.protocol.syntax import is_request_id


async def test_every_answer_carries_a_fresh_request_id(relay: Relay, autojump_clock: MockClock) -> None:
    first = await relay.request("GET", "/healthz")
    second = await relay.request("GET", "/nowhere")
    assert is_request_id(first.headers["X-Request-ID"])
    assert is_request_id(second.headers["X-Request-ID"])
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]
    assert second.body["error"]["request_id"] == second.headers["X-Request-ID"]


@pytest.mark.parametrize("sent", ["client-id_1.2", "x" * 128, "A"])
async def test_a_valid_request_id_is_echoed_in_the_header_and_the_error(
    relay: Relay, autojump_clock: MockClock, sent: str
) -> None:
    answer = await relay.request("POST", "/v1/enroll", data=b"{", headers={"X-Request-ID": sent})
    assert answer.headers["X-Request-ID"] == sent
    assert answer.body["error"]["request_id"] == sent


@pytest.mark.parametrize("sent", ["has space", "x" * 129, "semi;colon", "", "ünï"])
async def test_an_invalid_request_id_is_replaced(relay: Relay, autojump_clock: MockClock, sent: str) -> None:
    answer = await relay.request("GET", "/nowhere", headers={"X-Request-ID": sent})
    assert answer.headers["X-Request-ID"] != sent
    assert is_request_id(answer.headers["X-Request-ID"])
    assert answer.body["error"]["request_id"] == answer.headers["X-Request-ID"]


async def test_a_websocket_upgrade_to_an_unknown_path_is_refused_404_not_crashed(
    relay: Relay, autojump_clock: MockClock
) -> None:
    refusals: list[WebsocketResponseError] = []
    try:
        async with relay.client.websocket("/v1/nothing", headers={"X-Request-ID": "ws-404"}) as ws:
            await ws.receive()
    except* WebsocketResponseError as group:
        refusals.extend(leaf for leaf in _leaves(group) if isinstance(leaf, WebsocketResponseError))
    [refusal] = refusals
    response = refusal.response
    assert response.status_code == 404
    assert response.headers["X-Request-ID"] == "ws-404"
    assert (await response.get_json())["error"]["code"] == "not_found"


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


# --- errors raised by handlers -----------------------------------------------------------------------


def add_failing_routes(relay: Relay) -> None:
    app = relay.app

    @app.get("/boom")
    async def boom() -> str:
        raise RuntimeError("secret detail from /etc/relay")

    @app.get("/conflict")
    async def conflict() -> str:
        raise SeqConflict(head=3)

    @app.get("/limited")
    async def limited() -> str:
        raise RateLimited(retry_after_ms=2001)

    @app.get("/unauthorized")
    async def unauthorized() -> str:
        raise Unauthorized(server_time=5)

    @app.get("/slow-body")
    async def slow_body() -> str:
        raise RequestTimeout()


@pytest.mark.parametrize(("env", "detail"), [("production", False), ("development", True)])
async def test_an_unexpected_error_is_a_bare_500_in_production_and_detailed_in_development(
    tmp_path: Path, autojump_clock: MockClock, env: str, detail: bool
) -> None:
    async with open_relay(Settings(data_dir=tmp_path, env=env)) as relay:  # type: ignore[arg-type]
        add_failing_routes(relay)
        answer = await relay.request("GET", "/boom", headers={"X-Request-ID": "req-500"})
    assert answer.status == 500
    expected: dict[str, object] = {
        "code": "internal",
        "message": "Internal server error",
        "request_id": "req-500",
    }
    if detail:
        expected["detail"] = "RuntimeError: secret detail from /etc/relay"
    assert answer.body == {"error": expected}


async def test_a_relay_error_is_answered_with_its_status_and_fields(
    relay: Relay, autojump_clock: MockClock
) -> None:
    add_failing_routes(relay)
    answer = await relay.request("GET", "/conflict", headers={"X-Request-ID": "req-409"})
    assert answer.status == 409
    assert answer.body == {
        "error": {
            "code": "seq_conflict",
            "message": "The stream's head is not the expected one",
            "head": 3,
            "request_id": "req-409",
        }
    }


async def test_a_rate_limited_answer_says_when_to_retry_in_whole_seconds(
    relay: Relay, autojump_clock: MockClock
) -> None:
    add_failing_routes(relay)
    answer = await relay.request("GET", "/limited")
    assert answer.status == 429
    assert answer.headers["Retry-After"] == "3"
    assert answer.body["error"]["retry_after_ms"] == 2001


async def test_unauthorized_names_the_scheme(relay: Relay, autojump_clock: MockClock) -> None:
    add_failing_routes(relay)
    answer = await relay.request("GET", "/unauthorized")
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == "Relay-Ed25519"
    assert answer.body["error"]["server_time"] == 5


async def test_another_refusal_of_the_framework_is_a_400_not_a_500(
    relay: Relay, autojump_clock: MockClock
) -> None:
    add_failing_routes(relay)
    answer = await relay.request("GET", "/slow-body")
    assert answer.status == 400
    assert answer.body["error"]["code"] == "bad_request"
    assert answer.body["error"]["path"] == "$"
