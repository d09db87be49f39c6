"""Incoming frames, checked before they are parsed (PROTOCOL.md §1, §4.6).

At the ASGI level a message arrives whole; its size is checked before parsing (Hypercorn's own
``websocket_max_message_size`` bounds what it buffers). A binary frame closes with ``binary_frame``
(1003), a text frame over ``max_frame_bytes`` UTF-8 bytes with ``frame_too_large`` (1009), and one that
is not an I-JSON object with ``invalid_json`` (1007).
"""

from __future__ import annotations

from relay.errors import BinaryFrame, FrameTooLarge
from relay.gateway.asgi import AsgiWebSocket, Disconnected
from relay.protocol.codec import parse_object
from relay.protocol.messages import JsonValue

__all__ = ["PeerGone", "receive_object"]


class PeerGone(Exception):
    """The client disconnected: the session ends without sending anything."""


async def receive_object(ws: AsgiWebSocket, *, max_frame_bytes: int) -> dict[str, JsonValue]:
    """The next frame as a JSON object; raises :class:`PeerGone` or the error that closes the session."""
    data = await ws.receive()
    if isinstance(data, Disconnected):
        raise PeerGone()
    if isinstance(data, bytes):
        raise BinaryFrame()
    if _too_large(data, max_frame_bytes):
        raise FrameTooLarge()
    return parse_object(data)


def _too_large(text: str, limit: int) -> bool:
    """Whether ``text`` is more than ``limit`` UTF-8 bytes, encoding it only when the length leaves doubt."""
    if len(text) > limit:
        return True
    if 4 * len(text) <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit
