"""A device's credentials, and the file that keeps them (mode 0600).

The file is one JSON object::

    {"version": 1, "url": "http://127.0.0.1:8080", "server_key": "<b64>", "user_id": "...",
     "device_id": "...", "name": "Alice's phone", "key": "<b64 Ed25519 seed>",
     "positions": {"<stream>": <seq delivered>, ...}}

It holds the device's private key, so it is written with mode 0600 (created so, never widened), in
its directory, atomically (a temporary file renamed over the old one): a crash never leaves half a
key. ``positions`` records how far ``relay device tail`` has shown each stream.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import attrs

from relay import crypto
from relay.protocol.syntax import is_stream_name, is_uuid

__all__ = ["FILE_VERSION", "CredentialsError", "DeviceCredentials"]

FILE_VERSION = 1


class CredentialsError(Exception):
    """The device file is missing, unreadable or malformed; ``str()`` is one line for people."""


@attrs.frozen(kw_only=True)
class DeviceCredentials:
    """Everything a device needs to reach its server and prove itself."""

    url: str  # the server's base URL, http(s)://host:port, without a trailing slash
    server_key: str  # pinned (b64), from the pairing or the first contact
    user_id: str
    device_id: str
    name: str
    key: crypto.SigningKey = attrs.field(repr=False)
    positions: Mapping[str, int] = attrs.field(factory=dict)

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint: ``ws(s)://host:port/v1/ws``."""
        scheme, sep, rest = self.url.partition("://")
        return {"http": "ws", "https": "wss"}.get(scheme, scheme) + sep + rest + "/v1/ws"

    def to_json(self) -> dict[str, object]:
        return {
            "version": FILE_VERSION,
            "url": self.url,
            "server_key": self.server_key,
            "user_id": self.user_id,
            "device_id": self.device_id,
            "name": self.name,
            "key": self.key.seed_b64,
            "positions": dict(sorted(self.positions.items())),
        }

    @classmethod
    def from_json(cls, obj: object) -> DeviceCredentials:
        """Parse the file's object; :class:`CredentialsError` naming the first bad member."""
        if not isinstance(obj, dict):
            raise CredentialsError("the device file does not hold a JSON object")
        if obj.get("version") != FILE_VERSION:
            raise CredentialsError(f"the device file is not of version {FILE_VERSION}")
        text = {}
        for member in ("url", "server_key", "user_id", "device_id", "name", "key"):
            value = obj.get(member)
            if not isinstance(value, str) or not value:
                raise CredentialsError(f"the device file has no valid {member!r}")
            text[member] = value
        if not is_uuid(text["user_id"]) or not is_uuid(text["device_id"]):
            raise CredentialsError("the device file's ids are not lowercase UUIDs")
        if crypto.b64decode(text["server_key"], crypto.KEY_BYTES) is None:
            raise CredentialsError("the device file's server_key is not a key")
        try:
            key = crypto.SigningKey.from_seed_b64(text["key"])
        except ValueError:
            raise CredentialsError("the device file's key is not an Ed25519 seed") from None
        raw_positions = obj.get("positions") or {}
        if not isinstance(raw_positions, dict) or not all(
            is_stream_name(k) and type(v) is int and v >= 0 for k, v in raw_positions.items()
        ):
            raise CredentialsError("the device file's positions are malformed")
        return cls(
            url=text["url"].rstrip("/"),
            server_key=text["server_key"],
            user_id=text["user_id"],
            device_id=text["device_id"],
            name=text["name"],
            key=key,
            positions=raw_positions,
        )

    @classmethod
    def load(cls, path: Path) -> DeviceCredentials:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CredentialsError(f"no device file at {path} (enrol first: relay device enroll)") from None
        except OSError as exc:
            raise CredentialsError(f"cannot read the device file {path}: {exc.strerror}") from None
        try:
            obj = json.loads(data)
        except ValueError:
            raise CredentialsError(f"the device file {path} is not JSON") from None
        return cls.from_json(obj)

    def save(self, path: Path, *, exclusive: bool = False) -> None:
        """Write the file atomically with mode 0600; ``exclusive`` refuses to replace an existing one."""
        if exclusive and path.exists():
            raise CredentialsError(f"{path} exists already: refusing to replace a device's key")
        directory = path.parent if str(path.parent) else Path(".")
        data = (json.dumps(self.to_json(), indent=2) + "\n").encode()
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            if exclusive:
                os.link(temporary, path)  # fails if the path appeared meanwhile
                os.unlink(temporary)
            else:
                os.replace(temporary, path)
        except FileExistsError:
            os.unlink(temporary)
            raise CredentialsError(f"{path} exists already: refusing to replace a device's key") from None
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise

    def with_positions(self, positions: Mapping[str, int]) -> DeviceCredentials:
        return attrs.evolve(self, positions=dict(positions))
