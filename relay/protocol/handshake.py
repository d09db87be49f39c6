"""The WebSocket handshake of PROTOCOL.md §4.1: the server's sans-I/O state machine.

No I/O, no clock reads, no hidden randomness: the caller passes the time (``now_ms``) and may inject
the source of random bytes. The server machine is driven by the gateway like this::

    hs = ServerHandshake(server_key)
    challenge = hs.receive_hello(first_message, now_ms=clock.now_ms())   # send it
    device_id = hs.receive_auth(second_message)                          # look the device up (I/O)
    auth = hs.complete(lookup)                                           # Authenticated, or raises
    ... join live delivery and presence, read streams and online ...
    welcome = hs.welcome(server_time=..., heartbeat_ms=..., limits=..., streams=..., ...)

Every refusal is a :class:`relay.errors.RelayError`; during the handshake the session closes with
``exc.close_code_for(in_handshake=True)`` after an ``error`` frame. After any refusal the machine is
:attr:`HandshakeState.FAILED` and refuses every further message with :class:`ProtocolError`.

Calling :meth:`ServerHandshake.complete` or :meth:`ServerHandshake.welcome` in the wrong state is a bug
of the caller, not of the peer: it raises :class:`HandshakeUsageError` (a ``RuntimeError``).

The client side, for the reference client and the tests, is
:class:`relay.protocol.client_handshake.ClientHandshake`; it shares :data:`PROTOCOL_VERSION`,
:data:`RandomBytes`, :class:`HandshakeUsageError` and :func:`new_nonce` with this module.
"""

from __future__ import annotations

import enum
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import NoReturn, TypeAlias

import attrs

from relay import crypto
from relay.errors import (
    AccountDeleted,
    BadRequest,
    DeviceRevoked,
    ProtocolError,
    RelayError,
    Unauthorized,
    UnsupportedVersion,
)
from relay.protocol import messages
from relay.protocol.syntax import is_protocol_int, is_uuid

__all__ = [
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Authenticated",
    "DeletedAccount",
    "DeviceLookup",
    "DeviceRecord",
    "HandshakeState",
    "HandshakeUsageError",
    "RandomBytes",
    "ServerHandshake",
    "UnknownDevice",
]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (PROTOCOL_VERSION,)
_SESSION_ID_BYTES = 16

#: A source of random bytes: ``random_bytes(n)`` returns ``n`` bytes. Defaults to :func:`secrets.token_bytes`.
RandomBytes: TypeAlias = Callable[[int], bytes]


class HandshakeUsageError(RuntimeError):
    """A handshake machine was driven out of order by its caller (a bug in relay, not in the peer)."""


def _new_session_id(random_bytes: RandomBytes) -> str:
    raw = random_bytes(_SESSION_ID_BYTES)
    if len(raw) != _SESSION_ID_BYTES:
        raise HandshakeUsageError("the random source returned the wrong number of bytes")
    return str(uuid.UUID(bytes=raw, version=4))


def new_nonce(random_bytes: RandomBytes) -> str:
    """A fresh nonce for ``hello`` or ``challenge`` (§4.1): the b64 of 32 random bytes."""
    raw = random_bytes(crypto.WS_NONCE_BYTES)
    if len(raw) != crypto.WS_NONCE_BYTES:
        raise HandshakeUsageError("the random source returned the wrong number of bytes")
    return crypto.b64encode(raw)


# --- what the store knows about a device -------------------------------------------------------------


@attrs.frozen
class UnknownDevice:
    """No device has this id (never enrolled, or its account was deleted too long ago)."""


@attrs.frozen
class DeletedAccount:
    """The id is that of a device of a deleted account (remembered as a keyed hash, §5)."""


@attrs.frozen(kw_only=True)
class DeviceRecord:
    """The device exists. ``public_key`` is its Ed25519 key, as 32 raw bytes or as b64 text."""

    user_id: str
    public_key: bytes | str = attrs.field(repr=False)
    name: str
    revoked: bool


