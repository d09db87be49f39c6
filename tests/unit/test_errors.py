"""The error tree: every code knows its HTTP status, close code and safe message; sanitisation."""

from __future__ import annotations

import pytest

from relay import errors
from relay.errors import (
    INTERNAL_MESSAGE,
    BadRequest,
    ClockSkew,
    DeviceRevoked,
    InternalError,
    InvalidJson,
    RelayError,
    SeqConflict,
    StoreUnavailable,
    Unavailable,
    error_by_code,
    error_payload,
)

# PROTOCOL.md §4.6: the close code of every error that closes a session.
CLOSE_CODES = {
    "going_away": 1001,
    "heartbeat_timeout": 1001,
    "handshake_timeout": 1001,
    "protocol_error": 1002,
    "unsupported_version": 1002,
    "binary_frame": 1003,
    "invalid_json": 1007,
    "unauthorized": 1008,
    "device_revoked": 1008,
    "account_deleted": 1008,
    "frame_too_large": 1009,
    "internal": 1011,
    "session_replaced": 4001,
    "slow_consumer": 4008,
    "bus_lost": 4008,
}
# PROTOCOL.md §4.6: errors that keep the session open after the handshake.
KEEP_OPEN = {
    "bad_request",
    "too_large",
    "expired",
    "clock_skew",
    "rate_limited",
    "quota_exceeded",
    "id_conflict",
    "seq_conflict",
    "unavailable",
    "invalid_token",
    "busy",
    "unknown_type",
}
# PROTOCOL.md §2, §3, §6: HTTP statuses the spec names.
HTTP_STATUSES = {
    "bad_request": 400,
    "unauthorized": 401,
    "invalid_token": 401,
    "device_revoked": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "name_taken": 409,
    "key_in_use": 409,
    "too_many_devices": 409,
    "account_deleted": 410,
    "too_large": 413,
    "rate_limited": 429,
    "internal": 500,
}


@pytest.mark.parametrize(("code", "close"), sorted(CLOSE_CODES.items()))
def test_session_closing_errors_close_with_the_specified_code(code: str, close: int) -> None:
    exc = error_by_code(code)()
    assert exc.code == code
    assert not exc.keeps_session_open
    assert exc.close_code_for(in_handshake=False) == close
    assert exc.close_code_for(in_handshake=True) == close


@pytest.mark.parametrize("code", sorted(KEEP_OPEN))
def test_request_errors_keep_the_session_open_after_the_handshake(code: str) -> None:
    exc = error_by_code(code)()
    assert exc.code == code
    assert exc.keeps_session_open
    assert exc.close_code_for(in_handshake=False) is None


def test_bad_request_and_unavailable_close_during_the_handshake() -> None:
    assert BadRequest(path="$.v").close_code_for(in_handshake=True) == 1002
    assert Unavailable().close_code_for(in_handshake=True) == 1013


@pytest.mark.parametrize(("code", "status"), sorted(HTTP_STATUSES.items()))
def test_http_statuses(code: str, status: int) -> None:
    assert error_by_code(code).http_status == status


def test_every_wire_code_maps_back_to_its_class() -> None:
    for code in CLOSE_CODES.keys() | KEEP_OPEN | HTTP_STATUSES.keys():
        assert error_by_code(code).code == code
    assert error_by_code("no_such_code") is InternalError
    assert error_by_code("unavailable") is Unavailable  # not the StoreUnavailable subclass


def test_every_error_class_has_a_one_line_safe_message() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, RelayError)]
    for cls in classes:
        assert cls.safe_message
        assert "\n" not in cls.safe_message


def test_code_specific_fields_travel_beside_code() -> None:
    exc = SeqConflict(head=7)
    assert exc.to_wire() == {"code": "seq_conflict", "message": SeqConflict.safe_message, "head": 7}
    assert ClockSkew(server_time=5).to_wire()["server_time"] == 5
    assert BadRequest(path="$.expect_sq").path == "$.expect_sq"


def test_unknown_fields_are_a_programming_error() -> None:
    with pytest.raises(TypeError):
        RelayError(secret="x")


def test_none_fields_are_omitted() -> None:
    assert "path" not in BadRequest().to_wire()


def test_production_hides_every_detail_of_an_unexpected_exception() -> None:
    exc = KeyError("/var/lib/relay/secret.key")
    payload = error_payload(exc, request_id="r-1", production=True)
    assert payload == {"code": "internal", "message": INTERNAL_MESSAGE, "request_id": "r-1"}


def test_production_hides_the_detail_of_an_internal_error() -> None:
    payload = error_payload(InternalError(detail="db path /x"), request_id="r-2", production=True)
    assert payload == {"code": "internal", "message": "Internal server error", "request_id": "r-2"}


def test_development_adds_the_detail() -> None:
    payload = error_payload(ValueError("boom"), request_id="r-3", production=False)
    assert payload["message"] == INTERNAL_MESSAGE
    assert payload["detail"] == "ValueError: boom"
    payload = error_payload(InternalError(detail="why"), request_id=None, production=False)
    assert payload["detail"] == "why"
    assert "request_id" not in payload


def test_relay_errors_are_shown_as_they_are_but_without_detail() -> None:
    exc = StoreUnavailable(detail="psycopg: connection refused to 10.0.0.1", retry_after_ms=500)
    payload = error_payload(exc, request_id="r", production=True)
    assert payload == {
        "code": "unavailable",
        "message": Unavailable.safe_message,
        "retry_after_ms": 500,
        "request_id": "r",
    }


def test_http_uses_bad_request_with_the_root_path_for_invalid_json() -> None:
    payload = error_payload(InvalidJson(), request_id=None, production=True, http=True)
    assert payload["code"] == "bad_request"
    assert payload["path"] == "$"
    ws_payload = error_payload(InvalidJson(), request_id=None, production=True)
    assert ws_payload["code"] == "invalid_json"
    assert "path" not in ws_payload


def test_str_of_an_error_keeps_detail_for_operators_only() -> None:
    exc = DeviceRevoked(detail="device 123")
    assert "device 123" in str(exc)
    assert "device 123" not in repr(exc.to_wire())
