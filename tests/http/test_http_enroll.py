"""POST /v1/enroll (PROTOCOL.md §2): every answer, and a token that only a 201 consumes."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import trio
from http_support import T0_MS, Relay, enroll_body, open_relay
from trio.testing import MockClock

from relay import crypto
from relay.bus.local import LocalBus
from relay.config import Settings
from relay.errors import BusUnavailable, StoreUnavailable
from relay.protocol.messages import DeviceChange
from relay.protocol.syntax import is_uuid
from relay.store.base import DeviceRecord, Enrollment
from relay.store.memory import MemoryStore


def error(answer: object) -> dict[str, object]:
    body = getattr(answer, "body", None)
    assert isinstance(body, dict), body
    inner = body["error"]
    assert isinstance(inner, dict)
    return inner


async def assert_token_still_usable(relay: Relay, token: str) -> None:
    answer = await relay.enroll(enroll_body(token, crypto.SigningKey.generate(), "Spare tablet"))
    assert answer.status == 201, answer.body


# --- success -------------------------------------------------------------------------------------------


async def test_a_signed_enrolment_with_a_fresh_token_creates_the_device(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user_id, token = await relay.new_token()
    key = crypto.SigningKey.generate()

    answer = await relay.enroll(enroll_body(token, key, "Alice's phone"))

    assert answer.status == 201
    assert list(answer.body) == ["user_id", "device_id", "name"]
    assert answer.body["user_id"] == user_id
    assert is_uuid(answer.body["device_id"])
    assert answer.body["name"] == "Alice's phone"
    [device] = await relay.store.list_devices(user_id)
    assert device.device_id == answer.body["device_id"]
    assert device.public_key == key.public_key
    assert device.created_at == T0_MS


async def test_the_answer_carries_the_stored_name_and_the_signature_covers_the_name_as_sent(
    relay: Relay, autojump_clock: MockClock
) -> None:
    _, token = await relay.new_token()
    sent = "  Cafe\u0301 laptop\u3000"  # NFD é, ideographic space: normalised and trimmed when stored

    answer = await relay.enroll(enroll_body(token, crypto.SigningKey.generate(), sent))

    assert answer.status == 201
    assert answer.body["name"] == "Café laptop"


async def test_a_used_token_is_invalid(relay: Relay, autojump_clock: MockClock) -> None:
    _, token = await relay.new_token()
    assert (await relay.enroll(enroll_body(token, crypto.SigningKey.generate(), "One"))).status == 201

    answer = await relay.enroll(enroll_body(token, crypto.SigningKey.generate(), "Two"))

    assert answer.status == 401
    assert error(answer)["code"] == "invalid_token"


# --- 401 invalid_token: one answer for all ----------------------------------------------------------


async def test_an_unknown_token_is_invalid(relay: Relay, autojump_clock: MockClock) -> None:
    answer = await relay.enroll(enroll_body(crypto.random_token(), crypto.SigningKey.generate()))
    assert answer.status == 401
    assert error(answer) == {
        "code": "invalid_token",
        "message": "Invalid token",
        "request_id": answer.headers["X-Request-ID"],
    }


async def test_a_token_is_valid_up_to_its_expiry_and_invalid_one_millisecond_later(
    settings: Settings, autojump_clock: MockClock
) -> None:
    async with open_relay(settings) as relay:
        _, on_time = await relay.new_token()
        _, late = await relay.new_token()
        await trio.sleep(settings.token_ttl_s)  # virtual time: now == expires_at
        assert (await relay.enroll(enroll_body(on_time, crypto.SigningKey.generate(), "A"))).status == 201
        await trio.sleep(0.001)

        answer = await relay.enroll(enroll_body(late, crypto.SigningKey.generate(), "B"))

    assert answer.status == 401
    assert error(answer)["code"] == "invalid_token"


async def test_a_token_bound_to_another_key_is_invalid_and_stays_usable_by_its_key(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user_id, _ = await relay.new_token()
    bound = crypto.SigningKey.generate()
    issued = await relay.store.create_token(
        user_id=user_id, now_ms=relay.clock.now_ms(), token_ttl_ms=900_000, bound_key=bound.public_key
    )

    other = await relay.enroll(enroll_body(issued.token, crypto.SigningKey.generate(), "Intruder"))
    mine = await relay.enroll(enroll_body(issued.token, bound, "Mine"))

    assert (other.status, error(other)["code"]) == (401, "invalid_token")
    assert mine.status == 201


# --- 409 conflicts: the token stays usable ---------------------------------------------------------


async def test_a_name_taken_by_another_device_of_the_user_is_409_and_keeps_the_token(
    relay: Relay, autojump_clock: MockClock
) -> None:
    user_id, first = await relay.new_token()
    assert (await relay.enroll(enroll_body(first, crypto.SigningKey.generate(), "Phone"))).status == 201
    second = (
        await relay.store.create_token(user_id=user_id, now_ms=relay.clock.now_ms(), token_ttl_ms=900_000)
    ).token

    answer = await relay.enroll(
        enroll_body(second, crypto.SigningKey.generate(), "\uff30\uff28\uff2f\uff2e\uff25")
    )

    assert (answer.status, error(answer)["code"]) == (409, "name_taken")
    await assert_token_still_usable(relay, second)


async def test_a_key_enrolled_anywhere_on_the_server_is_409_key_in_use_and_keeps_the_token(
    relay: Relay, autojump_clock: MockClock
) -> None:
    key = crypto.SigningKey.generate()
    _, first = await relay.new_token()
    assert (await relay.enroll(enroll_body(first, key, "Phone"))).status == 201
    _, other_users_token = await relay.new_token()

    answer = await relay.enroll(enroll_body(other_users_token, key, "Laptop"))

    assert (answer.status, error(answer)["code"]) == (409, "key_in_use")
    await assert_token_still_usable(relay, other_users_token)


async def test_too_many_devices_is_409_and_keeps_the_token(tmp_path: Path, autojump_clock: MockClock) -> None:
    async with open_relay(Settings(data_dir=tmp_path, max_devices=1)) as relay:
        user_id, first = await relay.new_token()
        enrolled = await relay.enroll(enroll_body(first, crypto.SigningKey.generate(), "Phone"))
        second = (
            await relay.store.create_token(user_id=user_id, now_ms=relay.clock.now_ms(), token_ttl_ms=900_000)
        ).token

        refused = await relay.enroll(enroll_body(second, crypto.SigningKey.generate(), "Laptop"))
        await relay.store.revoke_device(enrolled.body["device_id"], now_ms=relay.clock.now_ms())
        retried = await relay.enroll(enroll_body(second, crypto.SigningKey.generate(), "Laptop"))

    assert (refused.status, error(refused)["code"]) == (409, "too_many_devices")
    assert retried.status == 201


# --- 400 bad_request ---------------------------------------------------------------------------------


async def test_a_signature_that_does_not_verify_is_400_at_sig_and_keeps_the_token(
    relay: Relay, autojump_clock: MockClock
) -> None:
    _, token = await relay.new_token()
    body = enroll_body(token, crypto.SigningKey.generate(), "Phone")
    body["sig"] = crypto.SigningKey.generate().sign(crypto.enroll_string(token, body["public_key"], "Phone"))

    answer = await relay.enroll(body)

    assert answer.status == 400
    assert error(answer)["code"] == "bad_request"
    assert error(answer)["path"] == "$.sig"
    await assert_token_still_usable(relay, token)


async def test_a_signature_over_the_normalised_name_instead_of_the_name_as_sent_does_not_verify(
    relay: Relay, autojump_clock: MockClock
) -> None:
    _, token = await relay.new_token()
    key = crypto.SigningKey.generate()
    body = enroll_body(token, key, "Phone")
    body["name"] = " Phone "  # signed "Phone": the stored name, not the one sent

    answer = await relay.enroll(body)

    assert (answer.status, error(answer)["path"]) == (400, "$.sig")


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (b"", "$"),
        (b"{", "$"),
        (b"[]", "$"),
        (b'"token"', "$"),
        (b'{"token": "a", "token": "b"}', "$"),
        (b"\xef\xbb\xbf{}", "$"),
        (b'{"name": "\\ud800"}', "$"),
        (b"\xff", "$"),
        (b"{}", "$.token"),
    ],
    ids=[
        "empty",
        "truncated",
        "array",
        "string",
        "duplicate",
        "bom",
        "surrogate",
        "not-utf8",
        "empty-object",
    ],
)
async def test_a_body_that_is_not_an_enrolment_object_is_400_with_a_path(
    relay: Relay, autojump_clock: MockClock, data: bytes, path: str
) -> None:
    answer = await relay.request(
        "POST", "/v1/enroll", data=data, headers={"Content-Type": "application/json"}
    )
    assert answer.status == 400
    assert error(answer)["code"] == "bad_request"
    assert error(answer)["path"] == path
    assert str(error(answer)["message"]).startswith(f"{path}: ")


def valid_members() -> dict[str, object]:
    return {**enroll_body(crypto.random_token(), crypto.SigningKey.generate(), "Phone")}


@pytest.mark.parametrize(
    ("change", "path"),
    [
        # unknown members come first, in document order, whatever else is wrong
        ({"extra": 1}, "$.extra"),
        ({"token": 1, "Token": "x"}, "$.Token"),
        ({"token": None, "sig": "x", "a b": 1}, "$['a b']"),
        # then malformed members, in document order
        ({"token": None}, "$.token"),
        ({"token": crypto.b64encode(b"\x01" * 31)}, "$.token"),
        ({"token": crypto.b64encode(b"\x01" * 32) + "="}, "$.token"),
        ({"token": crypto.b64encode(b"\x01" * 32).replace("B", "+")}, "$.token"),
        ({"public_key": crypto.b64encode(b"\x01" * 33)}, "$.public_key"),
        ({"public_key": 7}, "$.public_key"),
        ({"sig": crypto.b64encode(b"\x01" * 63)}, "$.sig"),
        ({"name": ""}, "$.name"),
        ({"name": "   "}, "$.name"),
        ({"name": "x" * 65}, "$.name"),
        ({"name": "new\nline"}, "$.name"),
        ({"name": "bidi\u202eoverride"}, "$.name"),
        ({"name": ["Phone"]}, "$.name"),
    ],
)
async def test_a_malformed_member_is_400_naming_it(
    relay: Relay, autojump_clock: MockClock, change: dict[str, object], path: str
) -> None:
    body = valid_members() | change
    answer = await relay.request("POST", "/v1/enroll", data=json.dumps(body).encode())
    assert answer.status == 400
    assert error(answer)["code"] == "bad_request"
    assert error(answer)["path"] == path


async def test_members_are_checked_in_document_order_then_missing_ones_in_definition_order(
    relay: Relay, autojump_clock: MockClock
) -> None:
    wrong_name_first = b'{"name": "", "token": 1}'
    missing_two = json.dumps({"token": crypto.random_token(), "name": "Phone"}).encode()

    first = await relay.request("POST", "/v1/enroll", data=wrong_name_first)
    second = await relay.request("POST", "/v1/enroll", data=missing_two)

    assert error(first)["path"] == "$.name"
    assert error(second)["path"] == "$.public_key"
    assert error(second)["message"] == "$.public_key: missing member"


async def test_a_malformed_request_does_not_consume_the_token(
    relay: Relay, autojump_clock: MockClock
) -> None:
    _, token = await relay.new_token()
    body = enroll_body(token, crypto.SigningKey.generate(), "Phone") | {"extra": True}
    assert (await relay.enroll(body)).status == 400
    await assert_token_still_usable(relay, token)


async def test_an_unknown_query_parameter_is_400_and_keeps_the_token(
    relay: Relay, autojump_clock: MockClock
) -> None:
    _, token = await relay.new_token()
    body = enroll_body(token, crypto.SigningKey.generate(), "Phone")

    answer = await relay.request("POST", "/v1/enroll?dry_run=1", json=body)

    assert answer.status == 400
    assert error(answer)["path"] == "$.query.dry_run"
    await assert_token_still_usable(relay, token)


# --- 413, 405, 503 ------------------------------------------------------------------------------------


async def test_a_body_over_max_frame_bytes_is_413_too_large(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    settings = Settings(data_dir=tmp_path, max_event_bytes=1000, max_frame_bytes=5096)
    async with open_relay(settings) as relay:
        _, token = await relay.new_token()
        body = enroll_body(token, crypto.SigningKey.generate(), "Phone")
        padded = json.dumps(body).encode()[:-1] + b" " * 5096 + b"}"

        answer = await relay.request("POST", "/v1/enroll", data=padded)
        await assert_token_still_usable(relay, token)

    assert answer.status == 413
    assert error(answer)["code"] == "too_large"


async def test_a_body_exactly_at_max_frame_bytes_is_read(tmp_path: Path, autojump_clock: MockClock) -> None:
    settings = Settings(data_dir=tmp_path, max_event_bytes=1000, max_frame_bytes=5096)
    async with open_relay(settings) as relay:
        _, token = await relay.new_token()
        raw = json.dumps(enroll_body(token, crypto.SigningKey.generate(), "Phone")).encode()
        padded = raw[:-1] + b" " * (5096 - len(raw)) + b"}"
        assert len(padded) == 5096

        answer = await relay.request("POST", "/v1/enroll", data=padded)

    assert answer.status == 201


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_another_method_is_405_naming_post(
    relay: Relay, autojump_clock: MockClock, method: str
) -> None:
    answer = await relay.request(method, "/v1/enroll")
    assert answer.status == 405
    assert "POST" in answer.headers["Allow"]
    assert error(answer)["code"] == "method_not_allowed"


@attrs.define(eq=False)
class UnreachableStore(MemoryStore):
    async def enroll(self, enrollment: Enrollment) -> DeviceRecord:
        raise StoreUnavailable(detail="disk on fire", retry_after_ms=1500)


async def test_a_store_that_is_down_is_503_unavailable_with_retry_after(
    settings: Settings, autojump_clock: MockClock
) -> None:
    async with open_relay(settings, UnreachableStore()) as relay:
        _, token = await relay.new_token()
        answer = await relay.enroll(enroll_body(token, crypto.SigningKey.generate()))

    assert answer.status == 503
    assert error(answer)["code"] == "unavailable"
    assert error(answer)["retry_after_ms"] == 1500
    assert answer.headers["Retry-After"] == "2"
    assert "disk on fire" not in json.dumps(answer.body)


# --- the user's live sessions hear of the new device ----------------------------------------------------


@attrs.define(eq=False)
class RecordingBus(LocalBus):
    announced: list[tuple[str, str, str, str, int]] = attrs.field(factory=list)
    down: bool = False

    async def announce_device(
        self, user_id: str, change: DeviceChange, device_id: str, name: str, at: int
    ) -> None:
        if self.down:
            raise BusUnavailable(detail="redis went away")
        self.announced.append((user_id, change, device_id, name, at))
        await super().announce_device(user_id, change, device_id, name, at)


async def test_an_enrolment_is_announced_to_the_users_sessions(
    settings: Settings, autojump_clock: MockClock
) -> None:
    bus = RecordingBus()
    async with open_relay(settings, bus=bus) as relay:
        user_id, token = await relay.new_token()
        refused = await relay.enroll(enroll_body(token, crypto.SigningKey.generate(), ""))
        answer = await relay.enroll(enroll_body(token, crypto.SigningKey.generate(), " Phone"))
    assert refused.status == 400
    assert bus.announced == [(user_id, "enrolled", answer.body["device_id"], "Phone", T0_MS)]


async def test_an_enrolment_stands_when_the_bus_cannot_announce_it(
    settings: Settings, autojump_clock: MockClock
) -> None:
    async with open_relay(settings, bus=RecordingBus(down=True)) as relay:
        user_id, token = await relay.new_token()
        answer = await relay.enroll(enroll_body(token, crypto.SigningKey.generate(), "Phone"))
        devices = await relay.store.list_devices(user_id)
    assert answer.status == 201
    assert [d.device_id for d in devices] == [answer.body["device_id"]]
