"""The handshake machines of §4.1: every transition, every refusal and its close code, the attacks."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable

import pytest

from relay import crypto
from relay.crypto import SigningKey
from relay.errors import (
    AccountDeleted,
    BadRequest,
    DeviceRevoked,
    ProtocolError,
    RelayError,
    Unauthorized,
    UnsupportedVersion,
)
from relay.protocol import messages
from relay.protocol.client_handshake import ClientHandshake, ClientState
from relay.protocol.handshake import (
    Authenticated,
    DeletedAccount,
    DeviceLookup,
    DeviceRecord,
    HandshakeState,
    HandshakeUsageError,
    ServerHandshake,
    UnknownDevice,
)

# The published test keys and the worked example (see tests/vectors/signatures-v1.json).
DEVICE_SEED = bytes(range(0x01, 0x21))
SERVER_SEED = bytes(range(0x21, 0x41))
DEVICE_PUBLIC_KEY = "ebVWLo_mVPlAeLES6KmLp5AfhTrmlb7X4OORC60ElmQ"
SERVER_PUBLIC_KEY = "5_FioQvsVZr-oZXk3OhLaVaNXSywlj60RsBoXisX8vA"
DEVICE_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
USER_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
SESSION_ID = "40414243-4445-4647-8849-4a4b4c4d4e4f"
CLIENT_NONCE = "ERERERERERERERERERERERERERERERERERERERERERE"
SERVER_NONCE = "IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiI"
SERVER_SIG = "forROKWqA561jVz5Zo5460Zo5qN_2_Ov-g-3tqbyDgKxOZ4_XaJ-HU_hbl-G8PBQQzsa_1plNi4BD0VU5rNMCg"
AUTH_SIG = "ldMZe8nFXWCoLlW_q7wo59LQfrxhb6fEW5654DAlFgry0TAYaOpBDqmNVg58fodhaXLXT-3HnQaUHNW5fI1SDQ"
NOW = 1_764_000_000_000

OTHER_DEVICE_ID = "9b2e4f10-5c3a-4d8e-8f1a-2b3c4d5e6f70"
ATTACKER_SEED = bytes(range(0x81, 0xA1))


class ScriptedRandom:
    """Hands out the given chunks in order; a test fails if the machine asks for something else."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = list(chunks)

    def __call__(self, n: int) -> bytes:
        chunk = self._chunks.pop(0)
        assert len(chunk) == n
        return chunk


def states(server: ServerHandshake, client: ClientHandshake) -> tuple[HandshakeState, ClientState]:
    # A function call, so that the type checker does not narrow the states across steps.
    return server.state, client.state


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


@pytest.fixture
def server_key() -> SigningKey:
    return SigningKey(SERVER_SEED)


@pytest.fixture
def device_key() -> SigningKey:
    return SigningKey(DEVICE_SEED)


def record(*, revoked: bool = False, public_key: bytes | str = DEVICE_PUBLIC_KEY) -> DeviceRecord:
    return DeviceRecord(user_id=USER_ID, public_key=public_key, name="Alice's phone", revoked=revoked)


def hello(**overrides: object) -> messages.Hello:
    fields: dict[str, object] = {"v": 1, "device_id": DEVICE_ID, "nonce": CLIENT_NONCE}
    fields.update(overrides)
    return messages.Hello(**fields)  # type: ignore[arg-type]


def auth_sig(key: SigningKey, challenge: messages.Challenge, *, device_id: str = DEVICE_ID) -> str:
    return key.sign(crypto.client_auth_string(challenge.session_id, device_id, CLIENT_NONCE, challenge.nonce))


def refused(excinfo: pytest.ExceptionInfo[RelayError], cls: type[RelayError], close: int) -> None:
    assert type(excinfo.value) is cls
    assert excinfo.value.close_code_for(in_handshake=True) == close


SAMPLES: dict[str, messages.ClientMessage] = {
    "hello": hello(),
    "auth": messages.Auth(sig=AUTH_SIG),
    "publish": messages.Publish(id="e1", stream="s", ts=NOW, body={}),
    "replay": messages.Replay(stream="s"),
    "replay.next": messages.ReplayNext(token="t"),
    "streams": messages.Streams(),
    "ping": messages.Ping(),
}


