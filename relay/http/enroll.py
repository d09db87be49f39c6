"""``POST /v1/enroll`` (PROTOCOL.md §2): a new device proves it holds its key and spends a token.

The body is exactly ``{"token", "public_key", "name", "sig"}``, all four required:

- ``token``: canonical b64 of 32 bytes; ``public_key``: of 32; ``sig``: of 64;
- ``name``: a device name (:func:`relay.protocol.names.normalize_device_name`);
- ``sig``: the new key's signature over ``relay-enroll-v1\\n{token}\\n{public_key}\\n{name}``, each field
  exactly as sent (the name before normalisation).

Checks, in order; the first failure answers:

1. the body is one I-JSON object (else ``400 bad_request``, path ``$``), at most ``max_frame_bytes``
   (else ``413 too_large``);
2. members: the first unknown member in document order, else the first malformed one in document
   order, else the first missing one in the order above: ``400 bad_request`` with its path;
3. the signature: one that does not verify is ``400 bad_request`` with path ``$.sig``. It is a malformed
   request, not a token problem: the token is not even looked at, so it stays usable, and the client is
   not told to fetch a new one for what is a bug of its own;
4. the store (one transaction): ``401 invalid_token``, ``409 name_taken``, ``409 key_in_use``,
   ``409 too_many_devices``, or ``201 {"user_id", "device_id", "name"}`` with the stored name;
5. after the commit, the user's live sessions are told (``device`` notice ``enrolled``, §4.5) through
   the bus; a bus that is down does not change the answer.

A token is consumed only by a ``201``.
"""

from __future__ import annotations

import logging

import attrs
from quart import Blueprint, Response, request

from relay import crypto
from relay.errors import BadRequest, BusUnavailable, InvalidJson
from relay.http.errors import check_query, json_response, member_path
from relay.http.runtime import current_runtime
from relay.protocol.codec import parse_object
from relay.protocol.names import device_name_key, normalize_device_name
from relay.store.base import Enrollment

__all__ = ["ENROLL_MEMBERS", "EnrollRequest", "blueprint", "parse_enroll_request"]

#: The members of an enrolment body, in the order missing ones are reported.
ENROLL_MEMBERS = ("token", "public_key", "name", "sig")

log = logging.getLogger("relay.http")

_B64_FIELDS = {
    "token": crypto.TOKEN_BYTES,
    "public_key": crypto.KEY_BYTES,
    "sig": crypto.SIGNATURE_BYTES,
}


@attrs.frozen(kw_only=True)
class EnrollRequest:
    """A well-formed enrolment body. Text fields are as sent; ``name`` is the name to store."""

    token: str = attrs.field(repr=False)
    public_key: str
    name_as_sent: str
    name: str
    sig: str

    @property
    def token_bytes(self) -> bytes:
        raw = crypto.b64decode(self.token, crypto.TOKEN_BYTES)
        assert raw is not None  # checked by parse_enroll_request
        return raw

    @property
    def public_key_bytes(self) -> bytes:
        raw = crypto.b64decode(self.public_key, crypto.KEY_BYTES)
        assert raw is not None  # checked by parse_enroll_request
        return raw

    def signature_verifies(self) -> bool:
        """Whether ``sig`` is the key's signature of the enrolment string, fields as sent."""
        message = crypto.enroll_string(self.token, self.public_key, self.name_as_sent)
        return crypto.verify(self.public_key, message, self.sig)


def _check_member(key: str, value: object) -> str:
    """``value`` checked as member ``key``; returns the stored form (the normalised name)."""
    path = member_path(key)
    if key == "name":
        try:
            return normalize_device_name(value, path=path)
        except BadRequest as exc:
            raise BadRequest(f"{path}: {exc.message}", path=path, detail=exc.detail) from None
    length = _B64_FIELDS[key]
    if crypto.b64decode(value, length) is None:
        raise BadRequest(f"{path}: must be canonical unpadded base64url of {length} bytes", path=path)
    assert isinstance(value, str)
    return value


def parse_enroll_request(body: bytes) -> EnrollRequest:
    """The enrolment request in ``body``, or :class:`BadRequest` naming the path of the first problem.

    Pure: checks the shape and the fields, not the signature (:meth:`EnrollRequest.signature_verifies`).
    A body that is not one I-JSON object is refused with path ``$``.
    """
    try:
        obj = parse_object(body)
    except InvalidJson as exc:
        raise BadRequest("$: the body is not one I-JSON object", path="$", detail=exc.detail) from None
    for key in obj:
        if key not in ENROLL_MEMBERS:
            path = member_path(key)
            raise BadRequest(f"{path}: unknown member", path=path)
    checked = {key: _check_member(key, value) for key, value in obj.items()}
    for key in ENROLL_MEMBERS:
        if key not in checked:
            path = member_path(key)
            raise BadRequest(f"{path}: missing member", path=path)
    name_as_sent = obj["name"]
    assert isinstance(name_as_sent, str)
    return EnrollRequest(
        token=checked["token"],
        public_key=checked["public_key"],
        name_as_sent=name_as_sent,
        name=checked["name"],
        sig=checked["sig"],
    )


blueprint = Blueprint("enroll", __name__)


@blueprint.post("/v1/enroll")
async def enroll() -> Response:
    check_query()
    runtime = current_runtime()
    await runtime.limits.check_address(runtime.metrics)
    body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    enrollment = parse_enroll_request(body)
    if not enrollment.signature_verifies():
        raise BadRequest("$.sig: the signature does not verify with public_key", path="$.sig")
    now_ms = runtime.clock.now_ms()
    device = await runtime.store.enroll(
        Enrollment(
            token_hash=crypto.hash_token(enrollment.token_bytes),
            public_key=enrollment.public_key_bytes,
            name=enrollment.name,
            name_key=device_name_key(enrollment.name),
            max_devices=runtime.settings.max_devices,
            now_ms=now_ms,
        )
    )
    try:
        await runtime.bus.announce_device(device.user_id, "enrolled", device.device_id, device.name, now_ms)
    except BusUnavailable as exc:
        # The device is enrolled (committed): the answer is still 201. Sessions that missed the notice
        # see the device when they list devices.
        log.warning("could not announce enrolled device %s: %s", device.device_id, exc.detail or exc.message)
    return json_response(
        {"user_id": device.user_id, "device_id": device.device_id, "name": device.name}, status=201
    )
