"""What the HTTP handlers share with the rest of the process: settings, store, bus, clock, keys.

:func:`relay.app.create_app` builds one :class:`Runtime` per app and keeps it in
``app.extensions["relay"]``; handlers reach it with :func:`current_runtime`. The store may be opened
only at start-up (SQLite opens in a thread), and the server's keys live in the store, so
:attr:`Runtime.store`, :attr:`Runtime.server_key` and :attr:`Runtime.token_secret` raise
:class:`InternalError` before the app has started.
"""

from __future__ import annotations

import attrs
from quart import current_app

from relay.bus.base import Bus
from relay.clock import Clock
from relay.config import Settings
from relay.crypto import SigningKey
from relay.errors import InternalError
from relay.http.limits import HttpLimits
from relay.ops.metrics import Metrics
from relay.store.base import ServerSecrets, Store

__all__ = ["EXTENSION", "Runtime", "current_runtime"]

#: The key of the runtime in ``app.extensions``.
EXTENSION = "relay"


@attrs.define(eq=False)
class Runtime:
    """The live parts of one relay app; the app's start-up sets the store (when opened then) and secrets."""

    settings: Settings
    clock: Clock
    bus: Bus
    _store: Store | None = attrs.field(default=None, alias="store")
    metrics: Metrics = attrs.field(factory=Metrics)
    limits: HttpLimits = attrs.field(factory=HttpLimits)
    #: Readiness checks behind ``/readyz`` (set by the app's start-up; ``None`` answers not ready).
    readiness: object = None
    secrets: ServerSecrets | None = attrs.field(default=None, init=False)
    _signing_key: SigningKey | None = attrs.field(default=None, init=False, repr=False)

    @property
    def store(self) -> Store:
        """The store; :class:`InternalError` before the app has opened it."""
        if self._store is None:
            raise InternalError(detail="the app has not started: the store is not open")
        return self._store

    @property
    def has_store(self) -> bool:
        return self._store is not None

    def set_store(self, store: Store, *, guarded: bool = False) -> None:
        """Called by the start-up when the app opens its own store, and again (``guarded``) to put
        it behind its circuit breaker."""
        if self._store is not None and not guarded:
            raise InternalError(detail="the store is set once")
        self._store = store

    def set_secrets(self, secrets: ServerSecrets) -> None:
        """Called once by the start-up, after migrations, before the first request is served."""
        self.secrets = secrets
        self._signing_key = SigningKey(secrets.signing_seed)

    @property
    def server_key(self) -> SigningKey:
        """The server's Ed25519 key; :class:`InternalError` before the app has started."""
        if self._signing_key is None:
            raise InternalError(detail="the app has not started: the server key is not loaded")
        return self._signing_key

    @property
    def token_secret(self) -> bytes:
        """The secret that keys tokens and hashes; :class:`InternalError` before the app has started."""
        if self.secrets is None:
            raise InternalError(detail="the app has not started: the secrets are not loaded")
        return self.secrets.token_secret


def current_runtime() -> Runtime:
    """The :class:`Runtime` of the app handling the current request."""
    runtime = current_app.extensions[EXTENSION]
    assert isinstance(runtime, Runtime)
    return runtime