def server_in(state: HandshakeState, server_key: SigningKey, device_key: SigningKey) -> ServerHandshake:
    """A fresh server machine driven into ``state`` along the normal path."""
    hs = ServerHandshake(server_key, random_bytes=seeded(1))
    if state is HandshakeState.AWAIT_HELLO:
        return hs
    if state is HandshakeState.FAILED:
        with pytest.raises(UnsupportedVersion):
            hs.receive_hello(hello(v=2), now_ms=NOW)
        return hs
    challenge = hs.receive_hello(hello(), now_ms=NOW)
    if state is HandshakeState.AWAIT_AUTH:
        return hs
    hs.receive_auth(messages.Auth(sig=auth_sig(device_key, challenge)))
    if state is HandshakeState.AWAIT_DEVICE:
        return hs
    hs.complete(record())
    assert state is HandshakeState.AUTHENTICATED
    return hs


# --- the worked example and the happy path -------------------------------------------------------------


def test_the_worked_example_gives_the_published_values(
    server_key: SigningKey, device_key: SigningKey
) -> None:
    client = ClientHandshake(
        device_key, DEVICE_ID, SERVER_PUBLIC_KEY, random_bytes=ScriptedRandom(b"\x11" * 32)
    )
    server = ServerHandshake(server_key, random_bytes=ScriptedRandom(bytes(range(0x40, 0x50)), b"\x22" * 32))

    first = client.hello()
    assert first == messages.Hello(v=1, device_id=DEVICE_ID, nonce=CLIENT_NONCE)
    challenge = server.receive_hello(first, now_ms=NOW)
    assert challenge == messages.Challenge(
        session_id=SESSION_ID,
        nonce=SERVER_NONCE,
        server_time=NOW,
        server_key=SERVER_PUBLIC_KEY,
        server_sig=SERVER_SIG,
    )
    answer = client.receive_challenge(challenge)
    assert answer == messages.Auth(sig=AUTH_SIG)
    assert server.receive_auth(answer) == DEVICE_ID
    assert server.complete(record()) == Authenticated(
        user_id=USER_ID, device_id=DEVICE_ID, name="Alice's phone", session_id=SESSION_ID
    )


def test_server_and_client_machines_complete_a_handshake(
    server_key: SigningKey, device_key: SigningKey
) -> None:
    client = ClientHandshake(device_key, DEVICE_ID, server_key.public_key_b64, random_bytes=seeded(7))
    server = ServerHandshake(server_key, random_bytes=seeded(8))
    assert states(server, client) == (HandshakeState.AWAIT_HELLO, ClientState.READY)

    first = client.hello()
    assert states(server, client) == (HandshakeState.AWAIT_HELLO, ClientState.AWAIT_CHALLENGE)
    challenge = server.receive_hello(first, now_ms=NOW)
    assert states(server, client) == (HandshakeState.AWAIT_AUTH, ClientState.AWAIT_CHALLENGE)
    assert (server.session_id, server.device_id, server.authenticated) == (
        challenge.session_id,
        DEVICE_ID,
        None,
    )

    answer = client.receive_challenge(challenge)
    assert states(server, client) == (HandshakeState.AWAIT_AUTH, ClientState.AWAIT_WELCOME)
    assert client.session_id == challenge.session_id
    assert server.receive_auth(answer) == DEVICE_ID
    assert states(server, client) == (HandshakeState.AWAIT_DEVICE, ClientState.AWAIT_WELCOME)

    who = server.complete(record())
    assert states(server, client) == (HandshakeState.AUTHENTICATED, ClientState.AWAIT_WELCOME)
    assert server.authenticated == who
    welcome = server.welcome(
        server_time=NOW + 5,
        heartbeat_ms=20_000,
        limits=messages.Limits(),
        streams={"notes": 3},
        streams_truncated=False,
        online=[OTHER_DEVICE_ID],
    )
    assert client.receive_welcome(welcome) is welcome
    assert states(server, client) == (HandshakeState.AUTHENTICATED, ClientState.DONE)
    assert client.welcomed == welcome


def test_session_ids_are_lowercase_uuid4_and_nonces_fresh(server_key: SigningKey) -> None:
    seen = set()
    for seed in range(20):
        challenge = ServerHandshake(server_key, random_bytes=seeded(seed)).receive_hello(hello(), now_ms=NOW)
        assert challenge.session_id[14] == "4"
        assert challenge.session_id == challenge.session_id.lower()
        assert crypto.b64decode(challenge.nonce, 32) is not None
        seen.add((challenge.session_id, challenge.nonce))
    assert len(seen) == 20


