"""Operations over HTTP: /readyz and its components, /metrics, HTTP rate limits (429 with Retry-After),
and the store's circuit breaker refusing fast while the store is down and closing once it is back."""

from __future__ import annotations

from typing import Any

import trio
import trio.lowlevel
import trio.testing
from http_support import Relay, enroll_body, open_relay
from prometheus_client.parser import text_string_to_metric_families
from signed_support import first_device, runtime_of, signed

from relay import crypto
from relay.bus.local import LocalBus
from relay.config import Settings
from relay.errors import BusUnavailable, StoreUnavailable
from relay.http.limits import ADDRESS_LIMIT, DEVICE_LIMIT
from relay.store.memory import MemoryStore


class DownStore(MemoryStore):
    """A memory store that can be taken down: every call raises StoreUnavailable meanwhile."""

    down = False
    calls = 0

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name.startswith("_") or name in ("down", "calls", "close") or not callable(value):
            return value
        if object.__getattribute__(self, "down"):

            async def refuse(*args: Any, **kwargs: Any) -> Any:
                self.calls += 1
                raise StoreUnavailable(detail="the test took the store down")

            return refuse
        return value


class SilentBus(LocalBus):
    async def canary(self) -> None:
        raise BusUnavailable(detail="the canary did not come back")


def sample(relay: Relay, name: str, **labels: str) -> float | None:
    value: float | None = runtime_of(relay).metrics.registry.get_sample_value(name, labels)
    return value


async def test_readyz_is_200_with_every_component_ok(
    relay: Relay, autojump_clock: trio.testing.MockClock
) -> None:
    answer = await relay.request("GET", "/readyz")
    assert answer.status == 200
    assert answer.body == {
        "status": "ready",
        "components": {"database": "ok", "bus": "ok", "draining": "no", "cluster": "ok"},
    }
    assert sample(relay, "relay_ready") == 1


async def test_readyz_is_503_naming_the_database_when_it_does_not_answer(
    settings: Settings, autojump_clock: trio.testing.MockClock
) -> None:
    store = DownStore()
    async with open_relay(settings, store=store) as relay:
        store.down = True
        await trio.sleep(1)  # past the cached answer
        answer = await relay.request("GET", "/readyz", headers={"X-Request-ID": "probe-1"})
    assert answer.status == 503
    assert answer.body["status"] == "not_ready"
    assert answer.body["components"]["database"] == "unavailable"
    assert answer.body["error"] == {"code": "unavailable", "message": "Not ready", "request_id": "probe-1"}


async def test_readyz_is_503_when_the_bus_canary_does_not_come_back(
    settings: Settings, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_relay(settings, bus=SilentBus()) as relay:
        answer = await relay.request("GET", "/readyz")
    assert answer.status == 503
    assert answer.body["components"]["bus"] == "unavailable"
    assert answer.body["components"]["database"] == "ok"


async def test_readyz_is_503_while_draining(relay: Relay, autojump_clock: trio.testing.MockClock) -> None:
    assert (await relay.request("GET", "/readyz")).status == 200
    relay.app.services.begin_drain()  # type: ignore[attr-defined]
    await trio.lowlevel.checkpoint()
    answer = await relay.request("GET", "/readyz")
    assert answer.status == 503
    assert answer.body["components"]["draining"] == "yes"
    assert (await relay.request("GET", "/healthz")).status == 200  # alive all the same


async def test_metrics_are_served_in_the_prometheus_text_format(
    relay: Relay, autojump_clock: trio.testing.MockClock
) -> None:
    await relay.request("GET", "/healthz")
    await relay.request("GET", "/v1/nothing")
    answer = await relay.request("GET", "/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    raw = await (await relay.client.get("/metrics")).get_data(as_text=True)
    families = {f.name: f for f in text_string_to_metric_families(raw)}
    requests = {
        (s.labels["route"], s.labels["status"]): s.value for s in families["relay_http_requests"].samples
    }
    assert requests[("/healthz", "200")] == 1
    assert requests[("unmatched", "404")] == 1
    assert "relay_breaker_state" in families


async def test_enrolments_from_one_address_beyond_the_limit_are_429_with_retry_after(
    relay: Relay, autojump_clock: trio.testing.MockClock
) -> None:
    _, token = await relay.new_token()
    body = enroll_body(token, crypto.SigningKey.generate())
    body["sig"] = crypto.SigningKey.generate().sign(b"wrong")  # refused 400, but counted all the same
    statuses = [(await relay.enroll(body)).status for _ in range(ADDRESS_LIMIT.burst)]
    assert set(statuses) == {400}
    limited = await relay.enroll(body)
    assert limited.status == 429
    assert limited.body["error"]["code"] == "rate_limited"
    assert limited.headers["Retry-After"] == "1"
    assert limited.body["error"]["retry_after_ms"] == 1000 // int(ADDRESS_LIMIT.rate)
    assert sample(relay, "relay_rate_limited_total", limit="http_address") == 1
    await trio.sleep(1 / ADDRESS_LIMIT.rate)  # one token back
    assert (await relay.enroll(body)).status == 400


async def test_signed_requests_of_one_device_beyond_its_limit_are_429(
    relay: Relay, autojump_clock: trio.testing.MockClock
) -> None:
    device = await first_device(relay)
    statuses = [(await signed(relay, device, "GET", "/v1/devices")).status for _ in range(DEVICE_LIMIT.burst)]
    assert set(statuses) == {200}
    limited = await signed(relay, device, "GET", "/v1/devices")
    assert limited.status == 429
    assert limited.body["error"]["code"] == "rate_limited"
    assert sample(relay, "relay_rate_limited_total", limit="http_device") == 1
    await trio.sleep(1 / DEVICE_LIMIT.rate)
    assert (await signed(relay, device, "GET", "/v1/devices")).status == 200


async def test_while_the_store_is_down_requests_fail_fast_and_recover_by_themselves(
    settings: Settings, autojump_clock: trio.testing.MockClock
) -> None:
    method_path = ("GET", "/v1/devices")
    store = DownStore()
    async with open_relay(settings, store=store) as relay:
        device = await first_device(relay)
        store.down = True
        answers = [await signed(relay, device, *method_path) for _ in range(8)]
        reached = store.calls
        assert {a.status for a in answers} == {503}
        assert reached == 5  # the breaker opened after five failures: the others never reached the store
        assert sample(relay, "relay_breaker_state", component="store") == 2
        assert sample(relay, "relay_store_errors_total", operation="lookup_device") == 5
        assert int(answers[-1].headers["Retry-After"]) >= 1
        store.down = False
        await trio.sleep(2)  # the breaker lets one trial through, which succeeds
        assert (await signed(relay, device, *method_path)).status == 200
        assert sample(relay, "relay_breaker_state", component="store") == 0
