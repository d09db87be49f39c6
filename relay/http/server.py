"""``GET /v1/server`` and ``GET /healthz`` (PROTOCOL.md §6), and plain HTTP on ``/v1/ws``.

``/v1/server`` publishes what a client pins and respects before it connects: the protocol versions,
the server's key (§4.1), its clock and the limits a ``welcome`` carries. ``/healthz`` answers while the
process runs and touches nothing else.

``/v1/ws`` is a route here only so that routing treats it like every other endpoint: its WebSocket
upgrade is taken by the gateway before Quart sees it (:mod:`relay.app`), a plain ``GET`` without the
upgrade is ``400 bad_request``, and any other method is ``405`` with ``Allow``.
"""

from __future__ import annotations

from quart import Blueprint, Response

from relay import __version__
from relay.errors import BadRequest
from relay.http.errors import check_query, json_response
from relay.http.runtime import current_runtime
from relay.protocol.codec import converter

__all__ = ["PROTOCOL_VERSIONS", "blueprint"]

#: The versions of the wire protocol this server speaks.
PROTOCOL_VERSIONS = (1,)

blueprint = Blueprint("server", __name__)


@blueprint.get("/v1/server")
async def server_info() -> Response:
    check_query()
    runtime = current_runtime()
    return json_response(
        {
            "software_version": __version__,
            "protocol_versions": list(PROTOCOL_VERSIONS),
            "server_key": runtime.server_key.public_key_b64,
            "server_time": runtime.clock.now_ms(),
            "limits": converter.unstructure(runtime.settings.limits),
        }
    )


@blueprint.get("/healthz")
async def healthz() -> Response:
    check_query()
    return json_response({"status": "ok"})


@blueprint.get("/v1/ws")
async def websocket_without_upgrade() -> Response:
    raise BadRequest("$: GET /v1/ws is a WebSocket endpoint; send an Upgrade: websocket request", path="$")
