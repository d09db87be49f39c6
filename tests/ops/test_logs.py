"""Structured logs (relay.ops.logs): one JSON object per line, context ids, nothing secret."""

from __future__ import annotations

import io
import json
import logging

import pytest
import trio

from relay import crypto
from relay.ops import logs


@pytest.fixture
def captured(restore_logging: None) -> io.StringIO:
    stream = io.StringIO()
    logs.configure_logging(stream, logging.INFO, json_lines=True)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_object_with_its_level_logger_and_message(captured: io.StringIO) -> None:
    logging.getLogger("relay.test").info("hello %s", "world")
    (record,) = lines(captured)
    assert list(record) == ["ts", "level", "logger", "message"]
    assert (record["level"], record["logger"], record["message"]) == ("info", "relay.test", "hello world")
    assert str(record["ts"]).endswith("Z")


async def test_the_ids_of_the_request_or_session_are_added_and_reach_child_tasks(
    captured: io.StringIO,
) -> None:
    log = logging.getLogger("relay.test")
    logs.session_id.set("33333333-3333-4333-8333-333333333333")
    logs.device_id.set("22222222-2222-4222-8222-222222222222")

    async def child() -> None:
        log.warning("from a child task")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(child)
    (record,) = lines(captured)
    assert record["session_id"] == "33333333-3333-4333-8333-333333333333"
    assert record["device_id"] == "22222222-2222-4222-8222-222222222222"
    assert "request_id" not in record


def test_keys_tokens_and_signatures_are_redacted_wherever_they_appear(captured: io.StringIO) -> None:
    key = crypto.SigningKey.generate()
    token = crypto.random_token()
    signature = key.sign(b"x")
    log = logging.getLogger("relay.test")
    log.info("key %s token %s sig %s", key.seed_b64, token, signature)
    try:
        raise ValueError(f"bad token {token}")
    except ValueError:
        log.exception("failed")
    text = captured.getvalue()
    for secret in (key.seed_b64, token, signature):
        assert secret not in text
    records = lines(captured)
    assert records[0]["message"] == "key [redacted] token [redacted] sig [redacted]"
    assert records[1]["exc_type"] == "ValueError"
    assert "exc" not in records[1]  # production: the exception's text is left out
    assert any("test_logs.py" in frame for frame in records[1]["stack"])  # type: ignore[attr-defined]


def test_ids_and_short_values_are_not_mistaken_for_secrets() -> None:
    text = "device 22222222-2222-4222-8222-222222222222 stream notes/2024 request req-1"
    assert logs.redact(text) == text


def test_development_logs_keep_the_exception_text_redacted(restore_logging: None) -> None:
    stream = io.StringIO()
    logs.configure_logging(stream, logging.INFO, json_lines=True, production=False)
    token = crypto.random_token()
    try:
        raise RuntimeError(f"boom {token}")
    except RuntimeError:
        logging.getLogger("relay.test").exception("failed")
    (record,) = lines(stream)
    assert "RuntimeError: boom [redacted]" in str(record["exc"])


def test_text_logs_for_people_carry_the_ids_too(restore_logging: None) -> None:
    stream = io.StringIO()
    logs.configure_logging(stream, logging.INFO, json_lines=False)
    logs.request_id.set("req-7")
    logging.getLogger("relay.test").info("served")
    assert stream.getvalue().rstrip().endswith("relay.test: served [request_id=req-7]")
