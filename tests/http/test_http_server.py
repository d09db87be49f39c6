"""GET /v1/server, GET /healthz and plain HTTP on /v1/ws (PROTOCOL.md §6)."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from http_support import T0_MS, Relay, open_relay
from trio.testing import MockClock

from relay import __version__, crypto
from relay.config import Settings
from relay.store.base import ServerSecrets
from relay.store.memory import MemoryStore


async def test_server_publishes_versions_key_time_and_limits(relay: Relay, autojump_clock: MockClock) -> None:
    answer = await relay.request("GET", "/v1/server")

    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert list(answer.body) == [
        "software_version",
        "protocol_versions",
        "server_key",
        "server_time",
        "limits",
    ]
    assert answer.body["software_version"] == __version__
    assert answer.body["protocol_versions"] == [1]
    assert answer.body["server_time"] == T0_MS
    assert answer.body["limits"] == {
        "max_event_bytes": 65536,
        "max_frame_bytes": 131072,
        "replay_page": 100,
        "clock_skew_ms": 300000,
        "max_ttl_s": 2592000,
        "default_ttl_s": 604800,
        "publish_rate": 200,
        "publish_burst": 400,
        "max_replays": 4,
        "max_inflight": 64,
    }


async def test_server_key_is_the_public_key_of_the_stored_seed(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    seed = bytes(range(1, 33))
    store = MemoryStore(secrets=ServerSecrets(signing_seed=seed, token_secret=crypto.new_secret()))
    async with open_relay(Settings(data_dir=tmp_path), store) as relay:
        answer = await relay.request("GET", "/v1/server")
    assert answer.body["server_key"] == crypto.SigningKey(seed).public_key_b64


async def test_server_limits_follow_the_settings(tmp_path: Path, autojump_clock: MockClock) -> None:
    settings = Settings(
        data_dir=tmp_path, max_event_bytes=1000, max_frame_bytes=6000, clock_skew_ms=1234, max_inflight=3
    )
    async with open_relay(settings) as relay:
        answer = await relay.request("GET", "/v1/server")
    limits = answer.body["limits"]
    assert (limits["max_event_bytes"], limits["max_frame_bytes"]) == (1000, 6000)
    assert (limits["clock_skew_ms"], limits["max_inflight"]) == (1234, 3)
    assert limits == attrs.asdict(settings.limits)


async def test_server_time_follows_the_clock(relay: Relay, autojump_clock: MockClock) -> None:
    import trio

    await trio.sleep(12.5)
    answer = await relay.request("GET", "/v1/server")
    assert answer.body["server_time"] == T0_MS + 12_500


async def test_healthz_answers_ok(relay: Relay, autojump_clock: MockClock) -> None:
    answer = await relay.request("GET", "/healthz")
    assert (answer.status, answer.body) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/v1/server?verbose=1", "$.query.verbose"),
        ("/v1/server?a=1&b=2", "$.query.a"),
        ("/v1/server?flag", "$.query.flag"),
        ("/v1/server?%20x=1", "$.query[' x']"),
        ("/healthz?probe=k8s", "$.query.probe"),
    ],
)
async def test_an_unknown_query_parameter_is_400_naming_it(
    relay: Relay, autojump_clock: MockClock, target: str, path: str
) -> None:
    answer = await relay.request("GET", target)
    assert answer.status == 400
    assert answer.body["error"]["code"] == "bad_request"
    assert answer.body["error"]["path"] == path
    assert answer.body["error"]["message"] == f"{path}: unknown query parameter"


async def test_an_empty_query_string_is_no_parameter(relay: Relay, autojump_clock: MockClock) -> None:
    assert (await relay.request("GET", "/v1/server?")).status == 200


async def test_plain_http_on_the_websocket_endpoint_is_400(relay: Relay, autojump_clock: MockClock) -> None:
    answer = await relay.request("GET", "/v1/ws")
    assert answer.status == 400
    assert answer.body["error"]["code"] == "bad_request"


@pytest.mark.parametrize(
    ("method", "target", "allowed"),
    [
        ("POST", "/v1/server", "GET"),
        ("DELETE", "/healthz", "GET"),
        ("POST", "/v1/ws", "GET"),
    ],
)
async def test_a_known_route_with_another_method_is_405_with_allow(
    relay: Relay, autojump_clock: MockClock, method: str, target: str, allowed: str
) -> None:
    answer = await relay.request(method, target)
    assert answer.status == 405
    assert allowed in answer.headers["Allow"]
    assert answer.body["error"]["code"] == "method_not_allowed"
    assert answer.body["error"]["request_id"] == answer.headers["X-Request-ID"]


@pytest.mark.parametrize("target", ["/", "/v1", "/v1/server/", "/v2/server", "/v1/nothing?x=1", "/%ff"])
async def test_an_unknown_route_is_404_before_anything_else(
    relay: Relay, autojump_clock: MockClock, target: str
) -> None:
    answer = await relay.request("POST", target, data=b"not json")
    assert answer.status == 404
    assert answer.body["error"] == {
        "code": "not_found",
        "message": "Not found",
        "request_id": answer.headers["X-Request-ID"],
    }
