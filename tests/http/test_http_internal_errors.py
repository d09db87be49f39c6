"""A handler that fails on purpose: in production the client sees only the request id, the log sees more."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import attrs
import pytest
from http_support import open_relay
from signed_support import first_device, pair, signed
from trio.testing import MockClock

from relay.config import Settings
from relay.store.base import DeletedCounts, DeviceRecord, IssuedToken
from relay.store.memory import MemoryStore

SECRET = "secret detail: /var/lib/relay/relay.db row 42"


@attrs.define(eq=False)
class BrokenStore(MemoryStore):
    """A MemoryStore whose account methods raise a plain RuntimeError once ``broken`` is set."""

    broken: bool = False

    def _fail(self) -> None:
        if self.broken:
            raise RuntimeError(SECRET)

    async def list_devices(self, user_id: str) -> list[DeviceRecord]:
        self._fail()
        return await super().list_devices(user_id)

    async def rename_device(self, device_id: str, **kwargs: Any) -> DeviceRecord:
        self._fail()
        return await super().rename_device(device_id, **kwargs)

    async def revoke_device(self, device_id: str, **kwargs: Any) -> DeviceRecord:
        self._fail()
        return await super().revoke_device(device_id, **kwargs)

    async def delete_user(self, user_id: str, **kwargs: Any) -> DeletedCounts:
        self._fail()
        return await super().delete_user(user_id, **kwargs)

    async def create_token(self, **kwargs: Any) -> IssuedToken:
        self._fail()
        return await super().create_token(**kwargs)


ROUTES = [
    ("GET", "/v1/devices", None),
    ("PATCH", "/v1/devices/{laptop}", {"name": "New"}),
    ("DELETE", "/v1/devices/{laptop}", None),
    ("DELETE", "/v1/user", None),
    ("POST", "/v1/pairings", {}),
]


@pytest.mark.parametrize(("method", "target", "body"), ROUTES)
async def test_a_failing_handler_shows_only_internal_server_error_and_the_request_id_in_production(
    tmp_path: Path,
    autojump_clock: MockClock,
    caplog: pytest.LogCaptureFixture,
    method: str,
    target: str,
    body: object,
) -> None:
    store = BrokenStore()
    async with open_relay(Settings(data_dir=tmp_path), store) as relay:
        phone = await first_device(relay)
        laptop = await pair(relay, phone, "Laptop")
        store.broken = True
        caplog.set_level(logging.ERROR, logger="relay.http")
        answer = await signed(
            relay,
            phone,
            method,
            target.format(laptop=laptop.device_id),
            json=body,
            headers={"X-Request-ID": "req-boom-1"},
        )

    assert answer.status == 500
    assert answer.headers["X-Request-ID"] == "req-boom-1"
    assert answer.body == {
        "error": {"code": "internal", "message": "Internal server error", "request_id": "req-boom-1"}
    }
    raw = json.dumps(answer.body) + json.dumps(dict(answer.headers))
    assert "RuntimeError" not in raw
    assert "relay.db" not in raw
    [record] = [r for r in caplog.records if "req-boom-1" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert SECRET in str(record.exc_info[1])  # the operator's log has the detail


async def test_in_development_the_failure_detail_is_added(tmp_path: Path, autojump_clock: MockClock) -> None:
    store = BrokenStore()
    async with open_relay(Settings(data_dir=tmp_path, env="development"), store) as relay:
        phone = await first_device(relay)
        store.broken = True
        answer = await signed(relay, phone, "GET", "/v1/devices", headers={"X-Request-ID": "req-dev"})
    assert answer.status == 500
    assert answer.body["error"]["detail"] == f"RuntimeError: {SECRET}"


async def test_a_fresh_request_id_is_in_the_body_and_the_log_when_the_client_sent_none(
    tmp_path: Path, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = BrokenStore()
    async with open_relay(Settings(data_dir=tmp_path), store) as relay:
        phone = await first_device(relay)
        store.broken = True
        caplog.set_level(logging.ERROR, logger="relay.http")
        answer = await signed(relay, phone, "GET", "/v1/devices")
    request_id = answer.headers["X-Request-ID"]
    assert answer.body["error"]["request_id"] == request_id
    assert any(request_id in r.getMessage() for r in caplog.records)
