"""The raw ASGI WebSocket protocol, for one connection, and the router that hands ``/v1/ws`` to it.

The gateway takes the WebSocket scope of ``/v1/ws`` at the ASGI level (ARCHITECTURE.md "Serving"):
no Quart machinery per message. :class:`AsgiWebSocket` is the whole of what it needs: wait for
``websocket.connect``, accept (selecting the subprotocol ``relay.v1`` when offered), receive whole
text or binary messages, send text, close with a code and a reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

__all__ = [
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

#: The WebSocket endpoint (PROTOCOL.md §4).
WS_PATH = "/v1/ws"
#: The subprotocol selected when a client offers it (§4); none is required.
SUBPROTOCOL = "relay.v1"

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

    async def accept(self) -> None:
        """Accept the upgrade, selecting ``relay.v1`` when the client offered it."""
        offered = self.scope.get("subprotocols") or ()
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
        await self._send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": []})

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

    async def send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})


def route_websocket(handle: AsgiApp, inner: AsgiApp) -> AsgiApp:
    """An ASGI app that gives the WebSocket scope of :data:`WS_PATH` to ``handle``, all else to ``inner``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "websocket" and scope.get("path") == WS_PATH:
            await handle(scope, receive, send)
        else:
            await inner(scope, receive, send)

    return app
