"""Every log line of a session names it: the session and device ids travel in the log context
(``relay.ops.logs``), set by the session's task once the device is authenticated and copied by its
tasks."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from gateway_harness import FaultyStore, RelayFactory
from trio.testing import MockClock

from relay.gateway import AdmitAll
from relay.ops import logs
from relay.ops.logs import JsonFormatter
from relay.store.memory import MemoryStore


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the gateway logs, formatted as it is emitted (the context is read in the emitting task)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("relay.gateway")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


async def test_an_internal_error_inside_a_session_is_logged_with_its_session_and_device(
    make_relay: RelayFactory, autojump_clock: MockClock, json_lines: io.StringIO
) -> None:
    memory = MemoryStore()
    store = FaultyStore(memory)
    relay = await make_relay(store=store, memory=memory)  # type: ignore[arg-type]
    device = await relay.device(await relay.user())
    client = await relay.connect(device)
    store.failures["stream_head"] = RuntimeError("a bug in the store")

    await client.send({"type": "replay", "stream": "notes"})  # served by the pager, a task of its own
    error, code, _ = await client.expect_close()
    assert (error["code"], code) == ("internal", 1011)

    records = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    internal = [r for r in records if r["message"].startswith("internal error in a session")]
    assert len(internal) == 1
    assert internal[0]["session_id"] == client.welcome["session_id"]  # type: ignore[index]
    assert internal[0]["device_id"] == device.device_id
    assert logs.session_id.get() is None  # the test's own task never had them


class RecordingAdmission(AdmitAll):
    """Admits all, and notes the log context of the task that checks (the publisher)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, str | None]] = []

    def check_publish(self, *, user_id: str, device_id: str, body_size: int, now_ms: int) -> None:
        self.seen.append((logs.session_id.get(), logs.device_id.get()))


async def test_the_sessions_tasks_carry_its_ids_and_another_session_its_own(
    make_relay: RelayFactory, autojump_clock: MockClock
) -> None:
    admission = RecordingAdmission()
    relay = await make_relay(admission=admission)
    user = await relay.user()
    phone, laptop = await relay.device(user), await relay.device(user)
    phone_client = await relay.connect(phone)
    laptop_client = await relay.connect(laptop)
    await phone_client.expect("presence")

    await relay.publish(phone_client, "notes", "e1")
    await laptop_client.expect("event")
    await relay.publish(laptop_client, "notes", "e2")

    assert admission.seen == [
        (phone_client.welcome["session_id"], phone.device_id),  # type: ignore[index]
        (laptop_client.welcome["session_id"], laptop.device_id),  # type: ignore[index]
    ]
