"""The raw ASGI WebSocket protocol, for one connection, and the router that hands ``/v1/ws`` to it.

The gateway takes the WebSocket scope of ``/v1/ws`` at the ASGI level (ARCHITECTURE.md "Serving"):
no Quart machinery per message. :class:`AsgiWebSocket` is the whole of what it needs: wait for
``websocket.connect``, accept (selecting the subprotocol ``relay.v1`` when offered), receive whole
text or binary messages, send text, close with a code and a reason. Every other scope goes to Quart
through the same router, which shields the end of each HTTP answer (see :func:`_finish_shielded`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

import orjson
import trio

from relay.errors import BadRequest, error_payload
from relay.protocol.syntax import is_request_id

__all__ = [
    "FINISH_TIMEOUT_S",
    "SUBPROTOCOL",
    "WS_PATH",
    "AsgiApp",
    "AsgiWebSocket",
    "Disconnected",
    "Receive",
    "Scope",
    "Send",
    "route_websocket",
]

log = logging.getLogger(__name__)

#: The WebSocket endpoint (PROTOCOL.md §4).
WS_PATH = "/v1/ws"
#: The subprotocol selected when a client offers it (§4); none is required.
SUBPROTOCOL = "relay.v1"
#: Bytes a ``Sec-WebSocket-Key`` decodes to (RFC 6455 §4.1).
KEY_BYTES = 16

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
AsgiApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]


class Disconnected:
    """The peer went away (``websocket.disconnect``); nothing more can be sent or received."""

    def __init__(self, code: int | None) -> None:
        self.code = code


class AsgiWebSocket:
    """One ASGI WebSocket connection. Only the session's writer task calls the sending methods."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send

    @property
    def query_string(self) -> bytes:
        value = self.scope.get("query_string", b"")
        return value if isinstance(value, bytes) else b""

    async def wait_connect(self) -> bool:
        """Wait for ``websocket.connect``; False when the peer left before (then do nothing more)."""
        message = await self._receive()
        return message.get("type") == "websocket.connect"

    def request_id(self) -> str:
        """The upgrade's ``X-Request-ID``: the client's own when valid (§6), else a new one."""
        for name, value in self.scope.get("headers") or ():
            if bytes(name).lower() == b"x-request-id":
                text = bytes(value).decode("latin-1")
                if is_request_id(text):
                    return text
        return uuid.uuid4().hex

    def has_valid_key(self) -> bool:
        """Whether the upgrade's ``Sec-WebSocket-Key`` is what RFC 6455 §4.1 requires: one, the base64
        of 16 bytes (a scope without one is the server's own doing: in-process test clients send none).
        Hypercorn only checks that one is present, and accepting an upgrade with an empty key makes its
        h11 layer fail (an error logged with a traceback, and a connection left open until the
        handshake's deadline)."""
        headers = self.scope.get("headers") or ()
        keys = [bytes(v) for n, v in headers if bytes(n).lower() == b"sec-websocket-key"]
        if not keys:
            return True
        if len(keys) > 1:
            return False
        try:
            return len(base64.b64decode(keys[0].strip(), validate=True)) == KEY_BYTES
        except (binascii.Error, ValueError):
            return False

    async def refuse_upgrade(self) -> None:
        """Answer the upgrade ``400`` instead of accepting it (RFC 6455 §4.2.2); the connection closes."""
        if "websocket.http.response" in (self.scope.get("extensions") or {}):
            request_id = self.request_id()
            refusal = BadRequest("Bad WebSocket upgrade")
            body = orjson.dumps(
                {"error": error_payload(refusal, request_id=request_id, production=True, http=True)}
            )
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"x-request-id", request_id.encode("ascii")),
            ]
            await self._send({"type": "websocket.http.response.start", "status": 400, "headers": headers})
            await self._send({"type": "websocket.http.response.body", "body": body})
        else:  # a server without the extension answers 403
            await self._send({"type": "websocket.close", "code": 1002})

    async def accept(self) -> bool:
        """Accept the upgrade, selecting ``relay.v1`` when the client offered it; the ``101`` carries
        ``X-Request-ID`` like every answer of the server (§6).

        False when the server could not send the ``101``: the connection broke the HTTP protocol
        meanwhile (an upgrade followed by stray bytes in the same packet, which Hypercorn answers
        ``400`` while the app is starting; its h11 layer then refuses the ``101``). There is nothing
        left to do with such a connection, and nothing worth a traceback in the log."""
        offered = self.scope.get("subprotocols") or ()
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
        headers = [(b"x-request-id", self.request_id().encode("ascii"))]
        try:
            await self._send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": headers})
        except Exception as exc:  # the server's HTTP layer refused: the peer broke the protocol
            log.debug("the upgrade could not be accepted: %s: %s", type(exc).__name__, exc)
            return False
        return True

    async def receive(self) -> str | bytes | Disconnected:
        """The next whole message: text, bytes (a binary frame), or :class:`Disconnected`."""
        while True:
            message = await self._receive()
            kind = message.get("type")
            if kind == "websocket.receive":
                data = message.get("bytes")
                if data is not None:
                    return bytes(data)
                text = message.get("text")
                return text if isinstance(text, str) else b""
            if kind == "websocket.disconnect":
                code = message.get("code")
                return Disconnected(code if isinstance(code, int) else None)
            # Anything else (a repeated connect) carries nothing for us.

    @property
    def asgi_send(self) -> Send:
        """The server's ASGI ``send`` (for :mod:`relay.gateway.fastpath`, which may go around it)."""
        return self._send

    async def send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})


def route_websocket(handle: AsgiApp, inner: AsgiApp) -> AsgiApp:
    """An ASGI app that gives the WebSocket scope of :data:`WS_PATH` to ``handle``, all else to ``inner``.

    HTTP answers of ``inner`` end with their last ``http.response.body`` sent shielded from cancellation
    (:func:`_finish_shielded`).
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "websocket" and scope.get("path") == WS_PATH:
            await handle(scope, receive, send)
        elif scope.get("type") == "http":
            await inner(scope, receive, _finish_shielded(send))
        else:
            await inner(scope, receive, send)

    return app


#: How long the last message of an HTTP answer may take to hand over, shielded (seconds).
FINISH_TIMEOUT_S = 5.0


def _finish_shielded(send: Send) -> Send:
    """``send``, with the last body message of the answer shielded from cancellation.

    Why: Hypercorn (0.18) finishes the HTTP exchange inside that ``send``: it ends the stream, tells the
    app ``http.disconnect``, then closes the connection (``Connection: close``, HTTP/1.0) or restarts its
    keep-alive timer. Quart-Trio cancels the request's task as soon as it reads that disconnect, which
    happens at the first checkpoint inside the same ``send``, so the close and the timer were never
    reached: every HTTP connection stayed open until the client closed it, whatever it asked for and
    however long it stayed silent. Shielded (and bounded), the exchange is finished as Hypercorn means.
    """

    async def finishing(message: Message) -> None:
        if message.get("type") == "http.response.body" and not message.get("more_body", False):
            with trio.CancelScope(shield=True, deadline=trio.current_time() + FINISH_TIMEOUT_S):
                await send(message)
        else:
            await send(message)

    return finishing
