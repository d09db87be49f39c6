"""Ed25519 keys, base64url, and the signed strings of PROTOCOL.md §2, §3 and §4.1.

Pure: pynacl and the standard library only. Verification never raises on hostile input.
"""

from __future__ import annotations

import base64
import binascii
import re

KEY_BYTES = 32
SIGNATURE_BYTES = 64
WS_NONCE_BYTES = 32
HTTP_NONCE_BYTES = 16
TOKEN_BYTES = 32

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64encode(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: object, length: int | None = None) -> bytes | None:
    """Decode canonical base64url without padding, or return ``None``.

    Canonical means: URL-safe alphabet only, no ``=``, no other characters, a length that is not
    1 mod 4, zero trailing bits (the encoding of the decoded bytes is exactly ``text``), and, when
    ``length`` is given, exactly that many decoded bytes. Never raises.
    """
    if not isinstance(text, str) or not text.isascii() or _B64URL.fullmatch(text) is None:
        return None
    if len(text) % 4 == 1:
        return None
    if length is not None and len(text) != (4 * length + 2) // 3:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if b64encode(data) != text:  # non-zero trailing bits
        return None
    if length is not None and len(data) != length:
        return None
    return data
