"""``DELETE /v1/user`` (PROTOCOL.md §5): the signing device's user deletes itself and everything of it.

Signed (:mod:`relay.http.auth`); no body. One store transaction deletes the devices (revoked ones
too), streams, events, tokens and nonces, and remembers the device ids as keyed hashes for
``max_ttl_s``, so that they are answered ``410 account_deleted`` over HTTP and ``account_deleted``
(1008) at the handshake meanwhile. The answer is
``200 {"deleted": {"devices": n, "streams": n, "events": n}}``, counting stored rows (expired events
that were not purged yet included). Then every live session of the user is ended with
``account_deleted`` through the bus; a bus that is down does not change the answer (the revocation
log reaches the sessions).
"""

from __future__ import annotations

from quart import Blueprint, Response

from relay.http.auth import SignedRequest, signed
from relay.http.bodies import no_body
from relay.http.errors import check_query, json_response
from relay.http.notices import announce
from relay.http.runtime import current_runtime

__all__ = ["blueprint"]

blueprint = Blueprint("user", __name__)


@blueprint.delete("/v1/user")
@signed
async def delete_user(signed_request: SignedRequest) -> Response:
    check_query()
    no_body(signed_request.body)
    runtime = current_runtime()
    user_id = signed_request.user_id
    counts = await runtime.store.delete_user(
        user_id, now_ms=runtime.clock.now_ms(), remember_ms=runtime.settings.max_ttl_s * 1000
    )
    await announce("the deletion of a user", lambda: runtime.bus.announce_user_deleted(user_id))
    return json_response(
        {"deleted": {"devices": counts.devices, "streams": counts.streams, "events": counts.events}}
    )
