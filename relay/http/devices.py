"""``GET /v1/devices``, ``PATCH /v1/devices/{id}``, ``DELETE /v1/devices/{id}`` (PROTOCOL.md §5, §6).

Every route is signed (:mod:`relay.http.auth`), and sees only the signing device's user: a device of
another user, like an unknown one, is ``404 not_found`` (never ``403``), so nothing of one user is
observable by another.

A device object is ``{"device_id", "name", "created_at", "last_seen_at", "online", "current"}``, plus
``revoked_at`` for a revoked device. ``last_seen_at`` is ``null`` until the device's first session
ended; ``online`` is whether it has a live session on any node (the bus's presence); ``current`` is
whether it is the device that signed the request.

``{id}`` is a route segment that matches only a lowercase UUID (:class:`DeviceIdConverter`): any
other spelling is not a route, so it is ``404`` for every method, before any signature is checked.
"""

from __future__ import annotations

import logging

from quart import Blueprint, Response, request
from quart.blueprints import BlueprintSetupState
from werkzeug.routing import BaseConverter

from relay.errors import BadRequest, BusUnavailable
from relay.http.auth import SignedRequest, signed
from relay.http.bodies import check_members, no_body, read_object, stored_name
from relay.http.errors import check_query, json_response, member_path, no_content
from relay.http.notices import announce, online_devices
from relay.http.runtime import current_runtime
from relay.protocol.names import device_name_key
from relay.store.base import DeviceRecord

__all__ = ["DeviceIdConverter", "blueprint", "device_json"]

log = logging.getLogger("relay.http")

#: ``?revoked=`` values and what they mean.
_REVOKED_VALUES = {"true": True, "false": False}


class DeviceIdConverter(BaseConverter):
    """A path segment that is a device id as §1 spells it: lowercase hyphenated 8-4-4-4-12."""

    regex = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


blueprint = Blueprint("devices", __name__)


# Registered before the routes below are, since the blueprint records its deferred work in order.
@blueprint.record_once
def _register_converter(state: BlueprintSetupState) -> None:
    state.app.url_map.converters.setdefault("device_id", DeviceIdConverter)


def device_json(device: DeviceRecord, *, online: set[str], current_device_id: str) -> dict[str, object]:
    """The device object of the answers (module docstring), members in the order §6 lists them."""
    out: dict[str, object] = {
        "device_id": device.device_id,
        "name": device.name,
        "created_at": device.created_at,
        "last_seen_at": device.last_seen_at,
        "online": device.device_id in online,
        "current": device.device_id == current_device_id,
    }
    if device.revoked_at is not None:
        out["revoked_at"] = device.revoked_at
    return out


def _revoked_filter() -> bool:
    """``?revoked=true|false`` (default false); any other parameter, value or repetition is 400."""
    check_query(allowed=("revoked",))
    values = request.args.getlist("revoked")
    if not values:
        return False
    path = member_path("query", "revoked")
    if len(values) > 1:
        raise BadRequest(f"{path}: given more than once", path=path)
    chosen = _REVOKED_VALUES.get(values[0])
    if chosen is None:
        raise BadRequest(f"{path}: must be true or false", path=path)
    return chosen


@blueprint.get("/v1/devices")
@signed
async def list_devices(signed_request: SignedRequest) -> Response:
    revoked = _revoked_filter()
    no_body(signed_request.body)
    runtime = current_runtime()
    devices = [d for d in await runtime.store.list_devices(signed_request.user_id) if d.revoked == revoked]
    online = await online_devices(runtime, signed_request.user_id)
    return json_response(
        {
            "devices": [
                device_json(d, online=online, current_device_id=signed_request.device_id) for d in devices
            ]
        }
    )


@blueprint.patch("/v1/devices/<device_id:device_id>")
@signed
async def rename_device(signed_request: SignedRequest, device_id: str) -> Response:
    check_query()
    members = check_members(read_object(signed_request.body), {"name": stored_name}, required=("name",))
    name = members["name"]
    assert isinstance(name, str)
    runtime = current_runtime()
    now_ms = runtime.clock.now_ms()
    device = await runtime.store.rename_device(
        device_id, name=name, name_key=device_name_key(name), now_ms=now_ms, user_id=signed_request.user_id
    )
    await announce(
        f"renamed device {device_id}",
        lambda: runtime.bus.announce_device(device.user_id, "renamed", device.device_id, device.name, now_ms),
    )
    try:
        online = await online_devices(runtime, signed_request.user_id)
    except BusUnavailable as exc:  # the rename stands: presence is the one part the answer may lack
        log.warning("presence unknown after renaming device %s: %s", device_id, exc.detail or exc.message)
        online = set()
    return json_response(device_json(device, online=online, current_device_id=signed_request.device_id))


@blueprint.delete("/v1/devices/<device_id:device_id>")
@signed
async def revoke_device(signed_request: SignedRequest, device_id: str) -> Response:
    check_query()
    no_body(signed_request.body)
    runtime = current_runtime()
    now_ms = runtime.clock.now_ms()
    device = await runtime.store.revoke_device(device_id, now_ms=now_ms, user_id=signed_request.user_id)
    if device.revoked_at == now_ms:
        # This request revoked it (an idempotent repeat returns the first revoked_at): tell its sessions,
        # which end with device_revoked, and the user's others. The revocation log reaches them anyway.
        await announce(
            f"revoked device {device_id}",
            lambda: runtime.bus.announce_device(
                device.user_id, "revoked", device.device_id, device.name, now_ms
            ),
        )
    return no_content()
