"""What the reference client raises.

- A refusal the server answered (an ``error`` frame, an HTTP error body) is raised as the matching
  :class:`relay.errors.RelayError` subclass, with its code-specific fields (``head``,
  ``retry_after_ms``, ...) in ``fields``: ``except SeqConflict as exc: exc.fields["head"]``. Over HTTP
  the status and the ``request_id`` are in ``detail``.
- :class:`ConnectionLost`: the WebSocket ended, with the close code, the reason and the ``error`` the
  server named before closing (PROTOCOL.md §4.6). :attr:`ConnectionLost.retryable` says whether a client
  should reconnect: after every close except 1002, 1003, 1007, 1008, 1009 and 4001.
"""

from __future__ import annotations

from collections.abc import Mapping

from relay.errors import FIELD_NAMES, RelayError, error_by_code
from relay.protocol import messages

__all__ = ["NO_RECONNECT_CODES", "ClientError", "ConnectionLost", "error_from_message", "error_from_wire"]

#: Close codes after which a client must not reconnect by itself (§4.6).
NO_RECONNECT_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 4001})


class ClientError(Exception):
    """A failure of the client itself (a bad server answer, bad arguments): one line for people."""


class ConnectionLost(Exception):
    """The session ended. ``code``/``reason``: the close (``None`` when the connection just broke);
    ``error``: what the server's last ``error`` frame said, when it sent one."""

    def __init__(self, code: int | None, reason: str | None, error: RelayError | None = None) -> None:
        what = f"closed {code} {reason or ''}".rstrip() if code is not None else "connection lost"
        if error is not None:
            what += f": {error.code}: {error.message}"
        super().__init__(what)
        self.code = code
        self.reason = reason
        self.error = error

    @property
    def retryable(self) -> bool:
        """True when reconnecting (with back-off) is the right thing to do."""
        return self.code not in NO_RECONNECT_CODES


def error_from_wire(
    code: str, message: str, fields: Mapping[str, object], *, detail: str | None = None
) -> RelayError:
    """The :class:`RelayError` subclass for ``code``, carrying the fields relay knows."""
    exc = error_by_code(code)(message, detail=detail)
    exc.fields.update({k: v for k, v in fields.items() if k in FIELD_NAMES and v is not None})
    return exc


def error_from_message(msg: messages.Error) -> RelayError:
    """The error an ``error`` frame names."""
    return error_from_wire(msg.code, msg.message, msg.fields)
