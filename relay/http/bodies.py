"""Request bodies of the signed endpoints: the strict rules of ``POST /v1/enroll``, shared.

- A body is one I-JSON object (:func:`relay.protocol.codec.parse_object`), else ``400 bad_request`` with
  path ``$``; its size limit (``413 too_large``) is enforced while it is read.
- Members are checked like enrolment's: the first unknown member in document order, else the first
  malformed one in document order, else the first missing one in the order the endpoint defines.
- Endpoints that take no body (``GET``, ``DELETE``) refuse a non-empty one, ``400`` with path ``$``:
  a body sent there would be ignored, and a client that means something by it must be told.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from relay import crypto
from relay.errors import BadRequest, InvalidJson
from relay.http.errors import member_path
from relay.protocol.codec import parse_object
from relay.protocol.names import normalize_device_name

__all__ = ["check_members", "no_body", "optional_public_key", "read_object", "stored_name"]

MemberCheck = Callable[[object, str], object]


def read_object(body: bytes) -> Mapping[str, object]:
    """``body`` as one I-JSON object, or :class:`BadRequest` with path ``$``."""
    try:
        return parse_object(body)
    except InvalidJson as exc:
        raise BadRequest("$: the body is not one I-JSON object", path="$", detail=exc.detail) from None


def no_body(body: bytes) -> None:
    """Refuse a non-empty body on an endpoint that takes none."""
    if body:
        raise BadRequest("$: this endpoint takes no body", path="$")


def check_members(
    obj: Mapping[str, object], checks: Mapping[str, MemberCheck], *, required: Sequence[str] = ()
) -> dict[str, object]:
    """Each member of ``obj`` checked by ``checks[name](value, path)``; returns the checked values.

    Unknown members first (document order), then malformed ones (document order), then the missing
    ``required`` ones (in the order given): the first problem is :class:`BadRequest` with its path.
    """
    for key in obj:
        if key not in checks:
            path = member_path(key)
            raise BadRequest(f"{path}: unknown member", path=path)
    checked = {key: checks[key](value, member_path(key)) for key, value in obj.items()}
    for key in required:
        if key not in checked:
            path = member_path(key)
            raise BadRequest(f"{path}: missing member", path=path)
    return checked


def stored_name(value: object, path: str) -> str:
    """A device name as sent, checked; returns the name to store (§1). Required: ``null`` is malformed."""
    try:
        return normalize_device_name(value, path=path)
    except BadRequest as exc:
        raise BadRequest(f"{path}: {exc.message}", path=path, detail=exc.detail) from None


def optional_public_key(value: object, path: str) -> bytes | None:
    """An optional Ed25519 public key: ``null`` is absent (§1); else canonical b64 of 32 bytes."""
    if value is None:
        return None
    raw = crypto.b64decode(value, crypto.KEY_BYTES)
    if raw is None:
        raise BadRequest(
            f"{path}: must be canonical unpadded base64url of {crypto.KEY_BYTES} bytes", path=path
        )
    return raw