DeviceLookup: TypeAlias = UnknownDevice | DeletedAccount | DeviceRecord


@attrs.frozen(kw_only=True)
class Authenticated:
    """The outcome of a successful handshake: who is on the other end of this session."""

    user_id: str
    device_id: str
    name: str
    session_id: str


# --- the server side ---------------------------------------------------------------------------------


class HandshakeState(enum.Enum):
    AWAIT_HELLO = "await_hello"
    AWAIT_AUTH = "await_auth"
    #: ``auth`` was received; the caller must look up the device and call :meth:`ServerHandshake.complete`.
    AWAIT_DEVICE = "await_device"
    AUTHENTICATED = "authenticated"
    FAILED = "failed"


@attrs.frozen(kw_only=True)
class _Challenged:
    """What the server fixed when it answered ``hello``: everything ``auth`` must sign."""

    session_id: str
    device_id: str
    client_nonce: str
    server_nonce: str


class ServerHandshake:
    """The server side of one handshake (§4.1). Single use: one instance per connection."""

    def __init__(
        self, server_key: crypto.SigningKey, *, random_bytes: RandomBytes = secrets.token_bytes
    ) -> None:
        self._server_key = server_key
        self._random_bytes = random_bytes
        self._state = HandshakeState.AWAIT_HELLO
        self._challenged: _Challenged | None = None
        self._sig: bytes | None = None
        self._authenticated: Authenticated | None = None

    @property
    def state(self) -> HandshakeState:
        return self._state

    @property
    def session_id(self) -> str | None:
        """The session id, once the challenge has been made."""
        return self._challenged.session_id if self._challenged is not None else None

    @property
    def device_id(self) -> str | None:
        """The device id the client claims, once its ``hello`` has been accepted (not yet authenticated)."""
        return self._challenged.device_id if self._challenged is not None else None

    @property
    def authenticated(self) -> Authenticated | None:
        """Who authenticated, once the state is :attr:`HandshakeState.AUTHENTICATED`."""
        return self._authenticated

    def _fail(self, exc: RelayError) -> NoReturn:
        self._state = HandshakeState.FAILED
        self._sig = None
        raise exc

    def _out_of_order(self, msg: object) -> NoReturn:
        kind = getattr(msg, "TYPE", type(msg).__name__)
        self._fail(ProtocolError(detail=f"{kind!s} in state {self._state.value}"))

    def receive_hello(self, msg: messages.ClientMessage, *, now_ms: int) -> messages.Challenge:
        """Accept the client's ``hello`` and return the ``challenge`` to send.

        Raises :class:`ProtocolError` if ``msg`` is not a ``hello`` or a hello was already received,
        :class:`BadRequest` (path ``$.v``) for a ``v`` that is not an integer in 0..2^53-1,
        :class:`UnsupportedVersion` (with ``supported``) for any other integer than 1, and
        :class:`BadRequest` (with ``path``) for a ``device_id`` that is not a lowercase UUID or a
        ``nonce`` that is not the canonical b64 of 32 bytes. The device is not looked up: the
        challenge costs the same for every device id.
        """
        if self._state is not HandshakeState.AWAIT_HELLO or not isinstance(msg, messages.Hello):
            self._out_of_order(msg)
        if not is_protocol_int(msg.v):
            self._fail(BadRequest("v must be an integer", path="$.v"))
        if msg.v not in SUPPORTED_VERSIONS:
            self._fail(UnsupportedVersion(supported=list(SUPPORTED_VERSIONS)))
        if not is_uuid(msg.device_id):
            self._fail(BadRequest("device_id must be a lowercase UUID", path="$.device_id"))
        if crypto.b64decode(msg.nonce, crypto.WS_NONCE_BYTES) is None:
            self._fail(BadRequest("nonce must be the base64url of 32 bytes", path="$.nonce"))

        session_id = _new_session_id(self._random_bytes)
        server_nonce = new_nonce(self._random_bytes)
        self._challenged = _Challenged(
            session_id=session_id, device_id=msg.device_id, client_nonce=msg.nonce, server_nonce=server_nonce
        )
        self._state = HandshakeState.AWAIT_AUTH
        to_sign = crypto.server_hello_string(session_id, msg.nonce, server_nonce)
        return messages.Challenge(
            session_id=session_id,
            nonce=server_nonce,
            server_time=now_ms,
            server_key=self._server_key.public_key_b64,
            server_sig=self._server_key.sign(to_sign),
        )

    def receive_auth(self, msg: messages.ClientMessage) -> str:
        """Accept the client's ``auth`` and return the device id the caller must now look up.

        Raises :class:`ProtocolError` if ``msg`` is not an ``auth`` or comes in another state, and
        :class:`BadRequest` (path ``$.sig``) for a ``sig`` that is not the canonical b64 of 64 bytes.
        The signature itself is checked by :meth:`complete`.
        """
        if self._state is not HandshakeState.AWAIT_AUTH or not isinstance(msg, messages.Auth):
            self._out_of_order(msg)
        sig = crypto.b64decode(msg.sig, crypto.SIGNATURE_BYTES)
        if sig is None:
            self._fail(BadRequest("sig must be the base64url of 64 bytes", path="$.sig"))
        assert self._challenged is not None
        self._sig = sig
        self._state = HandshakeState.AWAIT_DEVICE
        return self._challenged.device_id

    def complete(self, lookup: DeviceLookup) -> Authenticated:
        """Decide the handshake from what the store knows about the device (§4.1).

        Exactly one signature verification is done whatever ``lookup`` is (against a fixed dummy key
        when there is no key to check), so the outcome costs the same. Raises :class:`Unauthorized`
        for an unknown device or a bad signature (a revoked device included), :class:`AccountDeleted`
        for a device of a deleted account whatever the signature, and :class:`DeviceRevoked` for a
        revoked device whose signature verifies.
        """
        ch, sig = self._challenged, self._sig
        if self._state is not HandshakeState.AWAIT_DEVICE or ch is None or sig is None:
            raise HandshakeUsageError(f"complete() in state {self._state.value}")
        signed = crypto.client_auth_string(ch.session_id, ch.device_id, ch.client_nonce, ch.server_nonce)
        key: bytes | str = lookup.public_key if isinstance(lookup, DeviceRecord) else crypto.DUMMY_PUBLIC_KEY
        valid = crypto.verify(key, signed, sig)
        if isinstance(lookup, DeletedAccount):
            self._fail(AccountDeleted())
        if not isinstance(lookup, DeviceRecord) or not valid:
            self._fail(Unauthorized())
        if lookup.revoked:
            self._fail(DeviceRevoked())
        self._sig = None
        self._authenticated = Authenticated(
            user_id=lookup.user_id, device_id=ch.device_id, name=lookup.name, session_id=ch.session_id
        )
        self._state = HandshakeState.AUTHENTICATED
        return self._authenticated

    def welcome(
        self,
        *,
        server_time: int,
        heartbeat_ms: int,
        limits: messages.Limits,
        streams: Mapping[str, int],
        streams_truncated: bool,
        online: Iterable[str],
    ) -> messages.Welcome:
        """The ``welcome`` to send, from the authenticated state and what the gateway read.

        ``online`` may include this device itself (the session joins presence before reading it):
        it is left out, as are repeats, keeping the order given.
        """
        auth = self._authenticated
        if self._state is not HandshakeState.AUTHENTICATED or auth is None:
            raise HandshakeUsageError(f"welcome() in state {self._state.value}")
        others = list(dict.fromkeys(d for d in online if d != auth.device_id))
        return messages.Welcome(
            session_id=auth.session_id,
            user_id=auth.user_id,
            device_id=auth.device_id,
            name=auth.name,
            server_time=server_time,
            heartbeat_ms=heartbeat_ms,
            limits=limits,
            streams=dict(streams),
            streams_truncated=streams_truncated,
            online=others,
        )
