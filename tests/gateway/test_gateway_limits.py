"""Rate limits of the WebSocket side: publishes per device (PROTOCOL.md §4.2 step 3, §8) and handshakes
per client address. Refills run in virtual time (MockClock), so every ``retry_after_ms`` is exact."""

from __future__ import annotations

import logging

import pytest
import trio
from gateway_harness import Client, RelayFactory
from trio.testing import MockClock

from relay.errors import BusUnavailable, RateLimited
from relay.gateway import AdmitAll
from relay.gateway.admission import (
    HANDSHAKE_BURST,
    HANDSHAKE_CHECK_TIMEOUT_S,
    HANDSHAKE_RATE_PER_S,
    PublishLimits,
)
from relay.ops.ratelimit import LocalLimiter, RateLimit

ADDRESS = ("203.0.113.7", 50_000)
OTHER_ADDRESS = ("198.51.100.9", 50_001)


async def test_the_default_admission_limits_publishes_by_the_settings(make_relay: RelayFactory) -> None:
    relay = await make_relay(publish_rate=7, publish_burst=9)
    admission = relay.gateway.context.admission
    assert isinstance(admission, PublishLimits)
    assert admission.limiter.limit == RateLimit(rate=7, burst=9)


async def test_a_burst_of_publishes_then_rate_limited_with_the_exact_wait_then_accepted_after_refill(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(publish_rate=4, publish_burst=3)
    user = await relay.user()
    phone = await relay.connect(await relay.device(user))

    acks = [await relay.publish(phone, "notes", f"e{n}") for n in range(3)]
    assert [a["seq"] for a in acks] == [1, 2, 3]
    refused = await relay.publish(phone, "notes", "e3", ref="r")
    assert refused == {
        "type": "error",
        "code": "rate_limited",
        "message": "Rate limit exceeded",
        "retry_after_ms": 250,  # one token at 4 per second
        "id": "e3",
        "stream": "notes",
        "ref": "r",
    }
    assert await relay.memory.stream_head(user, "notes") == 3  # nothing stored

    await trio.sleep(0.125)  # half a token back
    again = await relay.publish(phone, "notes", "e3")
    assert (again["code"], again["retry_after_ms"]) == ("rate_limited", 125)
    await trio.sleep(0.125)
    assert (await relay.publish(phone, "notes", "e3"))["seq"] == 4

    await phone.send({"type": "ping", "ref": "alive"})  # the session stayed open
    assert (await phone.expect("pong"))["ref"] == "alive"
    assert relay.sample("relay_rate_limited_total", limit="publish") == 2
    assert relay.sample("relay_events_refused_total", code="rate_limited") == 2
    assert relay.sample("relay_events_published_total") == 4


async def test_a_retry_of_an_event_already_stored_spends_a_token_too(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(publish_rate=1, publish_burst=2)
    phone = await relay.connect(await relay.device(await relay.user()))

    first = await relay.publish(phone, "notes", "e1", {"a": 1})
    retry = await relay.publish(phone, "notes", "e1", {"a": 1})
    assert retry == {**first, "duplicate": True}
    third = await relay.publish(phone, "notes", "e1", {"a": 1})
    assert (third["code"], third["retry_after_ms"]) == ("rate_limited", 1000)
    await trio.sleep(1)
    assert (await relay.publish(phone, "notes", "e1", {"a": 1}))["duplicate"] is True


async def test_each_device_has_its_own_bucket_and_keeps_it_across_reconnects(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(publish_rate=1, publish_burst=1)
    user = await relay.user()
    phone, laptop = await relay.device(user), await relay.device(user)
    phone_client = await relay.connect(phone)
    assert (await relay.publish(phone_client, "notes", "p1"))["type"] == "ack"
    assert (await relay.publish(phone_client, "notes", "p2"))["code"] == "rate_limited"

    laptop_client = await relay.connect(laptop)
    await phone_client.expect("presence")
    assert (await relay.publish(laptop_client, "notes", "l1"))["type"] == "ack"

    replacement = await relay.connect(phone)  # the newest session of the phone: same bucket
    assert (await relay.publish(replacement, "notes", "p2"))["code"] == "rate_limited"


async def test_admit_all_does_not_limit(make_relay: RelayFactory, autojump_clock: MockClock) -> None:
    relay = await make_relay(admission=AdmitAll(), publish_rate=1, publish_burst=1)
    phone = await relay.connect(await relay.device(await relay.user()))
    for n in range(5):
        assert (await relay.publish(phone, "notes", f"e{n}"))["type"] == "ack"


# --- handshakes per address ----------------------------------------------------------------------------


def strict(rate: float = 1, burst: int = 2) -> LocalLimiter:
    return LocalLimiter(RateLimit(rate=rate, burst=burst))


async def assert_refused(client: Client, retry_after_ms: int) -> None:
    error, code, reason = await client.expect_close()
    assert (error["code"], error["retry_after_ms"], code, reason) == (
        "rate_limited",
        retry_after_ms,
        1013,
        "rate_limited",
    )


async def test_the_default_handshake_limit_is_the_named_constants(make_relay: RelayFactory) -> None:
    relay = await make_relay()
    limiter = relay.gateway.context.handshake_limiter
    assert isinstance(limiter, LocalLimiter)
    assert limiter.limit == RateLimit(rate=HANDSHAKE_RATE_PER_S, burst=HANDSHAKE_BURST)


async def test_handshakes_beyond_the_limit_of_an_address_get_rate_limited_and_close_1013(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(handshake_limiter=strict(rate=1, burst=2))
    user = await relay.user()
    devices = [await relay.device(user) for _ in range(4)]

    await relay.connect(devices[0], client=ADDRESS)
    await relay.connect(devices[1], client=ADDRESS)
    await assert_refused(await relay.open(client=ADDRESS), retry_after_ms=1000)
    await relay.connect(devices[2], client=OTHER_ADDRESS)  # another address has its own bucket
    await trio.sleep(1)
    await relay.connect(devices[3], client=ADDRESS)

    assert relay.sample("relay_rate_limited_total", limit="handshake") == 1
    assert relay.sample("relay_handshakes_total", outcome="rate_limited") == 1
    assert relay.sample("relay_sessions_closed_total", code="rate_limited") == 1
    assert relay.sample("relay_handshakes_total", outcome="welcome") == 4


async def test_a_connection_without_an_address_is_not_limited(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(handshake_limiter=strict(rate=1, burst=1))
    user = await relay.user()
    for _ in range(3):
        await relay.connect(await relay.device(user))  # no "client" in the scope (a Unix socket)


class FailingLimiter:
    def __init__(self) -> None:
        self.calls = 0

    async def check(self, key: str, now: float) -> None:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        raise BusUnavailable(detail="redis is down")


class HangingLimiter:
    async def check(self, key: str, now: float) -> None:
        await trio.sleep_forever()


async def test_a_limiter_that_fails_admits_and_is_logged_once(
    make_relay: RelayFactory, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = FailingLimiter()
    relay = await make_relay(handshake_limiter=limiter)
    user = await relay.user()
    with caplog.at_level(logging.WARNING, logger="relay.gateway"):
        for _ in range(3):
            await relay.connect(await relay.device(user), client=ADDRESS)
    assert limiter.calls == 3
    warnings = [r for r in caplog.records if "handshake rate limit could not be checked" in r.getMessage()]
    assert len(warnings) == 1


async def test_a_limiter_that_does_not_answer_admits_after_its_timeout(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    relay = await make_relay(handshake_limiter=HangingLimiter())
    device = await relay.device(await relay.user())
    client = await relay.open(client=ADDRESS)
    start = trio.current_time()
    await client.handshake(device)
    assert trio.current_time() - start == pytest.approx(HANDSHAKE_CHECK_TIMEOUT_S)


async def test_a_refusal_of_the_limiter_keeps_its_retry_after(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    class Refusing:
        async def check(self, key: str, now: float) -> None:
            await trio.lowlevel.checkpoint()
            raise RateLimited(retry_after_ms=1234)

    relay = await make_relay(handshake_limiter=Refusing())
    await assert_refused(await relay.open(client=ADDRESS), retry_after_ms=1234)
