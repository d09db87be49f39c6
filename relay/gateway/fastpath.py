"""A cheaper send path through Hypercorn, version-checked and switchable off (``RELAY_FAST_SEND=off``).

Under fan-out the cost of relaying is Hypercorn's per-frame send path, not JSON (measured: ~70 % of the
CPU in the per-recipient send). Per frame, stock Hypercorn 0.18 encodes the message with wsproto for
each recipient, then ``TCPServer.protocol_send`` takes a lock, opens a shielded cancel scope, and
``send_all`` yields to the scheduler again: two scheduler round trips per delivery. Two changes:

1. **Synchronous send when the socket is free** (:class:`relay.serving.FastTCPServer`): when no
   other task of the connection is sending (its send lock is free) and the connection is plain TCP,
   the bytes are written with one non-blocking ``os.write``, without yielding. Whatever the kernel did
   not take (a full socket buffer, ``EAGAIN``), and every error, goes the stock locked path, so
   back-pressure is unchanged: a client that stops reading still blocks its writer, and its session
   is closed ``slow_consumer``.
2. **A frame encoded once for all its recipients** (:func:`send_text`): an event's frame text is the
   same object for every session of the user (the bus encodes it once); its WebSocket framing (RFC 6455:
   ``FIN|text``, the length, the UTF-8 payload, unmasked from a server) is computed once too and handed
   to each connection's transport as Hypercorn's own ``Data`` event, skipping wsproto's encoding. Only
   when it is safe: the connection is open, accepted by Hypercorn's WebSocket stream, and has no
   extension (permessage-deflate frames depend on the connection's compressor); otherwise the stock
   ``websocket.send`` is used.

Both check the Hypercorn version they were written against (:data:`CHECKED_HYPERCORN`) and the shapes
they rely on; anything else leaves the stock path in place and logs why, once.
"""

from __future__ import annotations

import logging
import struct
from importlib import metadata
from typing import Any

__all__ = ["CHECKED_HYPERCORN", "CHECKED_WSPROTO", "encode_text_frame", "fast_frames_available", "send_text"]

log = logging.getLogger("relay.gateway")

#: The Hypercorn and wsproto versions this module was checked against (their sources: 0.18.0, 1.3.2).
CHECKED_HYPERCORN = ("0.18.",)
CHECKED_WSPROTO = ("1.2.", "1.3.")
#: Frames whose encoding is remembered (the last few distinct frame texts sent by any session).
ENCODED_CACHE_FRAMES = 256

_WS_TEXT_FIN = 0x81


def _versions_checked() -> bool:
    return metadata.version("hypercorn").startswith(CHECKED_HYPERCORN) and metadata.version(
        "wsproto"
    ).startswith(CHECKED_WSPROTO)


try:  # the shapes relied on; a Hypercorn that moves them gets the stock path
    from hypercorn.protocol.events import Data
    from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
    from wsproto.connection import ConnectionState

    _SHAPES = True
except ImportError:  # pragma: no cover - depends on the installed Hypercorn
    _SHAPES = False


_AVAILABLE: bool | None = None


def fast_frames_available() -> bool:
    """True when this process's Hypercorn and wsproto are versions the fast path was checked against."""
    global _AVAILABLE
    if _AVAILABLE is None:
        _AVAILABLE = _SHAPES and _versions_checked()
        if not _AVAILABLE:
            log.warning(
                "frames are encoded by wsproto per recipient: Hypercorn/wsproto not of a checked version"
            )
    return _AVAILABLE


# --- 2. frames encoded once ------------------------------------------------------------------------------


def encode_text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame carrying ``payload`` (RFC 6455 §5.2)."""
    length = len(payload)
    if length < 126:
        header = bytes((_WS_TEXT_FIN, length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", _WS_TEXT_FIN, 126, length)
    else:
        header = struct.pack("!BBQ", _WS_TEXT_FIN, 127, length)
    return header + payload


#: id(text) → (text, its frame): holding the text keeps its id from being reused while cached.
_encoded: dict[int, tuple[str, bytes]] = {}


def _frame_of(text: str) -> bytes:
    cached = _encoded.get(id(text))
    if cached is not None and cached[0] is text:
        return cached[1]
    frame = encode_text_frame(text.encode("utf-8"))
    if len(_encoded) >= ENCODED_CACHE_FRAMES:
        _encoded.pop(next(iter(_encoded)))
    _encoded[id(text)] = (text, frame)
    return frame


def _raw_stream(send: Any) -> Any:
    """Hypercorn's WebSocket stream behind an ASGI ``send``, when it may take a pre-encoded frame."""
    stream = getattr(send, "__self__", None)
    if not _SHAPES or not isinstance(stream, WSStream):
        return None
    if stream.state is not ASGIWebsocketState.CONNECTED:
        return None
    connection = getattr(stream, "connection", None)
    if connection is None or connection.state is not ConnectionState.OPEN:
        return None
    # Hypercorn offers permessage-deflate to every connection; a frame may skip wsproto only when it
    # was not negotiated (the extension would then compress, with state of this connection's own).
    if any(extension.enabled() for extension in connection._proto.extensions):
        return None
    return stream


async def send_text(send: Any, text: str, *, enabled: bool) -> None:
    """Send ``text`` as one WebSocket text frame through the ASGI ``send`` (see the module docstring)."""
    stream = _raw_stream(send) if enabled and fast_frames_available() else None
    if stream is None:
        await send({"type": "websocket.send", "text": text})
        return
    await stream.send(Data(stream_id=stream.stream_id, data=_frame_of(text)))