def test_the_default_random_source_is_used_when_none_is_injected(server_key: SigningKey) -> None:
    a = ServerHandshake(server_key).receive_hello(hello(), now_ms=NOW)
    b = ServerHandshake(server_key).receive_hello(hello(), now_ms=NOW)
    assert a.session_id != b.session_id
    assert a.nonce != b.nonce


def test_the_challenge_is_the_same_work_for_an_unknown_device(server_key: SigningKey) -> None:
    # No lookup happens before the challenge: the machine cannot even tell the two apart.
    known = ServerHandshake(server_key, random_bytes=seeded(3)).receive_hello(hello(), now_ms=NOW)
    unknown = ServerHandshake(server_key, random_bytes=seeded(3)).receive_hello(
        hello(device_id=OTHER_DEVICE_ID), now_ms=NOW
    )
    assert known == unknown


# --- hello and auth validation --------------------------------------------------------------------------


@pytest.mark.parametrize("v", [-1, True, 1.0, "1", None, 2**53])
def test_a_version_that_is_not_a_protocol_integer_is_a_bad_request(server_key: SigningKey, v: object) -> None:
    hs = ServerHandshake(server_key)
    with pytest.raises(BadRequest) as excinfo:
        hs.receive_hello(hello(v=v), now_ms=NOW)
    refused(excinfo, BadRequest, 1002)
    assert excinfo.value.path == "$.v"


@pytest.mark.parametrize("v", [0, 2, 2**53 - 1])
def test_a_version_other_than_1_is_unsupported(server_key: SigningKey, v: object) -> None:
    hs = ServerHandshake(server_key)
    with pytest.raises(UnsupportedVersion) as excinfo:
        hs.receive_hello(hello(v=v), now_ms=NOW)
    refused(excinfo, UnsupportedVersion, 1002)
    assert excinfo.value.fields == {"supported": [1]}
    assert excinfo.value.to_wire()["supported"] == [1]
    assert hs.state is HandshakeState.FAILED


def test_the_version_is_checked_before_anything_else(server_key: SigningKey) -> None:
    with pytest.raises(UnsupportedVersion):
        ServerHandshake(server_key).receive_hello(hello(v=2, device_id="x", nonce="y"), now_ms=NOW)


@pytest.mark.parametrize(
    "device_id",
    [
        DEVICE_ID.upper(),
        "0F8FAD5B-d9cb-469f-a165-70867728950e",
        DEVICE_ID.replace("-", ""),
        "{" + DEVICE_ID + "}",
        "urn:uuid:" + DEVICE_ID,
        DEVICE_ID + "\n",
        DEVICE_ID[:-1],
        "",
        None,
        42,
    ],
)
def test_a_device_id_that_is_not_a_lowercase_uuid_is_a_bad_request(
    server_key: SigningKey, device_id: object
) -> None:
    hs = ServerHandshake(server_key)
    with pytest.raises(BadRequest) as excinfo:
        hs.receive_hello(hello(device_id=device_id), now_ms=NOW)
    refused(excinfo, BadRequest, 1002)
    assert excinfo.value.path == "$.device_id"
    assert hs.state is HandshakeState.FAILED


@pytest.mark.parametrize(
    "nonce",
    [
        crypto.b64encode(bytes(31)),
        crypto.b64encode(bytes(33)),
        CLIENT_NONCE[:-1] + "F",  # the same bytes, with non-zero trailing bits
        CLIENT_NONCE + "=",
        CLIENT_NONCE + "A",
        CLIENT_NONCE[:-1],
        crypto.b64encode(b"\xfb" * 32).replace("-", "+").replace("_", "/"),  # standard alphabet
        " " + CLIENT_NONCE,
        "",
        None,
        b"\x11" * 32,
    ],
)
def test_a_nonce_that_is_not_canonical_b64_of_32_bytes_is_a_bad_request(
    server_key: SigningKey, nonce: object
) -> None:
    hs = ServerHandshake(server_key)
    with pytest.raises(BadRequest) as excinfo:
        hs.receive_hello(hello(nonce=nonce), now_ms=NOW)
    refused(excinfo, BadRequest, 1002)
    assert excinfo.value.path == "$.nonce"


