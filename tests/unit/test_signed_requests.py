"""relay.protocol.signed_requests: the Authorization grammar of §3, the signed target, and time, purely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relay import crypto
from relay.protocol.signed_requests import (
    AUTH_SCHEME,
    SignedHeader,
    is_fresh,
    nonce_expires_at,
    parse_authorization,
    signed_target,
)

VECTORS = Path(__file__).parent.parent / "vectors" / "signatures-v1.json"
DEVICE = "0f8fad5b-d9cb-469f-a165-70867728950e"
NONCE = crypto.b64encode(b"\x44" * 16)
SIG = crypto.b64encode(b"\x55" * 64)
GOOD = f"Relay-Ed25519 device={DEVICE}, ts=1764000000000, nonce={NONCE}, sig={SIG}"


def test_a_well_formed_header_gives_its_four_claims() -> None:
    assert parse_authorization(GOOD) == SignedHeader(device_id=DEVICE, ts=1764000000000, nonce=NONCE, sig=SIG)


@pytest.mark.parametrize("scheme", ["relay-ed25519", "RELAY-ED25519", "rElAy-Ed25519"])
def test_the_scheme_is_matched_without_regard_to_ascii_case(scheme: str) -> None:
    assert parse_authorization(GOOD.replace(AUTH_SCHEME, scheme)) is not None


@pytest.mark.parametrize("ts", ["0", "1", "9007199254740991"])
def test_ts_is_any_canonical_decimal_in_the_protocol_range(ts: str) -> None:
    header = parse_authorization(GOOD.replace("ts=1764000000000", f"ts={ts}"))
    assert header is not None
    assert str(header.ts) == ts  # what was signed is what str() writes back


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"Relay-Ed25519 device=x",
        "",
        AUTH_SCHEME,
        f"{AUTH_SCHEME} ",
        GOOD.replace(" device=", "  device="),
        GOOD.replace(" device=", "\tdevice="),
        " " + GOOD,
        GOOD + " ",
        GOOD + ",",
        GOOD.replace(", ts=", ",ts="),
        GOOD.replace(", ts=", " , ts="),
        GOOD.replace("device=", "Device="),
        GOOD.replace(f"device={DEVICE}", f'device="{DEVICE}"'),
        GOOD.replace(DEVICE, DEVICE.upper()),
        GOOD.replace(DEVICE, DEVICE.replace("-", "")),
        GOOD.replace(DEVICE, DEVICE[:-1] + "g"),
        GOOD.replace("ts=1764000000000", "ts=01764000000000"),
        GOOD.replace("ts=1764000000000", "ts=00"),
        GOOD.replace("ts=1764000000000", "ts=+1"),
        GOOD.replace("ts=1764000000000", "ts=-1"),
        GOOD.replace("ts=1764000000000", "ts=1.0"),
        GOOD.replace("ts=1764000000000", "ts=1e3"),
        GOOD.replace("ts=1764000000000", "ts=9007199254740992"),
        GOOD.replace("ts=1764000000000", "ts=99999999999999999"),
        GOOD.replace("ts=1764000000000", "ts=١"),
        GOOD.replace("ts=1764000000000", "ts="),
        GOOD.replace(NONCE, crypto.b64encode(b"\x44" * 15)),
        GOOD.replace(NONCE, crypto.b64encode(b"\x44" * 17)),
        GOOD.replace(NONCE, NONCE + "=="),
        GOOD.replace(NONCE, NONCE[:-1] + "B"),  # non-zero trailing bits
        GOOD.replace(NONCE, NONCE.replace("R", "+", 1)),
        GOOD.replace(SIG, crypto.b64encode(b"\x55" * 63)),
        GOOD.replace(SIG, SIG[:-1] + "B"),
        GOOD.replace(SIG, SIG + "A"),
        f"{AUTH_SCHEME} ts=1, device={DEVICE}, nonce={NONCE}, sig={SIG}",
        f"{AUTH_SCHEME} device={DEVICE}, ts=1, nonce={NONCE}",
        f"{AUTH_SCHEME} device={DEVICE}, ts=1, ts=1, nonce={NONCE}, sig={SIG}",
        f"{AUTH_SCHEME} device={DEVICE}, ts=1, nonce={NONCE}, sig={SIG}, extra=1",
        GOOD.replace(AUTH_SCHEME, "Bearer"),
        GOOD.replace(AUTH_SCHEME, "Relay-Ed25519x"),
        GOOD.replace("Relay", "Relаy"),  # a Cyrillic а
        GOOD + "\u00e9",
    ],
)
def test_anything_else_is_refused(value: object) -> None:
    assert parse_authorization(value) is None


def test_the_published_vectors_parse_and_verify() -> None:
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))
    device_key = vectors["keys"]["device"]["public_key"]
    for vector in vectors["http"]:
        value = (
            f"Relay-Ed25519 device={vector['device_id']}, ts={vector['ts']}, "
            f"nonce={vector['nonce']}, sig={vector['sig']}"
        )
        header = parse_authorization(value)
        assert header is not None
        message = header.signed_string(
            vector["server_key"],
            vector["method"],
            vector["path_and_query"],
            bytes.fromhex(vector["body_hex"]),
        )
        assert message.hex() == vector["string_hex"]
        assert crypto.verify(device_key, message, header.sig)


@pytest.mark.parametrize(
    ("raw_path", "query", "target"),
    [
        (b"/v1/devices", b"", "/v1/devices"),
        (b"/v1/devices", b"revoked=true", "/v1/devices?revoked=true"),
        (b"/v1/%64evices", b"revoked=%74rue&x", "/v1/%64evices?revoked=%74rue&x"),
        (b"/v1/d\xc3\xa9", b"", "/v1/dé"),
        (b"/v1/devices", b"a=1?b", "/v1/devices?a=1?b"),
    ],
)
def test_the_signed_target_is_the_request_line_as_sent(raw_path: bytes, query: bytes, target: str) -> None:
    assert signed_target(raw_path, query) == target


@pytest.mark.parametrize(
    ("raw_path", "query"),
    [
        (b"/v1/\xff", b""),
        (b"/v1/a b", b""),
        (b"/v1/a", b"x=\n"),
        (b"/v1/\x7f", b""),
        (b"v1/devices", b""),
        (b"", b""),
    ],
)
def test_a_target_that_cannot_have_been_signed_as_sent_is_refused(raw_path: bytes, query: bytes) -> None:
    assert signed_target(raw_path, query) is None


@pytest.mark.parametrize(
    ("ts", "fresh"),
    [(1000, True), (700, True), (699, False), (1300, True), (1301, False)],
)
def test_a_request_is_fresh_within_the_skew_bounds_both_included(ts: int, fresh: bool) -> None:
    assert is_fresh(ts, now_ms=1000, clock_skew_ms=300) is fresh


def test_a_nonce_is_remembered_until_the_request_stops_being_fresh() -> None:
    until = nonce_expires_at(1000, clock_skew_ms=300)
    assert until == 1300
    assert is_fresh(1000, now_ms=until, clock_skew_ms=300)
    assert not is_fresh(1000, now_ms=until + 1, clock_skew_ms=300)
