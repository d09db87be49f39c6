"""Signed HTTP requests (PROTOCOL.md §3): who is asking, proven by the device's key, once.

A signed route is a Quart view wrapped in :func:`signed`::

    @blueprint.get("/v1/devices")
    @signed
    async def list_devices(signed_request: SignedRequest) -> Response: ...

Routing has happened before the wrapper runs (an unknown route is 404, a wrong method 405, before any
of this). Then, in order; the first failure answers:

1. exactly one ``Authorization`` header, following the grammar of
   :func:`relay.protocol.signed_requests.parse_authorization`; else ``401 unauthorized``;
2. the body is read whole (the signature covers its digest): over ``max_frame_bytes`` is
   ``413 too_large``;
3. the device id of a deleted account is ``410 account_deleted``; no signature is checked (its key is
   gone);
4. the signature over ``relay-http-v1\\n{server_key}\\n{device}\\n{METHOD}\\n{target}\\n{ts}\\n{nonce}\\n
   {digest}``, with the target exactly as sent on the request line (the ASGI ``raw_path`` and
   ``query_string``, never a re-encoded path). An unknown device is verified against a dummy key, so it
   costs what a known one does. Not verified: ``401 unauthorized``;
5. a revoked device whose signature verifies: ``403 device_revoked``; then the device's rate limit
   (:mod:`relay.http.limits`: ``429 rate_limited``; the address's limit is checked before step 2);
6. ``|ts - now| <= clock_skew_ms``, else ``401 unauthorized``;
7. the (device, nonce) pair is new (:meth:`relay.store.base.Store.remember_nonce`, until
   ``ts + clock_skew_ms``, on every node since the store is shared), else ``401 unauthorized``.

Every ``401`` is the same: message ``Unauthorized``, ``server_time`` in the error object,
``WWW-Authenticate: Relay-Ed25519`` (added by :mod:`relay.http.errors`); which check failed is logged
(at info, with the request id) and never told. The nonce is remembered only for a request whose
signature verified and whose ``ts`` is fresh, so nobody without the key can spend a device's nonces.
Ed25519 verification (~50 µs) runs inline on the trio loop.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Concatenate, NoReturn, ParamSpec, TypeVar
from urllib.parse import quote

import attrs
from quart import request

from relay import crypto
from relay.errors import AccountDeleted, DeviceRevoked, Unauthorized
from relay.http.errors import request_id
from relay.http.runtime import Runtime, current_runtime
from relay.protocol.signed_requests import is_fresh, nonce_expires_at, parse_authorization, signed_target
from relay.store.base import DeletedDevice, DeviceRecord

__all__ = ["SignedRequest", "authenticate", "request_target", "signed"]

log = logging.getLogger("relay.http.auth")

P = ParamSpec("P")
R = TypeVar("R")

#: What may stay unescaped when a path must be rebuilt from the decoded one (RFC 3986 ``pchar`` and ``/``).
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


@attrs.frozen(kw_only=True)
class SignedRequest:
    """A request whose signature verified: the (non-revoked) device that sent it, and the raw body."""

    device: DeviceRecord
    body: bytes = attrs.field(repr=False)

    @property
    def user_id(self) -> str:
        return self.device.user_id

    @property
    def device_id(self) -> str:
        return self.device.device_id


def request_target() -> str | None:
    """The current request's path and query as sent on the request line, or ``None`` when unusable.

    From the ASGI scope's ``raw_path`` (Hypercorn sets it to the bytes of the request line before the
    ``?``) and ``query_string``. A server that leaves ``raw_path`` out gets the decoded path
    percent-encoded again, the best that can be done; with it, the signature must cover a path
    without needless escapes.
    """
    scope = request.scope
    raw_path: object = scope.get("raw_path")
    if not isinstance(raw_path, bytes | bytearray):
        raw_path = quote(str(scope.get("path", "")), safe=_PATH_SAFE).encode("ascii")
    query_string: object = scope.get("query_string", b"")
    return signed_target(bytes(raw_path), bytes(query_string) if isinstance(query_string, bytes) else b"")


def _refuse(now_ms: int, why: str) -> NoReturn:
    log.info("signed request refused (request id %s): %s", request_id(), why)
    raise Unauthorized(server_time=now_ms, detail=why)


async def authenticate(runtime: Runtime | None = None) -> SignedRequest:
    """Check the current request's signature (module docstring); the device, or the error to answer."""
    runtime = runtime if runtime is not None else current_runtime()
    values = request.headers.getlist("Authorization")
    header = parse_authorization(values[0]) if len(values) == 1 else None
    if header is None:
        _refuse(runtime.clock.now_ms(), "malformed Authorization" if values else "no Authorization header")
    await runtime.limits.check_address(runtime.metrics)
    body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    now_ms = runtime.clock.now_ms()
    found = await runtime.store.lookup_device(header.device_id, now_ms=now_ms)
    if isinstance(found, DeletedDevice):
        raise AccountDeleted()
    target = request_target()
    if target is None:
        _refuse(now_ms, "the request target cannot be signed as sent")
    known = isinstance(found, DeviceRecord)
    key = found.public_key if isinstance(found, DeviceRecord) else crypto.DUMMY_PUBLIC_KEY
    message = header.signed_string(runtime.server_key.public_key_b64, request.method, target, body)
    verified = crypto.verify(key, message, header.sig)
    if not isinstance(found, DeviceRecord) or not verified:
        _refuse(now_ms, "signature does not verify" if known else "unknown device")
    if found.revoked:
        raise DeviceRevoked()
    await runtime.limits.check_device(found.device_id, runtime.metrics)
    skew = runtime.settings.clock_skew_ms
    if not is_fresh(header.ts, now_ms=now_ms, clock_skew_ms=skew):
        _refuse(now_ms, f"ts is {header.ts - now_ms} ms from the server's clock")
    expires_at = nonce_expires_at(header.ts, clock_skew_ms=skew)
    fresh = await runtime.store.remember_nonce(
        found.device_id, header.nonce, expires_at=expires_at, now_ms=now_ms
    )
    if not fresh:
        _refuse(now_ms, "nonce already used")
    return SignedRequest(device=found, body=body)


def signed(handler: Callable[Concatenate[SignedRequest, P], Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Make ``handler`` a signed route: it runs only for an authenticated request, which it receives first.

    Apply below the route decorator (``@blueprint.get(...)`` then ``@signed``), so that routing and the
    405 of other methods come first.
    """

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        signed_request = await authenticate()
        return await handler(signed_request, *args, **kwargs)

    return wrapper