def test_the_non_canonical_nonce_sample_really_decodes_leniently() -> None:
    # Guard for the case above: a lenient decoder accepts it, the canonical one does not.
    import base64

    assert base64.urlsafe_b64decode(CLIENT_NONCE[:-1] + "F=") == b"\x11" * 32
    assert crypto.b64decode(CLIENT_NONCE[:-1] + "F") is None


@pytest.mark.parametrize(
    "sig",
    [
        crypto.b64encode(bytes(63)),
        crypto.b64encode(bytes(65)),
        AUTH_SIG[:-1] + "B",
        AUTH_SIG + "==",
        AUTH_SIG.replace("_", "/"),
        "",
        None,
        crypto.b64decode(AUTH_SIG),
    ],
)
def test_a_sig_that_is_not_canonical_b64_of_64_bytes_is_a_bad_request(
    server_key: SigningKey, device_key: SigningKey, sig: object
) -> None:
    hs = server_in(HandshakeState.AWAIT_AUTH, server_key, device_key)
    with pytest.raises(BadRequest) as excinfo:
        hs.receive_auth(messages.Auth(sig=sig))  # type: ignore[arg-type]
    refused(excinfo, BadRequest, 1002)
    assert excinfo.value.path == "$.sig"
    assert hs.state is HandshakeState.FAILED


def test_a_ref_on_hello_and_auth_is_accepted(server_key: SigningKey, device_key: SigningKey) -> None:
    hs = ServerHandshake(server_key, random_bytes=seeded(2))
    challenge = hs.receive_hello(hello(ref="r1"), now_ms=NOW)
    hs.receive_auth(messages.Auth(sig=auth_sig(device_key, challenge), ref="r2"))
    assert hs.complete(record()).device_id == DEVICE_ID


# --- messages out of order ------------------------------------------------------------------------------

_RECEIVERS: dict[str, Callable[[ServerHandshake, messages.ClientMessage], object]] = {
    "receive_hello": lambda hs, msg: hs.receive_hello(msg, now_ms=NOW),
    "receive_auth": lambda hs, msg: hs.receive_auth(msg),
}
_EXPECTED = {
    HandshakeState.AWAIT_HELLO: ("receive_hello", "hello"),
    HandshakeState.AWAIT_AUTH: ("receive_auth", "auth"),
}
_OUT_OF_ORDER = [
    (state, receiver, kind)
    for state in HandshakeState
    for receiver in _RECEIVERS
    for kind in SAMPLES
    if _EXPECTED.get(state) != (receiver, kind)
]


@pytest.mark.parametrize(("state", "receiver", "kind"), _OUT_OF_ORDER)
def test_any_message_out_of_order_is_a_protocol_error(
    server_key: SigningKey, device_key: SigningKey, state: HandshakeState, receiver: str, kind: str
) -> None:
    hs = server_in(state, server_key, device_key)
    with pytest.raises(ProtocolError) as excinfo:
        _RECEIVERS[receiver](hs, SAMPLES[kind])
    refused(excinfo, ProtocolError, 1002)
    assert hs.state is HandshakeState.FAILED


def test_a_second_hello_is_a_protocol_error(server_key: SigningKey) -> None:
    hs = ServerHandshake(server_key)
    hs.receive_hello(hello(), now_ms=NOW)
    with pytest.raises(ProtocolError):
        hs.receive_hello(hello(), now_ms=NOW)


def test_after_a_failure_the_machine_refuses_everything(
    server_key: SigningKey, device_key: SigningKey
) -> None:
    hs = ServerHandshake(server_key)
    with pytest.raises(BadRequest):
        hs.receive_hello(hello(nonce="short"), now_ms=NOW)
    with pytest.raises(ProtocolError):
        hs.receive_hello(hello(), now_ms=NOW)
    with pytest.raises(ProtocolError):
        hs.receive_auth(messages.Auth(sig=AUTH_SIG))
    with pytest.raises(HandshakeUsageError):
        hs.complete(record())
    assert hs.state is HandshakeState.FAILED


def test_after_a_refused_auth_the_machine_stays_failed(
    server_key: SigningKey, device_key: SigningKey
) -> None:
    hs = server_in(HandshakeState.AWAIT_DEVICE, server_key, device_key)
    with pytest.raises(Unauthorized):
        hs.complete(UnknownDevice())
    assert hs.authenticated is None
    with pytest.raises(HandshakeUsageError):
        hs.complete(record())
    with pytest.raises(HandshakeUsageError):
        hs.welcome(
            server_time=NOW,
            heartbeat_ms=1,
            limits=messages.Limits(),
            streams={},
            streams_truncated=False,
            online=[],
        )


