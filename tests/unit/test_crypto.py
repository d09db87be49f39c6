"""relay.crypto: keys, the signed strings of §2, §3, §4.1 (known answers), verification, hashes.

The expected strings and signatures below were computed once with independent code (strings built by
hand, Ed25519 by the OpenSSL 3 command line) and pasted here: a change of any signed format fails.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import crypto
from relay.crypto import SigningKey, verify

VECTORS = Path(__file__).parent.parent / "vectors" / "signatures-v1.json"

# --- the published test keys (never use them for anything real) ---------------------------------------
DEVICE_SEED = bytes(range(0x01, 0x21))
DEVICE_PUBLIC_KEY = "ebVWLo_mVPlAeLES6KmLp5AfhTrmlb7X4OORC60ElmQ"
SERVER_SEED = bytes(range(0x21, 0x41))
SERVER_PUBLIC_KEY = "5_FioQvsVZr-oZXk3OhLaVaNXSywlj60RsBoXisX8vA"

DEVICE_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
SESSION_ID = "40414243-4445-4647-8849-4a4b4c4d4e4f"
CLIENT_NONCE = "ERERERERERERERERERERERERERERERERERERERERERE"  # 32 bytes of 0x11
SERVER_NONCE = "IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiI"  # 32 bytes of 0x22
TOKEN = "MzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzM"  # 32 bytes of 0x33
HTTP_NONCE = "RERERERERERERERERERERA"  # 16 bytes of 0x44

ENROLL_STRING = (
    b"relay-enroll-v1\n"
    b"MzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzM\n"
    b"ebVWLo_mVPlAeLES6KmLp5AfhTrmlb7X4OORC60ElmQ\n"
    b"Alice's phone"
)
ENROLL_SIG = "nJLvji7Bq0wQjeaWNAOSr4Z63oUwQZGXQCXiqpnFm2PpnkYE3PmsvlJmYIQtoj8vQxRk8-dh29_txkyOEUSTAQ"

HTTP_STRING = (
    b"relay-http-v1\n"
    b"5_FioQvsVZr-oZXk3OhLaVaNXSywlj60RsBoXisX8vA\n"
    b"0f8fad5b-d9cb-469f-a165-70867728950e\n"
    b"POST\n"
    b"/v1/pairings\n"
    b"1764000000000\n"
    b"RERERERERERERERERERERA\n"
    b"44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
)
HTTP_SIG = "_VEuTZChQ3ItUeLaysr7bYX58idMc468s-QND4jjkV5Wu1HKKwA9zS16GIWxywX_iXb7woRGE4mgGHA5rjrTCA"

SERVER_HELLO_STRING = (
    b"relay-server-hello-v1\n"
    b"40414243-4445-4647-8849-4a4b4c4d4e4f\n"
    b"ERERERERERERERERERERERERERERERERERERERERERE\n"
    b"IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiI"
)
SERVER_SIG = "forROKWqA561jVz5Zo5460Zo5qN_2_Ov-g-3tqbyDgKxOZ4_XaJ-HU_hbl-G8PBQQzsa_1plNi4BD0VU5rNMCg"

CLIENT_AUTH_STRING = (
    b"relay-client-auth-v1\n"
    b"40414243-4445-4647-8849-4a4b4c4d4e4f\n"
    b"0f8fad5b-d9cb-469f-a165-70867728950e\n"
    b"ERERERERERERERERERERERERERERERERERERERERERE\n"
    b"IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiI"
)
AUTH_SIG = "ldMZe8nFXWCoLlW_q7wo59LQfrxhb6fEW5654DAlFgry0TAYaOpBDqmNVg58fodhaXLXT-3HnQaUHNW5fI1SDQ"

# RFC 8032 §7.1, tests 1 and 2.
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
        "d25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c"
        "387b2eaeb4302aeeb00d291612bb0c00",
    ),
]

#: The order of the Ed25519 group; adding it to S gives a non-canonical signature of the same value.
ED25519_L = 2**252 + 27742317777372353535851937790883648493


@pytest.fixture
def device() -> SigningKey:
    return SigningKey(DEVICE_SEED)


@pytest.fixture
def server() -> SigningKey:
    return SigningKey(SERVER_SEED)


# --- keys --------------------------------------------------------------------------------------------


def test_published_test_keys_derive_the_published_public_keys(device: SigningKey, server: SigningKey) -> None:
    assert device.public_key_b64 == DEVICE_PUBLIC_KEY
    assert crypto.public_key_b64(server) == SERVER_PUBLIC_KEY
    assert crypto.b64encode(device.public_key) == DEVICE_PUBLIC_KEY
    assert device.seed == DEVICE_SEED


def test_a_key_loads_from_the_b64_of_its_seed(device: SigningKey) -> None:
    loaded = SigningKey.from_seed_b64(device.seed_b64)
    assert loaded.public_key == device.public_key


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33), "AQID", bytearray(32), None])
def test_a_seed_of_the_wrong_length_or_type_is_refused(seed: object) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SigningKey(seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "AQID", crypto.b64encode(bytes(32)) + "=", crypto.b64encode(bytes(33))])
def test_a_seed_that_is_not_canonical_b64_of_32_bytes_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="32-byte seed"):
        SigningKey.from_seed_b64(text)


def test_the_repr_of_a_key_never_shows_its_seed(device: SigningKey) -> None:
    text = repr(device)
    assert DEVICE_PUBLIC_KEY in text
    assert device.seed_b64 not in text
    assert DEVICE_SEED.hex() not in text


def test_generated_keys_are_distinct_and_sign_verifiably() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    assert a.public_key != b.public_key
    assert verify(a.public_key, b"m", a.sign(b"m"))
    assert not verify(b.public_key, b"m", a.sign(b"m"))


def test_signing_is_deterministic(device: SigningKey) -> None:
    assert device.sign(b"x") == crypto.sign(device, b"x")
    assert crypto.b64decode(device.sign(b"x"), 64) == device.sign_raw(b"x")


def test_the_dummy_key_is_a_valid_point_that_verifies_its_own_signatures() -> None:
    dummy = SigningKey(hashlib.sha256(b"relay-dummy-key-v1").digest())
    assert dummy.public_key == crypto.DUMMY_PUBLIC_KEY
    assert verify(crypto.DUMMY_PUBLIC_KEY, b"m", dummy.sign(b"m"))


# --- the signed strings, known answers ---------------------------------------------------------------


def test_enroll_string_and_signature_are_the_known_answer(device: SigningKey) -> None:
    data = crypto.enroll_string(TOKEN, DEVICE_PUBLIC_KEY, "Alice's phone")
    assert data == ENROLL_STRING
    assert device.sign(data) == ENROLL_SIG
    assert verify(DEVICE_PUBLIC_KEY, data, ENROLL_SIG)


def test_http_request_string_and_signature_are_the_known_answer(device: SigningKey) -> None:
    data = crypto.http_request_string(
        SERVER_PUBLIC_KEY, DEVICE_ID, "POST", "/v1/pairings", 1_764_000_000_000, HTTP_NONCE, b"{}"
    )
    assert data == HTTP_STRING
    assert device.sign(data) == HTTP_SIG


def test_http_request_string_upper_cases_the_method_and_hashes_the_empty_body() -> None:
    data = crypto.http_request_string(
        SERVER_PUBLIC_KEY, DEVICE_ID, "get", "/v1/devices?revoked=true", 5, "n", b""
    )
    fields = data.split(b"\n")
    assert fields[3] == b"GET"
    assert fields[4] == b"/v1/devices?revoked=true"
    assert fields[5] == b"5"
    assert fields[7] == b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_server_hello_string_and_signature_are_the_known_answer(server: SigningKey) -> None:
    data = crypto.server_hello_string(SESSION_ID, CLIENT_NONCE, SERVER_NONCE)
    assert data == SERVER_HELLO_STRING
    assert server.sign(data) == SERVER_SIG


def test_client_auth_string_and_signature_are_the_known_answer(device: SigningKey) -> None:
    data = crypto.client_auth_string(SESSION_ID, DEVICE_ID, CLIENT_NONCE, SERVER_NONCE)
    assert data == CLIENT_AUTH_STRING
    assert device.sign(data) == AUTH_SIG


def test_signed_strings_are_utf8_of_the_fields_as_sent() -> None:
    data = crypto.enroll_string(TOKEN, DEVICE_PUBLIC_KEY, "Zoë’s 📱")
    assert data.endswith("\nZoë’s 📱".encode())
    # Not normalised: the decomposed spelling signs differently.
    assert crypto.enroll_string(TOKEN, DEVICE_PUBLIC_KEY, "Zoe\u0308") != crypto.enroll_string(
        TOKEN, DEVICE_PUBLIC_KEY, "Zo\u00eb"
    )


def test_the_published_vector_file_agrees_with_the_code() -> None:
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))
    keys = {name: SigningKey(bytes.fromhex(k["seed_hex"])) for name, k in vectors["keys"].items()}
    assert keys["device"].public_key_b64 == vectors["keys"]["device"]["public_key"] == DEVICE_PUBLIC_KEY
    assert keys["server"].public_key_b64 == vectors["keys"]["server"]["public_key"] == SERVER_PUBLIC_KEY
    for v in vectors["enroll"]:
        data = crypto.enroll_string(v["token"], v["public_key"], v["name"])
        assert data.hex() == v["string_hex"]
        assert keys[v["signer"]].sign(data) == v["sig"]
    for v in vectors["http"]:
        data = crypto.http_request_string(
            v["server_key"],
            v["device_id"],
            v["method"],
            v["path_and_query"],
            v["ts"],
            v["nonce"],
            bytes.fromhex(v["body_hex"]),
        )
        assert data.hex() == v["string_hex"]
        assert keys[v["signer"]].sign(data) == v["sig"]
    hs = vectors["handshake"]
    hello = crypto.server_hello_string(hs["session_id"], hs["client_nonce"], hs["server_nonce"])
    auth = crypto.client_auth_string(
        hs["session_id"], hs["device_id"], hs["client_nonce"], hs["server_nonce"]
    )
    assert hello == SERVER_HELLO_STRING
    assert hello.hex() == hs["server_hello_string_hex"]
    assert auth == CLIENT_AUTH_STRING
    assert auth.hex() == hs["client_auth_string_hex"]
    assert keys["server"].sign(hello) == hs["server_sig"] == SERVER_SIG
    assert keys["device"].sign(auth) == hs["auth_sig"] == AUTH_SIG


@pytest.mark.parametrize("position", range(3))
def test_enroll_string_refuses_a_newline_in_any_field(position: int) -> None:
    fields = [TOKEN, DEVICE_PUBLIC_KEY, "name"]
    fields[position] = "a\nb"
    with pytest.raises(ValueError, match="newline"):
        crypto.enroll_string(*fields)


@pytest.mark.parametrize("position", [0, 1, 2, 3, 5])
def test_http_request_string_refuses_a_newline_in_any_text_field(position: int) -> None:
    fields: list[object] = [SERVER_PUBLIC_KEY, DEVICE_ID, "POST", "/v1/x", 1, HTTP_NONCE, b""]
    fields[position] = "a\nb"
    with pytest.raises(ValueError, match="newline"):
        crypto.http_request_string(*fields)  # type: ignore[arg-type]


def test_http_request_string_refuses_a_non_int_ts_and_a_non_ascii_method() -> None:
    with pytest.raises(TypeError):
        crypto.http_request_string(SERVER_PUBLIC_KEY, DEVICE_ID, "GET", "/", True, HTTP_NONCE, b"")
    with pytest.raises(TypeError):
        crypto.http_request_string(SERVER_PUBLIC_KEY, DEVICE_ID, "GET", "/", "1", HTTP_NONCE, b"")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ASCII"):
        crypto.http_request_string(SERVER_PUBLIC_KEY, DEVICE_ID, "gét", "/", 1, HTTP_NONCE, b"")


@pytest.mark.parametrize("position", range(3))
def test_server_hello_string_refuses_a_newline_in_any_field(position: int) -> None:
    fields = [SESSION_ID, CLIENT_NONCE, SERVER_NONCE]
    fields[position] += "\n"
    with pytest.raises(ValueError, match="newline"):
        crypto.server_hello_string(*fields)


@pytest.mark.parametrize("position", range(4))
def test_client_auth_string_refuses_a_newline_in_any_field(position: int) -> None:
    fields = [SESSION_ID, DEVICE_ID, CLIENT_NONCE, SERVER_NONCE]
    fields[position] = "\n" + fields[position]
    with pytest.raises(ValueError, match="newline"):
        crypto.client_auth_string(*fields)


def test_a_signed_string_refuses_a_field_that_is_not_text() -> None:
    with pytest.raises(TypeError):
        crypto.server_hello_string(SESSION_ID, CLIENT_NONCE.encode(), SERVER_NONCE)  # type: ignore[arg-type]


# --- verify ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "public_key", "message", "signature"), RFC8032)
def test_rfc8032_vectors_verify_and_sign(seed: str, public_key: str, message: str, signature: str) -> None:
    pk, msg, sig = bytes.fromhex(public_key), bytes.fromhex(message), bytes.fromhex(signature)
    assert verify(pk, msg, sig)
    assert verify(crypto.b64encode(pk), msg, crypto.b64encode(sig))
    key = SigningKey(bytes.fromhex(seed))
    assert key.public_key == pk
    assert key.sign_raw(msg) == sig
    assert not verify(pk, msg + b"\x00", sig)


def test_verify_accepts_text_messages_as_their_utf8() -> None:
    sig = SigningKey(DEVICE_SEED).sign("é".encode())
    assert verify(DEVICE_PUBLIC_KEY, "é", sig)
    assert verify(DEVICE_PUBLIC_KEY, "é".encode(), sig)
    assert not verify(DEVICE_PUBLIC_KEY, crypto.b64encode("é".encode()), sig)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _hostile_public_keys() -> list[object]:
    pk = crypto.b64decode(DEVICE_PUBLIC_KEY, 32)
    assert pk is not None
    return [
        pk[:31],
        pk + b"\x00",
        b"",
        bytes(32),  # y = 0: a small-order point
        bytes([1]) + bytes(31),  # the identity
        b"\xff" * 32,  # not a canonical field element
        DEVICE_PUBLIC_KEY + "=",
        DEVICE_PUBLIC_KEY[:-1],
        DEVICE_PUBLIC_KEY[:-1] + "R",  # non-zero trailing bits
        DEVICE_PUBLIC_KEY.replace("_", "/"),  # standard alphabet
        " " + DEVICE_PUBLIC_KEY,
        DEVICE_PUBLIC_KEY.encode(),  # b64 text given as bytes: 43 bytes, not a key
        bytearray(pk),
        None,
        42,
        [pk],
    ]


@pytest.mark.parametrize("public_key", _hostile_public_keys())
def test_verify_refuses_a_hostile_public_key_without_raising(public_key: object) -> None:
    assert verify(public_key, CLIENT_AUTH_STRING, AUTH_SIG) is False  # type: ignore[arg-type]


def _hostile_signatures() -> list[object]:
    sig = crypto.b64decode(AUTH_SIG, 64)
    assert sig is not None
    s = int.from_bytes(sig[32:], "little")
    return [
        bytes(64),
        b"\xff" * 64,
        sig[:63],
        sig + b"\x00",
        sig[:32] + (s + ED25519_L).to_bytes(32, "little"),  # non-canonical S
        _flip(sig, 0),
        _flip(sig, 63),
        AUTH_SIG + "A",
        AUTH_SIG[:-1] + "B",  # non-zero trailing bits
        AUTH_SIG + "==",
        AUTH_SIG.encode(),
        "",
        None,
        3.5,
        {"sig": AUTH_SIG},
    ]


@pytest.mark.parametrize("signature", _hostile_signatures())
def test_verify_refuses_a_hostile_signature_without_raising(signature: object) -> None:
    assert verify(DEVICE_PUBLIC_KEY, CLIENT_AUTH_STRING, signature) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("message", [None, 1, bytearray(CLIENT_AUTH_STRING), "\ud800", ["x"]])
def test_verify_refuses_a_message_of_another_type_or_unencodable_text(message: object) -> None:
    assert verify(DEVICE_PUBLIC_KEY, message, AUTH_SIG) is False  # type: ignore[arg-type]


def test_verify_sanity_the_unaltered_inputs_verify() -> None:
    assert verify(DEVICE_PUBLIC_KEY, CLIENT_AUTH_STRING, AUTH_SIG) is True


_anything = st.one_of(
    st.none(),
    st.integers(),
    st.binary(max_size=80),
    st.text(max_size=100),
    st.lists(st.integers(), max_size=3),
)


@given(_anything, _anything, _anything)
def test_verify_never_raises(public_key: object, message: object, signature: object) -> None:
    assert verify(public_key, message, signature) in (True, False)  # type: ignore[arg-type]


@given(st.binary(min_size=64, max_size=64))
def test_verify_of_random_signatures_is_false(signature: bytes) -> None:
    assert verify(DEVICE_PUBLIC_KEY, CLIENT_AUTH_STRING, signature) is False


# --- hashes, randomness, keyed hashes ----------------------------------------------------------------


def test_sha256_hex_is_lower_case_hex() -> None:
    assert crypto.sha256_hex(b"{}") == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_hash_token_is_the_sha256_of_the_raw_token_bytes() -> None:
    raw = crypto.b64decode(TOKEN, 32)
    assert raw is not None
    assert crypto.hash_token(raw).hex() == "deb0e38ced1e41de6f92e70e80c418d2d356afaaa99e26f5939dbc7d3ef4772a"
    with pytest.raises(TypeError):
        crypto.hash_token(TOKEN)  # type: ignore[arg-type]


def test_random_tokens_are_canonical_b64_of_32_bytes_and_distinct() -> None:
    tokens = {crypto.random_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(crypto.b64decode(t, crypto.TOKEN_BYTES) is not None for t in tokens)


def test_random_nonces_have_the_asked_length() -> None:
    assert crypto.b64decode(crypto.random_nonce(), 32) is not None
    assert crypto.b64decode(crypto.random_nonce(crypto.HTTP_NONCE_BYTES), 16) is not None
    assert crypto.random_nonce() != crypto.random_nonce()
    with pytest.raises(ValueError, match="at least one byte"):
        crypto.random_nonce(0)


SECRET = bytes(range(0x61, 0x81))


def test_keyed_hash_is_the_known_answer() -> None:
    # Computed with `openssl dgst -sha256 -mac HMAC`: first the derived key, then the hash under it.
    derived = "28a1a993d50bdd247ac61d031336eb7d94aa51cb8bbb0799552a3c57e22d3b9b"
    assert crypto.derive_key(SECRET, "relay-deleted-device-v1").hex() == derived
    expected = "8ed0012851b3bc17165c106cc87ec51b298f7d5a1c29c334aba876bd6e97b0a5"
    assert crypto.keyed_hash(SECRET, "relay-deleted-device-v1", DEVICE_ID).hex() == expected
    assert crypto.keyed_hash(SECRET, "relay-deleted-device-v1", DEVICE_ID.encode()).hex() == expected
    assert hmac.digest(bytes.fromhex(derived), DEVICE_ID.encode(), "sha256").hex() == expected


def test_keyed_hashes_differ_by_label_and_by_secret() -> None:
    a = crypto.keyed_hash(SECRET, "one", "v")
    assert a != crypto.keyed_hash(SECRET, "two", "v")
    assert a != crypto.keyed_hash(crypto.new_secret(), "one", "v")
    assert a != crypto.keyed_hash(SECRET, "one", "w")
    assert len(a) == 32


@pytest.mark.parametrize("secret", [b"", bytes(31), "x" * 32])
def test_a_short_or_textual_secret_is_refused(secret: object) -> None:
    with pytest.raises(ValueError, match="secret"):
        crypto.keyed_hash(secret, "label", "v")  # type: ignore[arg-type]


def test_a_purpose_label_is_required() -> None:
    with pytest.raises(ValueError, match="purpose"):
        crypto.derive_key(SECRET, "")


def test_http_request_string_refuses_a_body_that_is_not_bytes() -> None:
    with pytest.raises(TypeError, match="body"):
        crypto.http_request_string(SERVER_PUBLIC_KEY, DEVICE_ID, "GET", "/", 1, HTTP_NONCE, "{}")  # type: ignore[arg-type]


def test_keyed_hash_refuses_a_value_that_is_neither_bytes_nor_text() -> None:
    with pytest.raises(TypeError, match="value"):
        crypto.keyed_hash(SECRET, "label", 42)  # type: ignore[arg-type]
