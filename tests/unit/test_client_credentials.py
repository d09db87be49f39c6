"""The device file (0600, atomic, never replaced by enrol), pairing URIs and request signing."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from relay import crypto
from relay.client import (
    ClientError,
    CredentialsError,
    DeviceCredentials,
    PairingUri,
    SignedAuth,
    parse_pairing_uri,
)
from relay.clock import ManualClock

SERVER_KEY = crypto.SigningKey(bytes(range(32))).public_key_b64


def creds(**changes: object) -> DeviceCredentials:
    values: dict[str, object] = {
        "url": "http://127.0.0.1:8080",
        "server_key": SERVER_KEY,
        "user_id": "11111111-1111-4111-8111-111111111111",
        "device_id": "22222222-2222-4222-8222-222222222222",
        "name": "Phone",
        "key": crypto.SigningKey(bytes(32)),
    }
    values.update(changes)
    return DeviceCredentials(**values)  # type: ignore[arg-type]


def test_the_device_file_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    original = creds(positions={"notes": 4})
    original.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = DeviceCredentials.load(path)
    assert loaded.to_json() == original.to_json()
    assert loaded.key.public_key == original.key.public_key
    assert loaded.key.seed_b64 not in repr(loaded)


def test_an_exclusive_save_never_replaces_a_key(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    creds().save(path, exclusive=True)
    before = path.read_bytes()
    with pytest.raises(CredentialsError, match="exists already"):
        creds(key=crypto.SigningKey.generate()).save(path, exclusive=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["device.json"]  # no temporary file left behind


def test_saving_again_replaces_atomically_and_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    creds().save(path)
    creds(positions={"a": 1}).save(path)
    assert DeviceCredentials.load(path).positions == {"a": 1}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"version": 2}', "version"),
        (json.dumps({**creds().to_json(), "device_id": "ABC"}).encode(), "UUID"),
        (json.dumps({**creds().to_json(), "key": "short"}).encode(), "Ed25519"),
        (json.dumps({**creds().to_json(), "server_key": "x"}).encode(), "server_key"),
        (json.dumps({**creds().to_json(), "positions": {"bad name": 1}}).encode(), "positions"),
        (json.dumps({**creds().to_json(), "name": ""}).encode(), "'name'"),
    ],
)
def test_a_malformed_device_file_is_refused_with_one_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "device.json"
    path.write_bytes(content)
    with pytest.raises(CredentialsError, match=message):
        DeviceCredentials.load(path)


def test_a_missing_device_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="relay device enroll"):
        DeviceCredentials.load(tmp_path / "nothing.json")


def test_the_websocket_url_follows_the_scheme() -> None:
    assert creds(url="http://h:1").ws_url == "ws://h:1/v1/ws"
    assert creds(url="https://relay.example").ws_url == "wss://relay.example/v1/ws"


def test_a_pairing_uri_round_trips_with_its_url_percent_encoded() -> None:
    uri = PairingUri(url="https://relay.example:8443/base", token="tok_en", server_key=SERVER_KEY)
    text = str(uri)
    assert text.startswith(
        "relay:pair?url=https%3A%2F%2Frelay.example%3A8443%2Fbase&token=tok_en&server_key="
    )
    assert parse_pairing_uri(text) == uri


@pytest.mark.parametrize(
    "text",
    [
        "http://relay.example",
        "relay:enroll?url=http%3A%2F%2Fh&token=t&server_key=k",
        "relay:pair?url=http%3A%2F%2Fh&token=t",
        "relay:pair?url=ftp%3A%2F%2Fh&token=t&server_key=k",
        "relay:pair?url=http%3A%2F%2Fh&token=t&token=u&server_key=k",
    ],
)
def test_anything_else_is_not_a_pairing_uri(text: str) -> None:
    with pytest.raises(ClientError):
        parse_pairing_uri(text)


def test_a_signed_request_carries_the_four_parameters_and_a_signature_that_verifies() -> None:
    device = creds()
    auth = SignedAuth(device, clock=ManualClock(wall_ms=1_764_000_000_000))
    request = httpx.Request("PATCH", "http://h/v1/devices/abc?x=1", content=b'{"name":"New"}')
    signed = next(auth.auth_flow(request))
    header = signed.headers["Authorization"]
    scheme, _, params = header.partition(" ")
    fields = dict(part.split("=", 1) for part in params.split(", "))
    assert scheme == "Relay-Ed25519"
    assert list(fields) == ["device", "ts", "nonce", "sig"]
    assert (fields["device"], fields["ts"]) == (device.device_id, "1764000000000")
    assert crypto.b64decode(fields["nonce"], 16) is not None
    text = crypto.http_request_string(
        SERVER_KEY,
        device.device_id,
        "PATCH",
        "/v1/devices/abc?x=1",
        1_764_000_000_000,
        fields["nonce"],
        b'{"name":"New"}',
    )
    assert crypto.verify(device.key.public_key, text, fields["sig"])
    again = next(auth.auth_flow(httpx.Request("GET", "http://h/v1/devices")))
    assert again.headers["Authorization"] != header  # a fresh nonce every time