@pytest.mark.parametrize(
    "state",
    [
        HandshakeState.AWAIT_HELLO,
        HandshakeState.AWAIT_AUTH,
        HandshakeState.AUTHENTICATED,
        HandshakeState.FAILED,
    ],
)
def test_complete_in_another_state_is_a_usage_error(
    server_key: SigningKey, device_key: SigningKey, state: HandshakeState
) -> None:
    hs = server_in(state, server_key, device_key)
    with pytest.raises(HandshakeUsageError):
        hs.complete(record())


@pytest.mark.parametrize(
    "state",
    [
        HandshakeState.AWAIT_HELLO,
        HandshakeState.AWAIT_AUTH,
        HandshakeState.AWAIT_DEVICE,
        HandshakeState.FAILED,
    ],
)
def test_welcome_before_authentication_is_a_usage_error(
    server_key: SigningKey, device_key: SigningKey, state: HandshakeState
) -> None:
    hs = server_in(state, server_key, device_key)
    with pytest.raises(HandshakeUsageError):
        hs.welcome(
            server_time=NOW,
            heartbeat_ms=1,
            limits=messages.Limits(),
            streams={},
            streams_truncated=False,
            online=[],
        )


def test_a_usage_error_is_not_a_relay_error() -> None:
    # A caller bug must surface as an internal error (1011), not be blamed on the peer.
    assert not issubclass(HandshakeUsageError, RelayError)
    assert issubclass(HandshakeUsageError, RuntimeError)


# --- the outcome at auth ---------------------------------------------------------------------------------


def _to_device(server_key: SigningKey, signer: SigningKey, *, device_id: str = DEVICE_ID) -> ServerHandshake:
    hs = ServerHandshake(server_key, random_bytes=seeded(5))
    challenge = hs.receive_hello(hello(device_id=device_id), now_ms=NOW)
    hs.receive_auth(messages.Auth(sig=auth_sig(signer, challenge, device_id=device_id)))
    return hs


@pytest.mark.parametrize("public_key", [DEVICE_PUBLIC_KEY, crypto.b64decode(DEVICE_PUBLIC_KEY)])
def test_a_valid_signature_of_a_known_device_authenticates(
    server_key: SigningKey, device_key: SigningKey, public_key: bytes | str
) -> None:
    hs = _to_device(server_key, device_key)
    who = hs.complete(record(public_key=public_key))
    assert (who.user_id, who.device_id, who.name) == (USER_ID, DEVICE_ID, "Alice's phone")
    assert who.session_id == hs.session_id


def test_an_unknown_device_is_unauthorized(server_key: SigningKey, device_key: SigningKey) -> None:
    hs = _to_device(server_key, device_key)
    with pytest.raises(Unauthorized) as excinfo:
        hs.complete(UnknownDevice())
    refused(excinfo, Unauthorized, 1008)
    assert hs.state is HandshakeState.FAILED


@pytest.mark.parametrize("valid", [True, False])
def test_a_deleted_account_is_account_deleted_whatever_the_signature(
    server_key: SigningKey, device_key: SigningKey, valid: bool
) -> None:
    hs = _to_device(server_key, device_key if valid else SigningKey(ATTACKER_SEED))
    with pytest.raises(AccountDeleted) as excinfo:
        hs.complete(DeletedAccount())
    refused(excinfo, AccountDeleted, 1008)


def test_a_revoked_device_with_a_valid_signature_is_device_revoked(
    server_key: SigningKey, device_key: SigningKey
) -> None:
    hs = _to_device(server_key, device_key)
    with pytest.raises(DeviceRevoked) as excinfo:
        hs.complete(record(revoked=True))
    refused(excinfo, DeviceRevoked, 1008)


def test_a_revoked_device_with_a_bad_signature_is_unauthorized(server_key: SigningKey) -> None:
    hs = _to_device(server_key, SigningKey(ATTACKER_SEED))
    with pytest.raises(Unauthorized) as excinfo:
        hs.complete(record(revoked=True))
    refused(excinfo, Unauthorized, 1008)


