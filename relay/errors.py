"""The one error tree of relay.

Every error the server can answer is a class here. Each class knows its wire ``code``, the HTTP
status it is answered with, the WebSocket close code it closes a session with (``None`` when it never
closes one) and a safe default message. Code-specific fields (``path``, ``head``, ``server_time``,
``retry_after_ms``, ``supported``) travel in :attr:`RelayError.fields`.

This module is pure: it imports nothing but the standard library, so ``relay.protocol`` may use it.
Errors of drivers (sqlite3, psycopg, redis) are mapped to these at the store and bus boundary
(``raise StoreUnavailable(...) from exc``); nothing above that boundary catches a driver exception.

::

    RelayError
    ├── RequestError            refused request; after the handshake the session stays open
    │   ├── BadRequest          bad_request      400  (1002 during the handshake)   + path
    │   ├── TooLarge            too_large        413
    │   ├── Expired             expired          400                                + server_time
    │   ├── ClockSkew           clock_skew       400                                + server_time
    │   ├── RateLimited         rate_limited     429                                + retry_after_ms
    │   ├── QuotaExceeded       quota_exceeded   403
    │   ├── IdConflict          id_conflict      409
    │   ├── SeqConflict         seq_conflict     409                                + head
    │   ├── InvalidToken        invalid_token    401
    │   ├── Busy                busy             429
    │   ├── UnknownType         unknown_type     400
    │   ├── Unavailable         unavailable      503  (1013 during the handshake)   + retry_after_ms
    │   │   ├── StoreUnavailable
    │   │   └── BusUnavailable
    │   ├── NotFound            not_found        404  (HTTP only)
    │   ├── MethodNotAllowed    method_not_allowed 405 (HTTP only)
    │   ├── NameTaken           name_taken       409  (HTTP only)
    │   ├── KeyInUse            key_in_use       409  (HTTP only)
    │   └── TooManyDevices      too_many_devices 409  (HTTP only)
    ├── SessionError            always closes the session
    │   ├── ProtocolViolation   the peer broke the framing or the message order
    │   │   ├── ProtocolError       protocol_error       1002
    │   │   ├── UnsupportedVersion  unsupported_version  1002   + supported
    │   │   ├── BinaryFrame         binary_frame         1003
    │   │   ├── InvalidJson         invalid_json         1007   (HTTP: 400 bad_request)
    │   │   └── FrameTooLarge       frame_too_large      1009   (HTTP: 413 too_large)
    │   ├── AuthError
    │   │   ├── Unauthorized        unauthorized         1008 / 401 + server_time (HTTP)
    │   │   ├── DeviceRevoked       device_revoked       1008 / 403
    │   │   └── AccountDeleted      account_deleted      1008 / 410
    │   ├── HandshakeTimeout    handshake_timeout    1001
    │   ├── HeartbeatTimeout    heartbeat_timeout    1001
    │   ├── GoingAway           going_away           1001
    │   ├── SessionReplaced     session_replaced     4001
    │   ├── SlowConsumer        slow_consumer        4008
    │   └── BusLost             bus_lost             4008
    └── InternalError           internal             500 / 1011

In production an unexpected exception, or an :class:`InternalError`, reaches a client as exactly
``Internal server error`` plus the request id (:func:`error_payload`); in development the detail is added.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

__all__ = [
    "INTERNAL_MESSAGE",
    "AccountDeleted",
    "AuthError",
    "BadRequest",
    "BinaryFrame",
    "BusLost",
    "BusUnavailable",
    "Busy",
    "ClockSkew",
    "DeviceRevoked",
    "Expired",
    "FrameTooLarge",
    "GoingAway",
    "HandshakeTimeout",
    "HeartbeatTimeout",
    "IdConflict",
    "InternalError",
    "InvalidJson",
    "InvalidToken",
    "KeyInUse",
    "MethodNotAllowed",
    "NameTaken",
    "NotFound",
    "ProtocolError",
    "ProtocolViolation",
    "QuotaExceeded",
    "RateLimited",
    "RelayError",
    "RequestError",
    "SeqConflict",
    "SessionError",
    "SessionReplaced",
    "SlowConsumer",
    "StoreUnavailable",
    "TooLarge",
    "TooManyDevices",
    "Unauthorized",
    "Unavailable",
    "UnknownType",
    "UnsupportedVersion",
    "error_by_code",
    "error_payload",
]

#: The only message an internal error ever carries in production.
INTERNAL_MESSAGE = "Internal server error"

#: Code-specific members an error may carry beside ``code`` and ``message`` (PROTOCOL.md §4.6).
FIELD_NAMES = frozenset({"path", "head", "server_time", "retry_after_ms", "supported"})


class RelayError(Exception):
    """Base of every error relay answers with.

    ``message`` must be safe to show to the peer: it is sent as is. ``detail`` is for operators and
    development mode only; it never reaches a client in production. ``fields`` are the code-specific
    members (see :data:`FIELD_NAMES`).
    """

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    #: The code an HTTP answer carries; differs from ``code`` only where §6 says so.
    http_code: ClassVar[str | None] = None
    #: The WebSocket close code when this error ends a session; ``None`` when it never does.
    close_code: ClassVar[int | None] = 1011
    safe_message: ClassVar[str] = INTERNAL_MESSAGE

    def __init__(self, message: str | None = None, *, detail: str | None = None, **fields: object) -> None:
        unknown = set(fields) - FIELD_NAMES
        if unknown:
            raise TypeError(f"unknown error fields: {sorted(unknown)}")
        self.message = message if message is not None else self.safe_message
        self.detail = detail
        self.fields: dict[str, object] = {k: v for k, v in fields.items() if v is not None}
        super().__init__(self.message if detail is None else f"{self.message} ({detail})")

    @property
    def keeps_session_open(self) -> bool:
        """True when, after the handshake, answering this error leaves the session open."""
        return isinstance(self, RequestError)

    def close_code_for(self, *, in_handshake: bool) -> int | None:
        """The close code to use for this error, or ``None`` when the session stays open."""
        if in_handshake or not self.keeps_session_open:
            return self.close_code
        return None

    def to_wire(self) -> dict[str, object]:
        """The members of the ``error`` frame (without ``type`` and ``ref``)."""
        return {"code": self.code, "message": self.message, **self.fields}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, fields={self.fields!r})"


# --- refused requests: the session stays open -------------------------------------------------------


class RequestError(RelayError):
    """A request was refused; after the handshake the session stays open."""

    close_code: ClassVar[int | None] = None


class BadRequest(RequestError):
    code = "bad_request"
    http_status = 400
    close_code = 1002  # only during the handshake
    safe_message = "Malformed request"

    def __init__(self, message: str | None = None, *, path: str | None = None, **kw: object) -> None:
        super().__init__(message, path=path, **kw)  # type: ignore[arg-type]

    @property
    def path(self) -> str | None:
        value = self.fields.get("path")
        return value if isinstance(value, str) else None


class TooLarge(RequestError):
    code = "too_large"
    http_status = 413
    safe_message = "Too large"


class Expired(RequestError):
    code = "expired"
    http_status = 400
    safe_message = "The event has already expired"


class ClockSkew(RequestError):
    code = "clock_skew"
    http_status = 400
    safe_message = "The timestamp is too far ahead of the server's clock"


class RateLimited(RequestError):
    code = "rate_limited"
    http_status = 429
    safe_message = "Rate limit exceeded"


class QuotaExceeded(RequestError):
    code = "quota_exceeded"
    http_status = 403
    safe_message = "Quota exceeded"


class IdConflict(RequestError):
    code = "id_conflict"
    http_status = 409
    safe_message = "This event id was already used for a different event"


class SeqConflict(RequestError):
    code = "seq_conflict"
    http_status = 409
    safe_message = "The stream's head is not the expected one"


class InvalidToken(RequestError):
    code = "invalid_token"
    http_status = 401
    safe_message = "Invalid token"


class Busy(RequestError):
    code = "busy"
    http_status = 429
    safe_message = "Too many requests outstanding"


class UnknownType(RequestError):
    code = "unknown_type"
    http_status = 400
    safe_message = "Unknown message type"


class Unavailable(RequestError):
    code = "unavailable"
    http_status = 503
    close_code = 1013  # only during the handshake
    safe_message = "Service temporarily unavailable"


class StoreUnavailable(Unavailable):
    """The store cannot be reached; raised by store implementations from driver errors."""


class BusUnavailable(Unavailable):
    """The bus cannot be reached; raised by bus implementations from driver errors."""


class NotFound(RequestError):
    code = "not_found"
    http_status = 404
    safe_message = "Not found"


class MethodNotAllowed(RequestError):
    code = "method_not_allowed"
    http_status = 405
    safe_message = "Method not allowed"


class NameTaken(RequestError):
    code = "name_taken"
    http_status = 409
    safe_message = "This name is already used by another device"


class KeyInUse(RequestError):
    code = "key_in_use"
    http_status = 409
    safe_message = "This public key is already enrolled"


class TooManyDevices(RequestError):
    code = "too_many_devices"
    http_status = 409
    safe_message = "The account has too many devices"


# --- errors that close the session ------------------------------------------------------------------


class SessionError(RelayError):
    """An error that always ends the WebSocket session it happens in."""


class ProtocolViolation(SessionError):
    """The peer broke the framing, the encoding or the order of messages."""


class ProtocolError(ProtocolViolation):
    code = "protocol_error"
    http_status = 400
    close_code = 1002
    safe_message = "Unexpected message"


class UnsupportedVersion(ProtocolViolation):
    code = "unsupported_version"
    http_status = 400
    close_code = 1002
    safe_message = "Unsupported protocol version"


class BinaryFrame(ProtocolViolation):
    code = "binary_frame"
    http_status = 400
    close_code = 1003
    safe_message = "Binary frames are not accepted"


class InvalidJson(ProtocolViolation):
    code = "invalid_json"
    http_status = 400
    http_code = "bad_request"
    close_code = 1007
    safe_message = "The frame is not an I-JSON object"


class FrameTooLarge(ProtocolViolation):
    code = "frame_too_large"
    http_status = 413
    http_code = "too_large"
    close_code = 1009
    safe_message = "Frame too large"


class AuthError(SessionError):
    """Authentication failed or is no longer valid."""

    close_code = 1008


class Unauthorized(AuthError):
    code = "unauthorized"
    http_status = 401
    safe_message = "Unauthorized"


class DeviceRevoked(AuthError):
    code = "device_revoked"
    http_status = 403
    safe_message = "This device has been revoked"


class AccountDeleted(AuthError):
    code = "account_deleted"
    http_status = 410
    safe_message = "This account has been deleted"


class HandshakeTimeout(SessionError):
    code = "handshake_timeout"
    http_status = 408
    close_code = 1001
    safe_message = "Handshake timed out"


class HeartbeatTimeout(SessionError):
    code = "heartbeat_timeout"
    http_status = 408
    close_code = 1001
    safe_message = "Nothing heard from the client in time"


class GoingAway(SessionError):
    code = "going_away"
    http_status = 503
    close_code = 1001
    safe_message = "The server is shutting down"


class SessionReplaced(SessionError):
    code = "session_replaced"
    http_status = 409
    close_code = 4001
    safe_message = "A newer session of this device replaced this one"


class SlowConsumer(SessionError):
    code = "slow_consumer"
    http_status = 503
    close_code = 4008
    safe_message = "The session could not keep up; reconnect and replay"


class BusLost(SessionError):
    code = "bus_lost"
    http_status = 503
    close_code = 4008
    safe_message = "Live delivery was interrupted; reconnect and replay"


class InternalError(RelayError):
    """A bug or an unexpected failure. Its detail never reaches a client in production."""

    code = "internal"
    http_status = 500
    close_code = 1011
    safe_message = INTERNAL_MESSAGE


def _all_subclasses(cls: type[RelayError]) -> list[type[RelayError]]:
    out: list[type[RelayError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def _index_by_code() -> dict[str, type[RelayError]]:
    index: dict[str, type[RelayError]] = {"internal": InternalError}
    for cls in _all_subclasses(RelayError):
        # The first class seen for a code is the canonical one (StoreUnavailable is an Unavailable).
        if "code" in vars(cls):
            index.setdefault(cls.code, cls)
    return index


_BY_CODE: Mapping[str, type[RelayError]] = _index_by_code()


def error_by_code(code: str) -> type[RelayError]:
    """The canonical class for a wire code; :class:`InternalError` for a code relay never sends."""
    return _BY_CODE.get(code, InternalError)


def error_payload(
    exc: BaseException, *, request_id: str | None, production: bool, http: bool = False
) -> dict[str, object]:
    """The members of the error object a client is shown for ``exc``.

    A :class:`RelayError` other than :class:`InternalError` is shown as it is (its message is safe by
    contract). Anything else is an internal error: in production its message is exactly
    ``Internal server error`` and only the request id is added; in development the exception's type
    and text are added as ``detail``. ``http=True`` uses the HTTP code (``invalid_json`` is answered as
    ``bad_request`` over HTTP, PROTOCOL.md §6).
    """
    if isinstance(exc, RelayError) and not isinstance(exc, InternalError):
        payload = exc.to_wire()
        if http and exc.http_code is not None:
            payload["code"] = exc.http_code
            if exc.http_code == BadRequest.code:
                payload.setdefault("path", "$")  # §6: bad_request carries a path; bad JSON is the whole body
    else:
        payload = {"code": InternalError.code, "message": INTERNAL_MESSAGE}
        if not production:
            detail = exc.detail if isinstance(exc, InternalError) and exc.detail else None
            payload["detail"] = detail or f"{type(exc).__name__}: {exc}"
    if request_id is not None:
        payload["request_id"] = request_id
    return payload
