"""The handshake through the gateway (PROTOCOL.md §4.1): welcome contents, every refusal and its close."""

from __future__ import annotations

from typing import Any

import attrs
import trio
from gateway_harness import NOW, Client, Device, FaultyStore, Relay, RelayFactory
from trio.testing import MockClock

from relay import crypto
from relay.errors import StoreUnavailable
from relay.protocol.codec import converter
from relay.protocol.messages import Limits
from relay.store.memory import MemoryStore


def hello(device_id: str, **changes: Any) -> dict[str, Any]:
    return {"type": "hello", "v": 1, "device_id": device_id, "nonce": crypto.random_nonce(), **changes}


async def test_a_full_handshake_with_real_signatures_ends_in_a_welcome_with_everything_the_spec_lists(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user = await relay.user()
    phone = await relay.device(user, "Phone")
    laptop = await relay.device(user, "Laptop")
    other_user_device = await relay.device(await relay.user())
    laptop_client = await relay.connect(laptop)
    await relay.connect(other_user_device)
    assert (await relay.publish(laptop_client, "notes", "e1", {"n": 1}))["type"] == "ack"
    assert (await relay.publish(laptop_client, "todo", "e2", {"n": 2}))["type"] == "ack"
    await trio.sleep(1)

    client = await relay.open()
    welcome = await client.handshake(phone)

    assert client.accepted is not None
    assert client.accepted["subprotocol"] == "relay.v1"
    assert client.challenge is not None
    assert client.challenge["server_key"] == relay.server_key.public_key_b64
    assert welcome == {
        "type": "welcome",
        "session_id": client.challenge["session_id"],
        "user_id": user,
        "device_id": phone.device_id,
        "name": "Phone",
        "server_time": NOW + 1000,
        "heartbeat_ms": 20_000,
        "limits": converter.unstructure(Limits()),
        "streams": {"notes": 1, "todo": 1},
        "streams_truncated": False,
        "online": [laptop.device_id],
    }


async def test_the_relay_v1_subprotocol_is_selected_only_when_offered(
    relay: Relay, autojump_clock: MockClock
) -> None:
    offered = await relay.open(subprotocols=["chat", "relay.v1"])
    not_offered = await relay.open(subprotocols=[])
    assert offered.accepted is not None
    assert offered.accepted["subprotocol"] == "relay.v1"
    assert not_offered.accepted is not None
    assert not_offered.accepted["subprotocol"] is None


async def test_no_welcome_within_the_handshake_timeout_closes_exactly_at_the_bound(
    relay: Relay, autojump_clock: MockClock
) -> None:
    start = trio.current_time()
    client = await relay.open()
    error, code, _ = await client.expect_close()
    assert (error["code"], code) == ("handshake_timeout", 1001)
    assert trio.current_time() - start == 10.0


async def test_an_auth_just_before_the_handshake_deadline_is_welcomed(
    relay: Relay, autojump_clock: MockClock
) -> None:
    device = await relay.device(await relay.user())
    client = await relay.open()
    await trio.sleep(9.999)
    await client.handshake(device)
    assert client.welcome is not None


async def test_a_bad_signature_is_unauthorized_and_closes_1008(
    relay: Relay, autojump_clock: MockClock
) -> None:
    device = await relay.device(await relay.user())
    impostor = attrs.evolve(device, key=crypto.SigningKey.generate())
    client = await relay.open()
    await expect_refused_handshake(client, impostor, "unauthorized", 1008)


async def test_an_unknown_device_gets_its_challenge_and_then_unauthorized(
    relay: Relay, autojump_clock: MockClock
) -> None:
    device = await relay.device(await relay.user())
    unknown = attrs.evolve(device, device_id="0f8fad5b-d9cb-469f-a165-70867728950e")
    client = await relay.open()
    await expect_refused_handshake(client, unknown, "unauthorized", 1008)


async def test_a_revoked_device_with_a_valid_signature_is_told_so_and_closed_1008(
    relay: Relay, autojump_clock: MockClock
) -> None:
    device = await relay.device(await relay.user())
    await relay.memory.revoke_device(device.device_id, now_ms=relay.now())
    client = await relay.open()
    await expect_refused_handshake(client, device, "device_revoked", 1008)


async def test_a_device_of_a_deleted_account_is_told_so_at_auth_and_closed_1008(
    relay: Relay, autojump_clock: MockClock
) -> None:
    device = await relay.device(await relay.user())
    await relay.memory.delete_user(device.user_id, now_ms=relay.now(), remember_ms=60_000)
    client = await relay.open()
    await expect_refused_handshake(client, device, "account_deleted", 1008)


async def test_a_deleted_device_whose_memory_expired_is_unknown_and_unauthorized(
    relay: Relay, autojump_clock: MockClock
) -> None:
    device = await relay.device(await relay.user())
    await relay.memory.delete_user(device.user_id, now_ms=relay.now(), remember_ms=60_000)
    await trio.sleep(60)  # the memory counts up to its expiry, bounds included
    await expect_refused_handshake(await relay.open(), device, "account_deleted", 1008)
    await trio.sleep(0.001)
    await expect_refused_handshake(await relay.open(), device, "unauthorized", 1008)


async def expect_refused_handshake(client: Client, device: Device, code: str, close: int) -> None:
    error = await client.authenticate(device)
    assert (error["type"], error["code"]) == ("error", code), error
    assert "ref" not in error
    await client.expect_closed(close, code)


async def test_a_version_other_than_1_is_unsupported_with_the_supported_list_and_closes_1002(
    relay: Relay, autojump_clock: MockClock
) -> None:
    client = await relay.open()
    await client.send(hello("0f8fad5b-d9cb-469f-a165-70867728950e", v=2))
    error, code, _ = await client.expect_close()
    assert (error["code"], error["supported"], code) == ("unsupported_version", [1], 1002)


async def test_a_malformed_hello_is_bad_request_with_its_path_and_closes_1002(
    relay: Relay, autojump_clock: MockClock
) -> None:
    for frame, path in [
        ({"type": "hello", "device_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "nonce": "x"}, "$.v"),
        (hello("0F8FAD5B-D9CB-469F-A165-70867728950E"), "$.device_id"),
        (hello("0f8fad5b-d9cb-469f-a165-70867728950e", nonce="AAAA"), "$.nonce"),
    ]:
        client = await relay.open()
        await client.send(frame)
        error, code, _ = await client.expect_close()
        assert (error["code"], error["path"], code) == ("bad_request", path, 1002)
        assert "ref" not in error


async def test_a_malformed_auth_is_bad_request_and_closes_1002(
    relay: Relay, autojump_clock: MockClock
) -> None:
    client = await relay.open()
    await client.send(hello("0f8fad5b-d9cb-469f-a165-70867728950e", ref="r1"))
    await client.expect("challenge")
    await client.send({"type": "auth", "sig": "not-a-signature"})
    error, code, _ = await client.expect_close()
    assert (error["code"], error["path"], code) == ("bad_request", "$.sig", 1002)


async def test_any_other_message_before_welcome_is_a_protocol_error_closing_1002(
    relay: Relay, autojump_clock: MockClock
) -> None:
    first_frames: list[dict[str, Any]] = [
        {"type": "publish", "id": "e1", "stream": "s", "ts": 1, "body": None},
        {"type": "ping"},
        {"type": "auth", "sig": "x"},
        {"type": "no-such-type"},
        {"v": 1},
    ]
    for frame in first_frames:
        client = await relay.open()
        await client.send(frame)
        error, code, _ = await client.expect_close()
        assert (error["code"], code) == ("protocol_error", 1002), frame

    client = await relay.open()
    await client.send(hello("0f8fad5b-d9cb-469f-a165-70867728950e"))
    await client.expect("challenge")
    await client.send(hello("0f8fad5b-d9cb-469f-a165-70867728950e"))
    error, code, _ = await client.expect_close()
    assert (error["code"], code) == ("protocol_error", 1002)


async def test_hello_or_auth_after_the_welcome_is_a_protocol_error_closing_1002(
    relay: Relay, autojump_clock: MockClock
) -> None:
    device = await relay.device(await relay.user())
    for frame in (hello(device.device_id), {"type": "auth", "sig": "x"}):
        client = await relay.connect(device)
        await client.send(frame)
        error, code, _ = await client.expect_close()
        assert (error["code"], code) == ("protocol_error", 1002)


async def test_an_unavailable_store_during_the_handshake_closes_1013(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)
    device = await relay.device(await relay.user())
    store.failures["lookup_device"] = StoreUnavailable(detail="database is down")
    client = await relay.open()
    await expect_refused_handshake(client, device, "unavailable", 1013)


async def test_an_unexpected_failure_is_internal_with_only_the_safe_message_and_closes_1011(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)
    device = await relay.device(await relay.user())
    store.failures["recent_streams"] = RuntimeError("secret detail /var/lib/relay")
    client = await relay.open()

    error = await client.authenticate(device)

    assert set(error) == {"type", "code", "message", "request_id"}
    assert (error["code"], error["message"]) == ("internal", "Internal server error")
    await client.expect_closed(1011, "internal")


async def test_a_query_parameter_on_the_endpoint_is_bad_request_naming_it_and_closes_1002(
    relay: Relay, autojump_clock: MockClock
) -> None:
    client = await relay.open(query_string=b"token=abc&x=1")
    error, code, _ = await client.expect_close()
    assert (error["code"], error["path"], code) == ("bad_request", "$.query.token", 1002)
    empty = await relay.open(query_string=b"")
    await empty.handshake(await relay.device(await relay.user()))
