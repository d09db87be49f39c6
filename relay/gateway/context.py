"""What every session of a gateway shares: settings, store, bus, clock, keys, the revocation index,
metrics and tracing, and policy seams."""

from __future__ import annotations

import logging
import traceback
import uuid
from typing import Protocol

import attrs

from relay.bus.base import Bus
from relay.clock import Clock
from relay.config import Settings
from relay.crypto import SigningKey
from relay.errors import InternalError, RelayError
from relay.gateway.instruments import GatewayInstruments
from relay.gateway.revocation_index import RevocationIndex
from relay.ops.metrics import Metrics
from relay.ops.ratelimit import Limiter
from relay.protocol.codec import AnswerContext, encode_error
from relay.protocol.messages import Limits
from relay.store.base import Store

__all__ = ["Admission", "AdmitAll", "GatewayContext"]

log = logging.getLogger("relay.gateway")


class Admission(Protocol):
    """Admission of a publish between validation and the store (§4.2 step 3).

    The seam for rate limits and quotas other than the store's: raise
    :class:`relay.errors.RateLimited` (with ``retry_after_ms``) or :class:`relay.errors.QuotaExceeded`
    to refuse; return to admit. Called once per publish that passed steps 1-2 (retries of stored
    events included), in the order received; never blocks. The gateway's default is
    :class:`relay.gateway.admission.PublishLimits`.
    """

    def check_publish(self, *, user_id: str, device_id: str, body_size: int, now_ms: int) -> None: ...


class AdmitAll:
    """Admits every publish: no rate limit, the store's quotas are the only ones (for tests)."""

    def check_publish(self, *, user_id: str, device_id: str, body_size: int, now_ms: int) -> None:
        return None


@attrs.frozen(kw_only=True)
class GatewayContext:
    """The gateway's dependencies, handed to each session."""

    settings: Settings
    store: Store
    bus: Bus
    clock: Clock
    server_key: SigningKey = attrs.field(repr=False)
    token_secret: bytes = attrs.field(repr=False)
    admission: Admission
    limits: Limits
    #: The node's live sessions by revocation subject (the handshake registers, the watcher matches).
    revocations: RevocationIndex
    #: The app's metrics; sessions count through :attr:`instruments`, bound once from them.
    metrics: Metrics
    #: Handshakes per client address (see :mod:`relay.gateway.admission`).
    handshake_limiter: Limiter
    #: Whether sessions make spans (:mod:`relay.gateway.traces`).
    tracing: bool = False
    instruments: GatewayInstruments = attrs.field(init=False)

    @instruments.default
    def _bind_instruments(self) -> GatewayInstruments:
        return GatewayInstruments(self.metrics)

    def error_frame(self, exc: BaseException, ctx: AnswerContext | None = None) -> str:
        """The ``error`` frame for ``exc``; an unexpected exception is logged under a fresh request id.

        The client sees only ``Internal server error`` and that id in production (§4.6). The log names
        the exception's type and where it was raised; its text, which might quote a frame or a body, is
        logged only in development.
        """
        request_id = None
        if isinstance(exc, InternalError) or not isinstance(exc, RelayError):
            request_id = uuid.uuid4().hex
            if self.settings.production:
                stack = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
                log.error(
                    "internal error in a session (request id %s): %s\n%s",
                    request_id,
                    type(exc).__name__,
                    stack,
                )
            else:
                log.error("internal error in a session (request id %s)", request_id, exc_info=exc)
        return encode_error(exc, ctx, request_id=request_id, production=self.settings.production)
