"""The client side of the WebSocket handshake of PROTOCOL.md §4.1, as a sans-I/O state machine.

For the reference client and the tests. The server side, and what both sides share (the protocol
version, :data:`~relay.protocol.handshake.RandomBytes`,
:class:`~relay.protocol.handshake.HandshakeUsageError`), is :mod:`relay.protocol.handshake`. No I/O and
no hidden randomness: the source of random bytes may be injected. Driven like this::

    hs = ClientHandshake(device_key, device_id, pinned_server_key)
    hello = hs.hello()                                # send it
    auth = hs.receive_challenge(first_reply)          # send it
    welcome = hs.receive_welcome(second_reply)        # the session is open

Every refusal is a :class:`relay.errors.RelayError` and leaves the machine :attr:`ClientState.FAILED`.
Calling :meth:`ClientHandshake.hello` in the wrong state is a bug of the caller: it raises
:class:`~relay.protocol.handshake.HandshakeUsageError`.
"""

from __future__ import annotations

import enum
import secrets
from typing import NoReturn

from relay import crypto
from relay.errors import FIELD_NAMES, ProtocolError, RelayError, Unauthorized, error_by_code
from relay.protocol import messages
from relay.protocol.handshake import PROTOCOL_VERSION, HandshakeUsageError, RandomBytes, new_nonce
from relay.protocol.syntax import is_uuid

__all__ = ["ClientHandshake", "ClientState"]


class ClientState(enum.Enum):
    READY = "ready"
    AWAIT_CHALLENGE = "await_challenge"
    AWAIT_WELCOME = "await_welcome"
    DONE = "done"
    FAILED = "failed"


def _server_error(msg: messages.Error) -> RelayError:
    """The error the server sent, as the matching class with its code-specific fields."""
    exc = error_by_code(msg.code)(msg.message)
    exc.fields.update({k: v for k, v in msg.fields.items() if k in FIELD_NAMES and v is not None})
    return exc


class ClientHandshake:
    """The client side of one handshake (§4.1), for a device that pinned the server's key.

    ``server_key`` is the pinned key, as b64 (from the pairing URI or ``GET /v1/server``). An ``error``
    from the server is raised as the matching :class:`RelayError`; any other unexpected message is a
    :class:`ProtocolError`. A challenge that does not verify against the pinned key raises
    :class:`Unauthorized`: the client then closes with 1008 without sending ``auth``.
    """

    def __init__(
        self,
        device_key: crypto.SigningKey,
        device_id: str,
        server_key: str,
        *,
        random_bytes: RandomBytes = secrets.token_bytes,
    ) -> None:
        if not is_uuid(device_id):
            raise ValueError("device_id must be a lowercase UUID")
        pinned = crypto.b64decode(server_key, crypto.KEY_BYTES)
        if pinned is None:
            raise ValueError("server_key must be the base64url of a 32-byte key")
        self._device_key = device_key
        self._device_id = device_id
        self._server_key = pinned
        self._random_bytes = random_bytes
        self._state = ClientState.READY
        self._nonce: str | None = None
        self._session_id: str | None = None
        self._welcome: messages.Welcome | None = None

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def session_id(self) -> str | None:
        return self._session_id

    @property
    def welcomed(self) -> messages.Welcome | None:
        return self._welcome

    def _fail(self, exc: RelayError) -> NoReturn:
        self._state = ClientState.FAILED
        raise exc

    def _unexpected(self, msg: object) -> NoReturn:
        if isinstance(msg, messages.Error):
            self._fail(_server_error(msg))
        kind = getattr(msg, "TYPE", type(msg).__name__)
        self._fail(ProtocolError(detail=f"{kind!s} in state {self._state.value}"))

    def hello(self) -> messages.Hello:
        """The ``hello`` to send first, with a fresh nonce."""
        if self._state is not ClientState.READY:
            raise HandshakeUsageError(f"hello() in state {self._state.value}")
        self._nonce = new_nonce(self._random_bytes)
        self._state = ClientState.AWAIT_CHALLENGE
        return messages.Hello(v=PROTOCOL_VERSION, device_id=self._device_id, nonce=self._nonce)

    def receive_challenge(self, msg: messages.ServerMessage) -> messages.Auth:
        """Check the server's ``challenge`` against the pinned key and return the ``auth`` to send."""
        if self._state is not ClientState.AWAIT_CHALLENGE or not isinstance(msg, messages.Challenge):
            self._unexpected(msg)
        assert self._nonce is not None
        if (
            not is_uuid(msg.session_id)
            or crypto.b64decode(msg.nonce, crypto.WS_NONCE_BYTES) is None
            or crypto.b64decode(msg.server_key, crypto.KEY_BYTES) != self._server_key
            or not crypto.verify(
                self._server_key,
                crypto.server_hello_string(msg.session_id, self._nonce, msg.nonce),
                msg.server_sig,
            )
        ):
            self._fail(Unauthorized("The server's challenge does not verify against the pinned key"))
        self._session_id = msg.session_id
        self._state = ClientState.AWAIT_WELCOME
        signed = crypto.client_auth_string(msg.session_id, self._device_id, self._nonce, msg.nonce)
        return messages.Auth(sig=self._device_key.sign(signed))

    def receive_welcome(self, msg: messages.ServerMessage) -> messages.Welcome:
        """Accept the server's ``welcome``; it must name this session and this device."""
        if self._state is not ClientState.AWAIT_WELCOME or not isinstance(msg, messages.Welcome):
            self._unexpected(msg)
        if msg.session_id != self._session_id or msg.device_id != self._device_id:
            self._fail(ProtocolError("The welcome is for another session or device"))
        self._welcome = msg
        self._state = ClientState.DONE
        return msg
