"""Structured logs: one JSON object per line, with the request, session and device they concern.

The ids travel in context variables (:data:`request_id`, :data:`session_id`, :data:`device_id`), set
by the HTTP edge for a request and by the gateway for a session; trio copies the context into every
task a task starts, so everything a request or session does logs its ids. :class:`JsonFormatter` adds
them to each record that has them.

What is never logged (PROTOCOL.md, "Security is the product"): keys, tokens, signatures, nonces and
event bodies. Code that logs does not pass them; as a second line of defence the formatter replaces
anything that looks like a base64url secret of 32 bytes or more (43+ characters of that alphabet,
which is how keys, tokens and signatures are written) by ``[redacted]``, in the message and in
exception text. Exception text is left out entirely in production, where only the exception's type
and the stack (file, line, function) are written.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import traceback
from typing import TextIO

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "device_id",
    "redact",
    "request_id",
    "session_id",
]

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("relay_request_id", default=None)
session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("relay_session_id", default=None)
device_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("relay_device_id", default=None)

_CONTEXT = (("request_id", request_id), ("session_id", session_id), ("device_id", device_id))

#: base64url runs of 43 characters or more: the spelling of 32-byte keys and tokens and of signatures.
_SECRET = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43,}(?![A-Za-z0-9_-])")


def redact(text: str) -> str:
    """``text`` with every long base64url run (a key, a token, a signature) replaced."""
    return _SECRET.sub("[redacted]", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, the context ids, and
    ``exc_type`` / ``stack`` (with ``exc`` too outside production) for exceptions."""

    def __init__(self, *, production: bool = True) -> None:
        super().__init__()
        self.production = production

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        out: dict[str, object] = {
            "ts": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name, var in _CONTEXT:
            value = getattr(record, name, None) or var.get()
            if value:
                out[name] = value
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["exc_type"] = type(exc).__name__
            out["stack"] = [
                f"{frame.filename}:{frame.lineno} in {frame.name}"
                for frame in traceback.extract_tb(exc.__traceback__)
            ]
            if not self.production:
                out["exc"] = redact("".join(traceback.format_exception(exc)).rstrip())
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The same records for people at a terminal: one line each, ids appended, secrets redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        ids = [
            f"{name}={value}" for name, var in _CONTEXT if (value := getattr(record, name, None) or var.get())
        ]
        return f"{text} [{' '.join(ids)}]" if ids else text


def configure_logging(stream: TextIO, level: int, *, json_lines: bool, production: bool = True) -> None:
    """Send the root logger's records at ``level`` and above to ``stream``, replacing what an earlier
    call installed (never handlers others added)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "relay_owned", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.relay_owned = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter(production=production) if json_lines else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