def test_a_device_id_of_another_user_signed_with_the_attackers_key_is_unauthorized(
    server_key: SigningKey,
) -> None:
    # The attacker claims the victim's device id and signs correctly, but with its own key.
    attacker = SigningKey(ATTACKER_SEED)
    hs = _to_device(server_key, attacker)
    with pytest.raises(Unauthorized) as excinfo:
        hs.complete(record())  # the victim's record, with the victim's key
    refused(excinfo, Unauthorized, 1008)


def test_a_signature_over_another_session_id_is_unauthorized(
    server_key: SigningKey, device_key: SigningKey
) -> None:
    hs = ServerHandshake(server_key, random_bytes=seeded(5))
    challenge = hs.receive_hello(hello(), now_ms=NOW)
    other_session = "00000000-0000-4000-8000-000000000000"
    sig = device_key.sign(crypto.client_auth_string(other_session, DEVICE_ID, CLIENT_NONCE, challenge.nonce))
    hs.receive_auth(messages.Auth(sig=sig))
    with pytest.raises(Unauthorized):
        hs.complete(record())


def test_a_signature_with_the_nonces_swapped_is_unauthorized(
    server_key: SigningKey, device_key: SigningKey
) -> None:
    hs = ServerHandshake(server_key, random_bytes=seeded(5))
    challenge = hs.receive_hello(hello(), now_ms=NOW)
    swapped = crypto.client_auth_string(challenge.session_id, DEVICE_ID, challenge.nonce, CLIENT_NONCE)
    hs.receive_auth(messages.Auth(sig=device_key.sign(swapped)))
    with pytest.raises(Unauthorized):
        hs.complete(record())


def test_a_signature_for_another_device_id_is_unauthorized(
    server_key: SigningKey, device_key: SigningKey
) -> None:
    hs = ServerHandshake(server_key, random_bytes=seeded(5))
    challenge = hs.receive_hello(hello(), now_ms=NOW)
    hs.receive_auth(messages.Auth(sig=auth_sig(device_key, challenge, device_id=OTHER_DEVICE_ID)))
    with pytest.raises(Unauthorized):
        hs.complete(record())


def test_the_server_hello_string_signed_by_the_device_is_not_an_auth(
    server_key: SigningKey, device_key: SigningKey
) -> None:
    # Domain separation: a signature over another signed string never verifies as an auth.
    hs = ServerHandshake(server_key, random_bytes=seeded(5))
    challenge = hs.receive_hello(hello(), now_ms=NOW)
    sig = device_key.sign(crypto.server_hello_string(challenge.session_id, CLIENT_NONCE, challenge.nonce))
    hs.receive_auth(messages.Auth(sig=sig))
    with pytest.raises(Unauthorized):
        hs.complete(record())


def test_an_auth_replayed_from_an_earlier_session_is_unauthorized(
    server_key: SigningKey, device_key: SigningKey
) -> None:
    first = ServerHandshake(server_key, random_bytes=seeded(10))
    challenge = first.receive_hello(hello(), now_ms=NOW)
    old_auth = messages.Auth(sig=auth_sig(device_key, challenge))
    first.receive_auth(old_auth)
    first.complete(record())

    # The eavesdropper replays the same hello (same client nonce) and the recorded auth.
    second = ServerHandshake(server_key, random_bytes=seeded(11))
    second.receive_hello(hello(), now_ms=NOW + 1000)
    second.receive_auth(old_auth)
    with pytest.raises(Unauthorized):
        second.complete(record())


@pytest.mark.parametrize("public_key", [b"", bytes(32), "not b64", crypto.b64encode(bytes(33))])
def test_a_malformed_stored_key_is_unauthorized_not_a_crash(
    server_key: SigningKey, device_key: SigningKey, public_key: bytes | str
) -> None:
    hs = _to_device(server_key, device_key)
    with pytest.raises(Unauthorized):
        hs.complete(record(public_key=public_key))


@pytest.mark.parametrize(
    ("lookup", "expected_key"),
    [
        (UnknownDevice(), crypto.DUMMY_PUBLIC_KEY),
        (DeletedAccount(), crypto.DUMMY_PUBLIC_KEY),
        (record(), DEVICE_PUBLIC_KEY),
        (record(revoked=True), DEVICE_PUBLIC_KEY),
    ],
)
def test_complete_verifies_exactly_one_signature_whatever_the_lookup(
    server_key: SigningKey,
    device_key: SigningKey,
    monkeypatch: pytest.MonkeyPatch,
    lookup: DeviceLookup,
    expected_key: bytes | str,
) -> None:
    calls: list[object] = []
    real = crypto.verify

    def counting(public_key: bytes | str, message: bytes | str, signature: bytes | str) -> bool:
        calls.append(public_key)
        return real(public_key, message, signature)

    hs = _to_device(server_key, device_key)
    monkeypatch.setattr(crypto, "verify", counting)
    with contextlib.suppress(RelayError):
        hs.complete(lookup)
    assert calls == [expected_key]


