"""Attacks on the handshake (item 4; PROTOCOL.md §4.1) and on the keys and signatures of §1-§3.

A signature must bind everything it covers: the session (a fresh server nonce), the device, both
nonces in their places, and its own label; an attacker replaying, reflecting or re-targeting one gets
``unauthorized`` (1008). Keys, nonces and signatures are accepted only in the canonical base64url of
exactly their length (§1): every other length, and every other spelling of the very same bytes
(padding, the standard alphabet, trailing bits, white space), is refused as malformed, so that no
second spelling of a valid signature or an enrolled key exists. Ed25519 itself is held to libsodium's
strict rules: a malleated ``S`` and a small-order key never verify.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
from security_support import CASES, STEP_S, Closed, LiveServer, Wire, check_close, open_wire

from relay import crypto
from relay.client import DeviceCredentials, RelayHttp, SignedAuth

#: The order of the Ed25519 base point: adding it to S gives a second, non-canonical, valid-looking S.
L = 2**252 + 27742317777372353535851937790883648493
LENGTHS = range(101)

Auth = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def hello_of(device_id: str, nonce: str | None = None) -> dict[str, Any]:
    return {
        "type": "hello",
        "v": 1,
        "device_id": device_id,
        "nonce": crypto.random_nonce() if nonce is None else nonce,
    }


def signed_auth(creds: DeviceCredentials, *, session_id: str | None = None, swap: bool = False) -> Auth:
    """An ``auth`` whose signature is made with ``creds``' key over the client string of §4.1, with
    another session id or with the two nonces swapped when asked."""

    def auth(challenge: dict[str, Any], hello: dict[str, Any]) -> dict[str, Any]:
        client_nonce, server_nonce = hello["nonce"], challenge["nonce"]
        if swap:
            client_nonce, server_nonce = server_nonce, client_nonce
        message = crypto.client_auth_string(
            session_id or challenge["session_id"], hello["device_id"], client_nonce, server_nonce
        )
        return {"type": "auth", "sig": creds.key.sign(message)}

    return auth


async def attempt(
    server: LiveServer, hello: dict[str, Any], auth: Auth
) -> tuple[dict[str, Any], list[dict[str, Any]], Closed]:
    """One handshake: ``hello``, then ``auth(challenge, hello)``; the challenge, then the frames and
    the close that followed (the welcome among them if it worked, the session then closed by us)."""
    with trio.fail_after(STEP_S):
        wire = await open_wire(server)
        try:
            await wire.send_json(hello)
            challenge = await wire.next_frame()
            assert not isinstance(challenge, Closed), challenge
            assert challenge["type"] == "challenge", challenge
            await wire.send_json(auth(challenge, hello))
            first = await wire.next_frame()
            if not isinstance(first, Closed) and first["type"] == "welcome":
                return challenge, [first], Closed(None, None)
            frames, closed = await wire.until_closed()
            return challenge, ([] if isinstance(first, Closed) else [first]) + frames, closed
        finally:
            await wire.aclose()


def refused(frames: list[dict[str, Any]], closed: Closed) -> tuple[str, str | None]:
    """The code the handshake was refused with (checked against its close), and the path."""
    code = check_close(frames, closed.code, closed.reason, in_handshake=True)
    return code, frames[-1].get("path")


async def test_a_signature_never_verifies_for_another_session_device_order_of_nonces_or_label(
    server: LiveServer,
) -> None:
    a1, a2 = await server.devices(2)
    captured: dict[str, Any] = {}

    def capture(challenge: dict[str, Any], hello: dict[str, Any]) -> dict[str, Any]:
        captured.update(hello=hello, auth=signed_auth(a1)(challenge, hello), challenge=challenge)
        return captured["auth"]

    _, frames, _ = await attempt(server, hello_of(a1.device_id), capture)
    assert frames[0]["type"] == "welcome"  # the real thing works

    def replayed(challenge: dict[str, Any], hello: dict[str, Any]) -> dict[str, Any]:
        return captured["auth"]

    def reflected(challenge: dict[str, Any], hello: dict[str, Any]) -> dict[str, Any]:
        return {"type": "auth", "sig": challenge["server_sig"]}  # the server's own signature, sent back

    def server_label(challenge: dict[str, Any], hello: dict[str, Any]) -> dict[str, Any]:
        message = crypto.server_hello_string(challenge["session_id"], hello["nonce"], challenge["nonce"])
        return {"type": "auth", "sig": a1.key.sign(message)}

    def trailing_newline(challenge: dict[str, Any], hello: dict[str, Any]) -> dict[str, Any]:
        message = crypto.client_auth_string(
            challenge["session_id"], hello["device_id"], hello["nonce"], challenge["nonce"]
        )
        return {"type": "auth", "sig": a1.key.sign(message + b"\n")}

    attacks: dict[str, tuple[dict[str, Any], Auth]] = {
        "an auth captured from another session": (hello_of(a1.device_id), replayed),
        "the other session's hello and auth, byte for byte": (captured["hello"], replayed),
        "a signature over another session id": (
            hello_of(a1.device_id),
            signed_auth(a1, session_id="40414243-4445-4647-8849-4a4b4c4d4e4f"),
        ),
        "the nonces swapped in the signed string": (hello_of(a1.device_id), signed_auth(a1, swap=True)),
        "the server's signature reflected": (hello_of(a1.device_id), reflected),
        "the server's label signed by the device": (hello_of(a1.device_id), server_label),
        "a trailing newline in the signed string": (hello_of(a1.device_id), trailing_newline),
        "a sibling device's id with this device's key": (hello_of(a2.device_id), signed_auth(a1)),
        "the same client nonce as the captured session": (
            hello_of(a1.device_id, captured["hello"]["nonce"]),
            replayed,
        ),
    }
    for name, (hello, auth) in attacks.items():
        challenge, frames, closed = await attempt(server, hello, auth)
        assert refused(frames, closed) == ("unauthorized", None), name
        assert challenge["nonce"] != captured["challenge"]["nonce"], name  # the server's nonce is fresh
        CASES["handshake attacks"] += 1


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def with_a_trailing_bit(text: str) -> str:
    """The same bytes with the lowest unused bit of the last character set (a lenient decoder's twin).

    For lengths that leave unused bits (keys and nonces: 2, signatures: 4), canonical text has them zero.
    """
    return text[:-1] + B64URL[B64URL.index(text[-1]) | 1]


def with_dashes(raw_length: int) -> bytes:
    """Bytes whose base64url holds ``-`` and ``_`` (so that their standard spelling differs)."""
    return (b"\xfb\xff\xbf" * raw_length)[:raw_length]


#: Other spellings of the bytes a signature encodes, each accepted by some lenient decoder.
SPELLINGS: dict[str, Callable[[str], str]] = {
    "padded": lambda sig: sig + "==",
    "one pad": lambda sig: sig + "=",
    "trailing bits set": with_a_trailing_bit,
    "a space inside": lambda sig: sig[:40] + " " + sig[40:],
    "a newline at the end": lambda sig: sig + "\n",
    "a leading space": lambda sig: " " + sig,
    "standard base64": lambda sig: (
        sig.replace("-", "+").replace("_", "/") if "-" in sig or "_" in sig else sig + "+"
    ),
    "percent-encoded": lambda sig: (
        sig.replace("-", "%2D").replace("_", "%5F") if "-" in sig or "_" in sig else sig + "%"
    ),
}


async def test_only_the_canonical_spelling_of_a_valid_signature_authenticates(server: LiveServer) -> None:
    (a,) = await server.devices(1)
    outcomes: dict[str, tuple[str, str | None]] = {}
    for name, respell in SPELLINGS.items():  # each attempt respells its own session's valid signature

        def spelled(
            challenge: dict[str, Any], hello: dict[str, Any], respell: Callable[[str], str] = respell
        ) -> dict[str, Any]:
            return {"type": "auth", "sig": respell(signed_auth(a)(challenge, hello)["sig"])}

        _, frames, closed = await attempt(server, hello_of(a.device_id), spelled)
        outcomes[name] = refused(frames, closed)
        CASES["handshake attacks"] += 1

    def malleated(challenge: dict[str, Any], hello: dict[str, Any]) -> dict[str, Any]:
        raw = crypto.b64decode(signed_auth(a)(challenge, hello)["sig"], 64)
        assert raw is not None
        s = int.from_bytes(raw[32:], "little") + L  # S + L: the same point equation, a non-canonical S
        return {"type": "auth", "sig": crypto.b64encode(raw[:32] + s.to_bytes(32, "little"))}

    _, frames, closed = await attempt(server, hello_of(a.device_id), malleated)
    CASES["handshake attacks"] += 1
    assert refused(frames, closed) == ("unauthorized", None)
    assert outcomes == {name: ("bad_request", "$.sig") for name in outcomes}, outcomes
    _, frames, _ = await attempt(server, hello_of(a.device_id), signed_auth(a))
    assert frames[0]["type"] == "welcome"


async def test_signatures_and_nonces_of_every_length_but_the_right_one_are_malformed(
    server: LiveServer,
) -> None:
    (a,) = await server.devices(1)
    sig_outcomes, nonce_outcomes = {}, {}
    for length in LENGTHS:

        def sized(challenge: dict[str, Any], hello: dict[str, Any], length: int = length) -> dict[str, Any]:
            return {"type": "auth", "sig": crypto.b64encode(bytes(range(length)))}

        _, frames, closed = await attempt(server, hello_of(a.device_id), sized)
        sig_outcomes[length] = refused(frames, closed)
        with trio.fail_after(STEP_S):
            wire = await open_wire(server)
            await wire.send_json(hello_of(a.device_id, crypto.b64encode(b"\x11" * length)))
            frames, closed = await _rest(wire)
        nonce_outcomes[length] = (
            "challenge" if frames and frames[0]["type"] == "challenge" else refused(frames, closed)
        )
        CASES["handshake attacks"] += 2
    assert sig_outcomes == {
        n: ("unauthorized", None) if n == 64 else ("bad_request", "$.sig") for n in LENGTHS
    }
    assert nonce_outcomes == {n: "challenge" if n == 32 else ("bad_request", "$.nonce") for n in LENGTHS}


async def _rest(wire: Wire) -> tuple[list[dict[str, Any]], Closed]:
    """The next frame, and if it is not a challenge, everything until the close."""
    try:
        first = await wire.next_frame()
        if isinstance(first, Closed):
            return [], first
        if first["type"] == "challenge":
            return [first], Closed(None, None)
        frames, closed = await wire.until_closed()
        return [first, *frames], closed
    finally:
        await wire.aclose()


async def test_malformed_spellings_of_a_real_device_id_or_nonce_in_hello_are_refused_before_any_challenge(
    server: LiveServer,
) -> None:
    (a,) = await server.devices(1)
    nonce = crypto.b64encode(with_dashes(crypto.WS_NONCE_BYTES))
    hellos = {
        "an upper-case device id": hello_of(a.device_id.upper()),
        "a device id in braces": hello_of("{" + a.device_id + "}"),
        "a URN": hello_of("urn:uuid:" + a.device_id),
        "no hyphens": hello_of(a.device_id.replace("-", "")),
        "a trailing space": hello_of(a.device_id + " "),
        "a padded nonce": hello_of(a.device_id, nonce + "="),
        "a nonce in standard base64": hello_of(a.device_id, nonce.replace("-", "+").replace("_", "/")),
        "a nonce with its trailing bits set": hello_of(a.device_id, with_a_trailing_bit(nonce)),
        "the canonical nonce (the control)": hello_of(a.device_id, nonce),
    }
    outcomes = {}
    for name, hello in hellos.items():
        with trio.fail_after(STEP_S):
            wire = await open_wire(server)
            await wire.send_json(hello)
            frames, closed = await _rest(wire)
        outcomes[name] = (
            refused(frames, closed)[0] if not frames or frames[0]["type"] != "challenge" else "challenge"
        )
        CASES["handshake attacks"] += 1
    control = outcomes.pop("the canonical nonce (the control)")
    assert control == "challenge"
    assert outcomes == {name: "bad_request" for name in outcomes}, outcomes


# --- keys and signatures over HTTP (§2, §3) ----------------------------------------------------------


async def test_http_signatures_and_nonces_of_every_length_are_one_and_the_same_401(
    server: LiveServer,
) -> None:
    (a,) = await server.devices(1)
    answers = set()
    async with httpx.AsyncClient(base_url=server.url, timeout=STEP_S) as http:
        for length in LENGTHS:
            for nonce, sig in ((bytes(16), bytes(range(length))), (bytes(range(length)), bytes(64))):
                header = (
                    f"Relay-Ed25519 device={a.device_id}, ts={server.now_ms()}, "
                    f"nonce={crypto.b64encode(nonce)}, sig={crypto.b64encode(sig)}"
                )
                with trio.fail_after(STEP_S):
                    response = await http.get("/v1/devices", headers={"Authorization": header})
                error = response.json()["error"]
                answers.add(
                    (
                        response.status_code,
                        response.headers["www-authenticate"],
                        error["code"],
                        error["message"],
                    )
                )
                CASES["malformed keys and signatures (HTTP)"] += 1
    assert answers == {(401, "Relay-Ed25519", "unauthorized", "Unauthorized")}


def enroll_body(
    token: str, key: crypto.SigningKey, *, public_key: str | None = None, sig: str | None = None
) -> dict[str, str]:
    spelled = public_key if public_key is not None else key.public_key_b64
    return {
        "token": token,
        "public_key": spelled,
        "name": "probe",
        "sig": sig if sig is not None else key.sign(crypto.enroll_string(token, spelled, "probe")),
    }


async def test_public_keys_of_every_length_small_order_and_respelled_ones_never_enrol(
    server: LiveServer,
) -> None:
    (a,) = await server.devices(1)
    token = await server.token(a.user_id)
    key = crypto.SigningKey.generate()
    while (
        "-" not in key.public_key_b64 and "_" not in key.public_key_b64
    ):  # so that its standard spelling differs
        key = crypto.SigningKey.generate()
    enrolled_key = a.key.public_key_b64
    identity = b"\x01" + bytes(31)  # a small-order point: with R = identity and S = 0 it "verifies" anything
    cases: dict[str, dict[str, str]] = {
        f"a key of {n} bytes": enroll_body(token, key, public_key=crypto.b64encode(bytes(range(1, n + 1))))
        for n in LENGTHS
    }
    cases.update(
        {
            "the identity point, with the signature that fools a lax verifier": enroll_body(
                token, key, public_key=crypto.b64encode(identity), sig=crypto.b64encode(identity + bytes(32))
            ),
            "the all-zero key": enroll_body(
                token, key, public_key=crypto.b64encode(bytes(32)), sig=crypto.b64encode(bytes(64))
            ),
            "an enrolled key with its trailing bits set": enroll_body(
                token, key, public_key=with_a_trailing_bit(enrolled_key)
            ),
            "an enrolled key, padded": enroll_body(token, key, public_key=enrolled_key + "="),
            "a fresh key in standard base64": enroll_body(
                token, key, public_key=base64.b64encode(key.public_key).decode().rstrip("=")
            ),
            "a fresh key with its trailing bits set": enroll_body(
                token, key, public_key=with_a_trailing_bit(key.public_key_b64)
            ),
        }
    )
    paths: dict[str, object] = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=STEP_S) as http:
        for name, body in cases.items():
            with trio.fail_after(STEP_S):
                response = await http.post("/v1/enroll", content=json.dumps(body))
            assert response.status_code == 400, (name, response.status_code, response.text)
            paths[name] = response.json()["error"]["path"]
            CASES["malformed keys and signatures (HTTP)"] += 1
        async with signed_http(a) as signed:
            for n in LENGTHS:
                with trio.fail_after(STEP_S):
                    response = await pairing_answer(signed, {"public_key": crypto.b64encode(bytes(n))})
                paths[f"pairing for a key of {n} bytes"] = response
                CASES["malformed keys and signatures (HTTP)"] += 1
    expected: dict[str, object] = {
        f"a key of {n} bytes": "$.sig" if n == 32 else "$.public_key" for n in LENGTHS
    }  # 32 random bytes are a key of the right size: the signature, made by another key, fails
    expected.update(
        {
            "the identity point, with the signature that fools a lax verifier": "$.sig",
            "the all-zero key": "$.sig",
            "an enrolled key with its trailing bits set": "$.public_key",
            "an enrolled key, padded": "$.public_key",
            "a fresh key in standard base64": "$.public_key",
            "a fresh key with its trailing bits set": "$.public_key",
        }
    )
    expected.update({f"pairing for a key of {n} bytes": 201 if n == 32 else "$.public_key" for n in LENGTHS})
    assert paths == expected
    async with RelayHttp(server.url) as http:  # no refusal consumed the token
        device = await http.enroll(token, "after all that", key=key)
    assert device.user_id == a.user_id


@asynccontextmanager
async def signed_http(creds: DeviceCredentials) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=creds.url, auth=SignedAuth(creds), timeout=STEP_S) as client:
        yield client


async def pairing_answer(client: httpx.AsyncClient, body: object) -> object:
    """201, or the path of the 400."""
    response = await client.post("/v1/pairings", json=body)
    if response.status_code == 201:
        return 201
    assert response.status_code == 400, response.text
    return response.json()["error"]["path"]
