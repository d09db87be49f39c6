"""Ed25519 keys, base64url, and the signed strings of PROTOCOL.md §2, §3 and §4.1.

Pure: pynacl and the standard library only. Verification never raises on hostile input.

Conventions of this module:

- *b64* is the canonical base64url of §1 (:func:`b64encode`, :func:`b64decode`).
- Keys and signatures are accepted either as raw ``bytes`` or as b64 ``str``; a message is
  accepted as raw ``bytes`` or as ``str``, which is signed as its UTF-8 encoding (never decoded
  from b64).
- The signed strings of the protocol are built here and nowhere else, as UTF-8 ``bytes``.
- Secrets (the server's token-signing secret) are raw bytes, at least :data:`SECRET_BYTES` long;
  every use derives its own key from them (:func:`derive_key`), so one use can never be confused
  with another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

import nacl.exceptions
import nacl.signing

__all__ = [
    "DUMMY_PUBLIC_KEY",
    "HTTP_NONCE_BYTES",
    "KEY_BYTES",
    "SECRET_BYTES",
    "SEED_BYTES",
    "SIGNATURE_BYTES",
    "TOKEN_BYTES",
    "WS_NONCE_BYTES",
    "SigningKey",
    "b64decode",
    "b64encode",
    "client_auth_string",
    "derive_key",
    "enroll_string",
    "hash_token",
    "http_request_string",
    "keyed_hash",
    "new_secret",
    "public_key_b64",
    "random_nonce",
    "random_token",
    "server_hello_string",
    "sha256_hex",
    "sign",
    "verify",
]

KEY_BYTES = 32
SEED_BYTES = 32
SIGNATURE_BYTES = 64
WS_NONCE_BYTES = 32
HTTP_NONCE_BYTES = 16
TOKEN_BYTES = 32
#: Length of a freshly made server secret, and the least accepted by :func:`derive_key`.
SECRET_BYTES = 32

ENROLL_LABEL = "relay-enroll-v1"
HTTP_LABEL = "relay-http-v1"
SERVER_HELLO_LABEL = "relay-server-hello-v1"
CLIENT_AUTH_LABEL = "relay-client-auth-v1"
_DERIVE_LABEL = b"relay-derive-v1\n"

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


# --- keys and signatures -----------------------------------------------------------------------------


class SigningKey:
    """An Ed25519 private key, held as its 32-byte seed (the form it is stored in).

    The ``repr`` never shows the seed.
    """

    __slots__ = ("_key", "_public_key")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 seed is exactly {SEED_BYTES} bytes")
        self._key = nacl.signing.SigningKey(seed)
        self._public_key: bytes = self._key.verify_key.encode()

    @classmethod
    def generate(cls) -> SigningKey:
        """A new key from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(SEED_BYTES))

    @classmethod
    def from_seed_b64(cls, text: str) -> SigningKey:
        """Load a key from the b64 of its seed; :class:`ValueError` unless canonical b64 of 32 bytes."""
        seed = b64decode(text, SEED_BYTES)
        if seed is None:
            raise ValueError("not the canonical base64url of a 32-byte seed")
        return cls(seed)

    @property
    def seed(self) -> bytes:
        """The 32 secret bytes to store (with care: they are the key)."""
        seed: bytes = self._key.encode()
        return seed

    @property
    def seed_b64(self) -> str:
        return b64encode(self.seed)

    @property
    def public_key(self) -> bytes:
        """The 32-byte public key."""
        return self._public_key

    @property
    def public_key_b64(self) -> str:
        """The public key as sent on the wire (``server_key``, ``public_key``)."""
        return b64encode(self._public_key)

    def sign_raw(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message`` (deterministic)."""
        signature: bytes = self._key.sign(message).signature
        return signature

    def sign(self, message: bytes) -> str:
        """The b64 Ed25519 signature of ``message``, as sent on the wire."""
        return b64encode(self.sign_raw(message))

    def __repr__(self) -> str:
        return f"SigningKey(public_key={self.public_key_b64!r})"


def public_key_b64(key: SigningKey) -> str:
    """The b64 public key of ``key``."""
    return key.public_key_b64


def sign(key: SigningKey, message: bytes) -> str:
    """The b64 signature of ``message`` (the bytes of a signed string) with ``key``."""
    return key.sign(message)


def _raw(value: object, length: int) -> bytes | None:
    """``value`` as exactly ``length`` raw bytes: bytes of that length, or canonical b64 text of them."""
    if isinstance(value, bytes):
        return bytes(value) if len(value) == length else None
    if isinstance(value, str):
        return b64decode(value, length)
    return None


def _message_bytes(message: object) -> bytes | None:
    """``message`` as the bytes that are signed: bytes as they are, text as UTF-8; else ``None``."""
    if isinstance(message, bytes):
        return bytes(message)
    if isinstance(message, str):
        try:
            return message.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            return None
    return None


def verify(public_key: bytes | str, message: bytes | str, signature: bytes | str) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``.

    ``public_key`` is 32 raw bytes or their canonical b64; ``signature`` is 64 raw bytes or their
    canonical b64; ``message`` is raw bytes, or text that is signed as its UTF-8 encoding. Any other
    type, length or spelling, a key that is not a valid point (libsodium also refuses small-order keys
    and non-canonical encodings), or a malformed signature gives ``False``. Never raises.
    """
    key = _raw(public_key, KEY_BYTES)
    sig = _raw(signature, SIGNATURE_BYTES)
    data = _message_bytes(message)
    if key is None or sig is None or data is None:
        return False
    try:
        nacl.signing.VerifyKey(key).verify(data, sig)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


#: A valid public key that no device holds. Verifying against it costs what a real verification costs,
#: so a handshake for an unknown device does the same work as for a known one (§4.1).
DUMMY_PUBLIC_KEY: bytes = SigningKey(hashlib.sha256(b"relay-dummy-key-v1").digest()).public_key


# --- the signed strings ------------------------------------------------------------------------------


def _signed_string(label: str, *fields: str) -> bytes:
    for field in fields:
        if not isinstance(field, str):
            raise TypeError(f"a signed field must be str, not {type(field).__name__}")
        if "\n" in field:
            raise ValueError("a signed field cannot contain a newline")
    return "\n".join((label, *fields)).encode("utf-8")


def enroll_string(token: str, public_key: str, name: str) -> bytes:
    """``relay-enroll-v1\\n{token}\\n{public_key}\\n{name}`` (§2), each field exactly as sent."""
    return _signed_string(ENROLL_LABEL, token, public_key, name)


def http_request_string(
    server_key: str,
    device_id: str,
    method: str,
    path_and_query: str,
    ts: int,
    nonce: str,
    body: bytes,
) -> bytes:
    """The string a signed HTTP request signs (§3).

    ``relay-http-v1\\n{server_key}\\n{device_id}\\n{METHOD}\\n{path and query}\\n{ts}\\n{nonce}\\n{digest}``:
    the method is upper-cased (it must be ASCII), ``path_and_query`` is exactly as on the request
    line, ``ts`` is written in decimal, and the last field is the lower-case hex SHA-256 of the raw
    body (``b""`` when there is none). Fields are signed exactly as sent (§1), so the server's parser of
    ``Authorization`` must accept only the canonical decimal of ``ts`` (no sign, no leading zero) and
    refuse anything else as ``unauthorized``; then ``str(ts)`` is the text as sent.
    """
    if not isinstance(method, str) or not method.isascii():
        raise ValueError("an HTTP method is ASCII")
    if type(ts) is not int:
        raise TypeError("ts must be an int")
    if not isinstance(body, bytes):
        raise TypeError("body must be bytes")
    return _signed_string(
        HTTP_LABEL, server_key, device_id, method.upper(), path_and_query, str(ts), nonce, sha256_hex(body)
    )


def server_hello_string(session_id: str, client_nonce: str, server_nonce: str) -> bytes:
    """``relay-server-hello-v1\\n{session_id}\\n{client nonce}\\n{server nonce}`` (§4.1), by the server."""
    return _signed_string(SERVER_HELLO_LABEL, session_id, client_nonce, server_nonce)


def client_auth_string(session_id: str, device_id: str, client_nonce: str, server_nonce: str) -> bytes:
    """``relay-client-auth-v1\\n{session_id}\\n{device_id}\\n{client nonce}\\n{server nonce}`` (§4.1)."""
    return _signed_string(CLIENT_AUTH_LABEL, session_id, device_id, client_nonce, server_nonce)


# --- hashes, randomness and keyed hashes -------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def hash_token(token: bytes) -> bytes:
    """The 32-byte SHA-256 under which a token (its 32 raw bytes) is stored; the token itself never is."""
    if not isinstance(token, bytes):
        raise TypeError("hash the raw token bytes")
    return hashlib.sha256(token).digest()


def random_token() -> str:
    """A fresh enrolment or pairing token: the b64 of :data:`TOKEN_BYTES` random bytes."""
    return b64encode(secrets.token_bytes(TOKEN_BYTES))


def random_nonce(n: int = WS_NONCE_BYTES) -> str:
    """The b64 of ``n`` random bytes (32 for WebSocket nonces, 16 for HTTP nonces)."""
    if n < 1:
        raise ValueError("a nonce has at least one byte")
    return b64encode(secrets.token_bytes(n))


def new_secret() -> bytes:
    """A fresh server secret of :data:`SECRET_BYTES` random bytes."""
    return secrets.token_bytes(SECRET_BYTES)


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A 32-byte key for one ``purpose`` (a label such as ``relay-replay-token-v1``), derived from ``secret``.

    HMAC-SHA256(secret, ``relay-derive-v1\\n`` + purpose). Keys for different purposes are independent,
    so a value made for one purpose is never accepted for another.
    """
    if not isinstance(secret, bytes) or len(secret) < SECRET_BYTES:
        raise ValueError(f"a server secret is at least {SECRET_BYTES} bytes")
    if not purpose:
        raise ValueError("a purpose label is required")
    return hmac.digest(secret, _DERIVE_LABEL + purpose.encode("utf-8"), "sha256")


def keyed_hash(secret: bytes, label: str, value: bytes | str) -> bytes:
    """HMAC-SHA256 of ``value`` (text is hashed as UTF-8) under the key derived from ``secret`` for ``label``.

    For values the server must recognise without keeping them (deleted device ids, revocation log
    entries). 32 bytes.
    """
    data = value.encode("utf-8") if isinstance(value, str) else value
    if not isinstance(data, bytes):
        raise TypeError("value must be bytes or str")
    return hmac.digest(derive_key(secret, label), data, "sha256")