# --- welcome ----------------------------------------------------------------------------------------------


def test_welcome_carries_the_authenticated_identity_and_what_the_gateway_read(
    server_key: SigningKey, device_key: SigningKey
) -> None:
    hs = server_in(HandshakeState.AUTHENTICATED, server_key, device_key)
    streams = {"a": 1, "b/c": 7}
    limits = messages.Limits(replay_page=50)
    welcome = hs.welcome(
        server_time=NOW + 9,
        heartbeat_ms=15_000,
        limits=limits,
        streams=streams,
        streams_truncated=True,
        online=[OTHER_DEVICE_ID, DEVICE_ID, OTHER_DEVICE_ID],
    )
    assert welcome == messages.Welcome(
        session_id=hs.session_id or "",
        user_id=USER_ID,
        device_id=DEVICE_ID,
        name="Alice's phone",
        server_time=NOW + 9,
        heartbeat_ms=15_000,
        limits=limits,
        streams={"a": 1, "b/c": 7},
        streams_truncated=True,
        online=[OTHER_DEVICE_ID],  # itself and repeats left out
    )
    streams["z"] = 1
    assert "z" not in welcome.streams


# --- the client machine ----------------------------------------------------------------------------------


def _client(device_key: SigningKey, pinned: str = SERVER_PUBLIC_KEY) -> ClientHandshake:
    return ClientHandshake(device_key, DEVICE_ID, pinned, random_bytes=ScriptedRandom(b"\x11" * 32))


def _challenge(**overrides: object) -> messages.Challenge:
    fields: dict[str, object] = {
        "session_id": SESSION_ID,
        "nonce": SERVER_NONCE,
        "server_time": NOW,
        "server_key": SERVER_PUBLIC_KEY,
        "server_sig": SERVER_SIG,
    }
    fields.update(overrides)
    return messages.Challenge(**fields)  # type: ignore[arg-type]


def test_the_client_verifies_the_servers_challenge_signature(device_key: SigningKey) -> None:
    client = _client(device_key)
    client.hello()
    assert client.receive_challenge(_challenge()) == messages.Auth(sig=AUTH_SIG)


@pytest.mark.parametrize(
    "overrides",
    [
        {"server_sig": crypto.b64encode(bytes(64))},
        {"server_sig": "garbage"},
        {"session_id": "00000000-0000-4000-8000-000000000000"},  # the signature covers the session id
        {"nonce": crypto.b64encode(b"\x23" * 32)},  # ... and the server nonce
        {"session_id": SESSION_ID.upper()},
        {"nonce": SERVER_NONCE[:-1] + "J"},  # non-canonical
        {"server_key": crypto.b64encode(bytes(32))},  # not the pinned key
    ],
)
def test_the_client_refuses_a_challenge_that_does_not_verify(
    device_key: SigningKey, overrides: dict[str, object]
) -> None:
    client = _client(device_key)
    client.hello()
    with pytest.raises(Unauthorized) as excinfo:
        client.receive_challenge(_challenge(**overrides))
    refused(excinfo, Unauthorized, 1008)
    assert client.state is ClientState.FAILED


def test_the_client_refuses_an_impostor_server_signing_with_its_own_key(device_key: SigningKey) -> None:
    impostor = SigningKey(ATTACKER_SEED)
    server = ServerHandshake(impostor, random_bytes=seeded(4))
    client = ClientHandshake(device_key, DEVICE_ID, SERVER_PUBLIC_KEY, random_bytes=seeded(3))
    challenge = server.receive_hello(client.hello(), now_ms=NOW)
    assert challenge.server_key == impostor.public_key_b64
    with pytest.raises(Unauthorized):
        client.receive_challenge(challenge)
    # Also when it claims the pinned key but cannot sign with it.
    client = ClientHandshake(device_key, DEVICE_ID, SERVER_PUBLIC_KEY, random_bytes=seeded(3))
    server = ServerHandshake(impostor, random_bytes=seeded(4))
    challenge = server.receive_hello(client.hello(), now_ms=NOW)
    with pytest.raises(Unauthorized):
        client.receive_challenge(
            _challenge(
                session_id=challenge.session_id, nonce=challenge.nonce, server_sig=challenge.server_sig
            )
        )


