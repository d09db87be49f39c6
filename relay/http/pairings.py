"""``POST /v1/pairings`` (PROTOCOL.md §2): a device of the user issues a token for the user's next device.

Signed (:mod:`relay.http.auth`). The body is ``{}`` or ``{"public_key": "<b64>"}`` (``null`` is the
same as absent): with a key, the token enrols only that key. The answer is
``201 {"token", "expires_at", "uri"}``: a token of 32 random bytes (only its SHA-256 is stored), valid
until ``expires_at`` = now + ``token_ttl_s``, single use, voided when the issuing device is revoked;
and the pairing URI that hands it to the new device::

    relay:pair?url={base URL, percent-encoded}&token={token}&server_key={server key}

The base URL is ``RELAY_PUBLIC_URL`` when set; else the request's scheme and ``Host`` header (as the
server saw them: behind a proxy, set ``RELAY_PUBLIC_URL``). A request without a usable ``Host`` then
cannot be given a URI: ``400 bad_request`` with path ``$.headers.host``.
"""

from __future__ import annotations

from urllib.parse import quote

from quart import Blueprint, Response, request

from relay.errors import BadRequest
from relay.http.auth import SignedRequest, signed
from relay.http.bodies import check_members, optional_public_key, read_object
from relay.http.errors import check_query, json_response
from relay.http.runtime import current_runtime

__all__ = ["base_url", "blueprint", "pairing_uri"]

blueprint = Blueprint("pairings", __name__)


def pairing_uri(url: str, token: str, server_key: str) -> str:
    """``relay:pair?url=...&token=...&server_key=...``, with ``url`` percent-encoded whole (nothing safe)."""
    return f"relay:pair?url={quote(url, safe='')}&token={token}&server_key={server_key}"


def base_url(public_url: str | None) -> str:
    """``public_url``, or the current request's ``scheme://host[:port]`` (default ports left out)."""
    if public_url is not None:
        return public_url
    host = request.host  # Werkzeug validates the characters; "" when absent or invalid
    if not host:
        path = "$.headers.host"
        raise BadRequest(
            f"{path}: a valid Host header is needed to build the pairing URI (or set RELAY_PUBLIC_URL)",
            path=path,
        )
    return f"{request.scheme}://{host.lower()}"


@blueprint.post("/v1/pairings")
@signed
async def create_pairing(signed_request: SignedRequest) -> Response:
    check_query()
    members = check_members(read_object(signed_request.body), {"public_key": optional_public_key})
    bound_key = members.get("public_key")
    assert bound_key is None or isinstance(bound_key, bytes)
    runtime = current_runtime()
    url = base_url(runtime.settings.public_url)
    issued = await runtime.store.create_token(
        user_id=signed_request.user_id,
        now_ms=runtime.clock.now_ms(),
        token_ttl_ms=runtime.settings.token_ttl_s * 1000,
        issued_by=signed_request.device_id,
        bound_key=bound_key,
    )
    server_key = runtime.server_key.public_key_b64
    return json_response(
        {
            "token": issued.token,
            "expires_at": issued.expires_at,
            "uri": pairing_uri(url, issued.token, server_key),
        },
        status=201,
        headers={"Cache-Control": "no-store"},
    )
