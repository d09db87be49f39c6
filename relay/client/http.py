"""The HTTP side of the reference client: server info, enrolment, pairing URIs and signed requests.

Built on httpx (its async client runs on trio). :class:`SignedAuth` signs each request as PROTOCOL.md §3
says: ``Authorization: Relay-Ed25519 device=<id>, ts=<ms>, nonce=<b64>, sig=<b64>``, the signature
covering the server key, the device id, the method, the path and query, ``ts``, the nonce and the
SHA-256 of the body (:func:`relay.crypto.http_request_string`).
An error answer is raised as the :class:`relay.errors.RelayError` its body names.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import attrs
import httpx

from relay import crypto
from relay.client.credentials import DeviceCredentials
from relay.client.errors import ClientError, error_from_wire
from relay.clock import Clock, SystemClock

__all__ = [
    "HTTP_NONCE_BYTES",
    "PairingUri",
    "RelayHttp",
    "SignedAuth",
    "parse_pairing_uri",
]

#: §1: HTTP nonces are 16 bytes.
HTTP_NONCE_BYTES = 16
#: How long one HTTP exchange may take, in seconds, before the client gives up.
HTTP_TIMEOUT_S = 30.0


class SignedAuth(httpx.Auth):
    """httpx authentication that signs every request with the device key (§3)."""

    requires_request_body = True

    def __init__(self, creds: DeviceCredentials, *, clock: Clock | None = None) -> None:
        self._creds = creds
        self._clock = clock if clock is not None else SystemClock()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self.header(
            request.method, request.url.raw_path.decode("ascii"), request.content
        )
        yield request

    def header(self, method: str, path_and_query: str, body: bytes) -> str:
        """The ``Authorization`` value for one request (a fresh nonce each time)."""
        creds = self._creds
        ts = self._clock.now_ms()
        nonce = crypto.random_nonce(HTTP_NONCE_BYTES)
        signed = crypto.http_request_string(
            creds.server_key, creds.device_id, method, path_and_query, ts, nonce, body
        )
        sig = creds.key.sign(signed)
        return f"Relay-Ed25519 device={creds.device_id}, ts={ts}, nonce={nonce}, sig={sig}"


@attrs.frozen(kw_only=True)
class PairingUri:
    """``relay:pair?url=...&token=...&server_key=...`` (§2)."""

    url: str
    token: str = attrs.field(repr=False)
    server_key: str

    def __str__(self) -> str:
        return f"relay:pair?url={quote(self.url, safe='')}&token={self.token}&server_key={self.server_key}"


def parse_pairing_uri(text: str) -> PairingUri:
    """Parse a pairing URI; :class:`ClientError` when it is not one."""
    scheme, _, rest = text.partition(":")
    path, _, query = rest.partition("?")
    if scheme != "relay" or path != "pair":
        raise ClientError("not a pairing URI (relay:pair?url=...&token=...&server_key=...)")
    values = parse_qs(query, keep_blank_values=True)
    try:
        (url,), (token,), (server_key,) = values["url"], values["token"], values["server_key"]
    except (KeyError, ValueError):
        raise ClientError("a pairing URI needs exactly one url, token and server_key") from None
    if urlsplit(url).scheme not in ("http", "https"):
        raise ClientError("the pairing URI's url is not an http(s) URL")
    return PairingUri(url=url.rstrip("/"), token=token, server_key=server_key)


def _raise_for_answer(response: httpx.Response) -> None:
    if response.is_success:
        return
    request_id = response.headers.get("x-request-id")
    detail = f"HTTP {response.status_code}, request id {request_id}"
    try:
        error = response.json()["error"]
        code, message = error["code"], error["message"]
        if not isinstance(code, str) or not isinstance(message, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ClientError(f"the server answered HTTP {response.status_code} without an error body") from None
    raise error_from_wire(code, message, error, detail=detail)


class RelayHttp:
    """HTTP calls to one server. Use as ``async with RelayHttp(url) as http: ...``.

    ``transport`` replaces the network (tests: ``httpx.ASGITransport``). ``creds`` enables the signed
    endpoints.
    """

    def __init__(
        self,
        url: str,
        *,
        creds: DeviceCredentials | None = None,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        auth = SignedAuth(creds, clock=clock) if creds is not None else None
        self._signed = auth
        self._client = httpx.AsyncClient(
            base_url=self.url, timeout=HTTP_TIMEOUT_S, transport=transport, follow_redirects=False
        )

    async def __aenter__(self) -> RelayHttp:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._client.__aexit__(*exc_info)

    async def _send(self, method: str, path: str, *, body: object = None, signed: bool) -> httpx.Response:
        if signed and self._signed is None:
            raise ClientError("this call needs a device's credentials")
        content = json.dumps(body).encode() if body is not None else b""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            response = await self._client.request(
                method, path, content=content, headers=headers, auth=self._signed if signed else None
            )
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.url}: {exc}") from exc
        _raise_for_answer(response)
        return response

    async def json(self, method: str, path: str, *, body: object = None, signed: bool = True) -> Any:
        """One request; the answer's JSON (``None`` for ``204``). Errors raise (module docstring)."""
        response = await self._send(method, path, body=body, signed=signed)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{method} {path}: the answer is not JSON") from None

    async def server_info(self) -> dict[str, Any]:
        """``GET /v1/server``."""
        info = await self.json("GET", "/v1/server", signed=False)
        if not isinstance(info, dict) or crypto.b64decode(info.get("server_key"), crypto.KEY_BYTES) is None:
            raise ClientError("GET /v1/server did not answer a server key")
        return info

    async def enroll(
        self,
        token: str,
        name: str,
        *,
        key: crypto.SigningKey | None = None,
        server_key: str | None = None,
    ) -> DeviceCredentials:
        """Enrol a new device with ``token`` (§2) and return its credentials (not yet saved).

        ``server_key`` pins the key the server must have (from a pairing URI); without it, the key
        ``GET /v1/server`` publishes now is pinned (trust on first use).
        """
        key = key if key is not None else crypto.SigningKey.generate()
        info = await self.server_info()
        if server_key is not None and info["server_key"] != server_key:
            raise ClientError("the server's key is not the one the pairing names: refusing to enrol")
        public_key = key.public_key_b64
        body = {
            "token": token,
            "public_key": public_key,
            "name": name,
            "sig": key.sign(crypto.enroll_string(token, public_key, name)),
        }
        answer = await self.json("POST", "/v1/enroll", body=body, signed=False)
        try:
            user_id, device_id, stored = answer["user_id"], answer["device_id"], answer["name"]
        except (TypeError, KeyError):
            raise ClientError("POST /v1/enroll answered without a device") from None
        return DeviceCredentials(
            url=self.url,
            server_key=info["server_key"],
            user_id=user_id,
            device_id=device_id,
            name=stored,
            key=key,
        )

    # --- the signed device API (§2, §5, §6) ---------------------------------------------------------

    async def pair(self, *, public_key: str | None = None) -> tuple[PairingUri, int]:
        """``POST /v1/pairings``: a token for another device (bound to ``public_key`` when given).

        Returns the pairing URI to hand to the new device, and when the token expires.
        """
        answer = await self.json(
            "POST", "/v1/pairings", body={"public_key": public_key} if public_key else {}
        )
        try:
            uri, expires_at = answer["uri"], answer["expires_at"]
        except (TypeError, KeyError):
            raise ClientError("POST /v1/pairings answered without a pairing") from None
        return parse_pairing_uri(uri), expires_at

    async def devices(self, *, revoked: bool = False) -> list[dict[str, Any]]:
        """``GET /v1/devices``: the user's devices (or, with ``revoked``, its revoked ones)."""
        answer = await self.json("GET", "/v1/devices?revoked=true" if revoked else "/v1/devices")
        devices = answer.get("devices") if isinstance(answer, dict) else None
        if not isinstance(devices, list):
            raise ClientError("GET /v1/devices answered without devices")
        return devices

    async def rename(self, device_id: str, name: str) -> dict[str, Any]:
        """``PATCH /v1/devices/{id}``: the device as renamed."""
        answer = await self.json("PATCH", f"/v1/devices/{device_id}", body={"name": name})
        if not isinstance(answer, dict):
            raise ClientError("PATCH /v1/devices answered without a device")
        return answer

    async def revoke(self, device_id: str) -> None:
        """``DELETE /v1/devices/{id}``: revoke a device of the user (this one included)."""
        await self.json("DELETE", f"/v1/devices/{device_id}")

    async def delete_account(self) -> dict[str, int]:
        """``DELETE /v1/user``: delete the user and everything of it; what was deleted."""
        answer = await self.json("DELETE", "/v1/user")
        deleted = answer.get("deleted") if isinstance(answer, dict) else None
        if not isinstance(deleted, dict):
            raise ClientError("DELETE /v1/user answered without counts")
        return deleted