def test_the_client_refuses_a_challenge_for_another_client_nonce(
    server_key: SigningKey, device_key: SigningKey
) -> None:
    client = ClientHandshake(device_key, DEVICE_ID, SERVER_PUBLIC_KEY, random_bytes=seeded(3))
    client.hello()
    # A man in the middle relays a challenge the server made for a different hello.
    challenge = ServerHandshake(server_key, random_bytes=seeded(4)).receive_hello(hello(), now_ms=NOW)
    with pytest.raises(Unauthorized):
        client.receive_challenge(challenge)


def test_the_client_raises_the_servers_error(device_key: SigningKey) -> None:
    client = _client(device_key)
    client.hello()
    error = messages.Error(
        code="unsupported_version", message="Unsupported protocol version", fields={"supported": [1], "x": 1}
    )
    with pytest.raises(UnsupportedVersion) as excinfo:
        client.receive_challenge(error)
    assert excinfo.value.fields == {"supported": [1]}
    assert client.state is ClientState.FAILED


def test_the_client_refuses_other_messages_out_of_order(device_key: SigningKey) -> None:
    client = _client(device_key)
    client.hello()
    with pytest.raises(ProtocolError):
        client.receive_challenge(messages.Pong(server_time=NOW))
    with pytest.raises(ProtocolError):
        client.receive_challenge(_challenge())  # failed machines refuse everything

    client = _client(device_key)
    with pytest.raises(ProtocolError):
        client.receive_challenge(_challenge())  # before hello
    client = _client(device_key)
    client.hello()
    with pytest.raises(ProtocolError):
        client.receive_welcome(_welcome())  # before the challenge
    with pytest.raises(HandshakeUsageError):
        client.hello()


def _welcome(**overrides: object) -> messages.Welcome:
    fields: dict[str, object] = {
        "session_id": SESSION_ID,
        "user_id": USER_ID,
        "device_id": DEVICE_ID,
        "name": "Alice's phone",
        "server_time": NOW,
        "heartbeat_ms": 20_000,
        "limits": messages.Limits(),
        "streams": {},
        "streams_truncated": False,
        "online": [],
    }
    fields.update(overrides)
    return messages.Welcome(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [{"session_id": "00000000-0000-4000-8000-000000000000"}, {"device_id": OTHER_DEVICE_ID}],
)
def test_the_client_refuses_a_welcome_for_another_session_or_device(
    device_key: SigningKey, overrides: dict[str, object]
) -> None:
    client = _client(device_key)
    client.hello()
    client.receive_challenge(_challenge())
    with pytest.raises(ProtocolError):
        client.receive_welcome(_welcome(**overrides))
    assert client.state is ClientState.FAILED


def test_the_client_accepts_the_matching_welcome(device_key: SigningKey) -> None:
    client = _client(device_key)
    client.hello()
    client.receive_challenge(_challenge())
    assert client.receive_welcome(_welcome()).user_id == USER_ID
    with pytest.raises(ProtocolError):
        client.receive_welcome(_welcome())


@pytest.mark.parametrize(
    ("device_id", "server_key"),
    [(DEVICE_ID.upper(), SERVER_PUBLIC_KEY), (DEVICE_ID, SERVER_PUBLIC_KEY + "A"), (DEVICE_ID, "")],
)
def test_the_client_machine_needs_a_valid_device_id_and_pinned_key(
    device_key: SigningKey, device_id: str, server_key: str
) -> None:
    with pytest.raises(ValueError, match="must be"):
        ClientHandshake(device_key, device_id, server_key)


@pytest.mark.parametrize("chunks", [(bytes(15),), (bytes(16), bytes(31))])
def test_a_random_source_that_returns_the_wrong_length_is_a_usage_error(
    server_key: SigningKey, chunks: tuple[bytes, ...]
) -> None:
    def short(n: int) -> bytes:
        return chunks_left.pop(0)

    chunks_left = list(chunks)
    with pytest.raises(HandshakeUsageError):
        ServerHandshake(server_key, random_bytes=short).receive_hello(hello(), now_ms=NOW)
