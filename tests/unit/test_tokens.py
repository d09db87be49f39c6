"""Replay continuation tokens (§4.4): round trip, binding, expiry bound, tampering, hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import crypto
from relay.errors import InvalidToken
from relay.protocol import tokens
from relay.protocol.tokens import TOKEN_TTL_MS, Cursor, mint, open_token

SECRET = bytes(range(0x61, 0x81))
OTHER_SECRET = bytes(range(0x81, 0xA1))
USER = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
DEVICE = "0f8fad5b-d9cb-469f-a165-70867728950e"
OTHER_USER = "16fd2706-8baf-433b-82eb-8c7fada847da"
OTHER_DEVICE = "9b2e4f10-5c3a-4d8e-8f1a-2b3c4d5e6f70"
NOW = 1_764_000_000_000

# Computed with the OpenSSL CLI from the layout documented in relay/protocol/tokens.py.
KNOWN_TOKEN = (
    "AQAAAZq2oQ_AAAAAAAAAAGQAAAAAAAAA-gAAAGRub3Rlcy8yMDI1MZwfAFsRB0kFq7BZZKS1eb5vcYxs04WxAeZZWpcWfkA"
)


def a_token(**overrides: object) -> str:
    fields: dict[str, object] = {
        "user_id": USER,
        "device_id": DEVICE,
        "stream": "notes/2025",
        "after": 100,
        "head": 250,
        "limit": 100,
        "now_ms": NOW,
    }
    fields.update(overrides)
    return mint(SECRET, **fields)  # type: ignore[arg-type]


def opened(token: object, *, now_ms: int = NOW, user_id: str = USER, device_id: str = DEVICE) -> Cursor:
    return open_token(SECRET, token, user_id=user_id, device_id=device_id, now_ms=now_ms)


def test_the_ttl_is_ten_minutes() -> None:
    assert TOKEN_TTL_MS == 600_000


def test_a_token_is_the_known_answer() -> None:
    assert a_token() == KNOWN_TOKEN


def test_a_minted_token_opens_to_its_cursor() -> None:
    assert opened(a_token()) == Cursor(
        stream="notes/2025", after=100, head=250, limit=100, expires_at_ms=NOW + TOKEN_TTL_MS
    )


def test_a_token_is_canonical_b64_and_holds_no_ids() -> None:
    token = a_token()
    raw = crypto.b64decode(token)
    assert raw is not None
    assert "=" not in token
    for secretish in (USER, DEVICE):
        assert secretish.encode() not in raw


def test_minting_is_deterministic() -> None:
    assert a_token() == a_token()
    assert a_token() != a_token(now_ms=NOW + 1)


# --- expiry -------------------------------------------------------------------------------------------


def test_a_token_is_valid_at_exactly_ten_minutes() -> None:
    assert opened(a_token(), now_ms=NOW + TOKEN_TTL_MS).after == 100


def test_a_token_is_expired_one_millisecond_after_ten_minutes() -> None:
    with pytest.raises(InvalidToken):
        opened(a_token(), now_ms=NOW + TOKEN_TTL_MS + 1)


def test_a_token_opens_on_a_node_whose_clock_is_behind() -> None:
    assert opened(a_token(), now_ms=NOW - 60_000).head == 250


# --- binding ------------------------------------------------------------------------------------------


def test_a_token_of_another_device_of_the_same_user_is_invalid() -> None:
    with pytest.raises(InvalidToken):
        opened(a_token(), device_id=OTHER_DEVICE)


def test_a_token_of_another_user_is_invalid() -> None:
    with pytest.raises(InvalidToken):
        opened(a_token(), user_id=OTHER_USER)
    with pytest.raises(InvalidToken):
        opened(a_token(user_id=OTHER_USER))


def test_the_user_and_device_ids_cannot_be_shifted_into_each_other() -> None:
    # Length-prefixed: ("ab", "c") and ("a", "bc") give different MACs.
    token = a_token(user_id="ab", device_id="c")
    with pytest.raises(InvalidToken):
        opened(token, user_id="a", device_id="bc")


def test_a_token_minted_with_another_secret_is_invalid() -> None:
    token = mint(
        OTHER_SECRET, user_id=USER, device_id=DEVICE, stream="s", after=0, head=1, limit=1, now_ms=NOW
    )
    with pytest.raises(InvalidToken):
        opened(token)


def test_a_value_made_for_another_purpose_with_the_same_secret_is_not_a_token() -> None:
    # Each use derives its own key: a keyed hash of the same bytes is not a MAC that opens.
    token = a_token()
    raw = crypto.b64decode(token)
    assert raw is not None
    payload = raw[:-32]
    forged = crypto.b64encode(payload + crypto.keyed_hash(SECRET, "relay-deleted-device-v1", payload))
    with pytest.raises(InvalidToken):
        opened(forged)


# --- tampering and garbage -----------------------------------------------------------------------------


def _raw(token: str) -> bytes:
    raw = crypto.b64decode(token)
    assert raw is not None
    return raw


@pytest.mark.parametrize("position", range(len(_raw(KNOWN_TOKEN))))
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_a_token_with_any_byte_altered_is_invalid(position: int, mask: int) -> None:
    raw = bytearray(_raw(a_token()))
    raw[position] ^= mask
    with pytest.raises(InvalidToken):
        opened(crypto.b64encode(bytes(raw)))


@pytest.mark.parametrize("position", range(len(KNOWN_TOKEN)))
def test_a_token_with_any_character_altered_is_invalid(position: int) -> None:
    token = a_token()
    replacement = "A" if token[position] != "A" else "B"
    with pytest.raises(InvalidToken):
        opened(token[:position] + replacement + token[position + 1 :])


@pytest.mark.parametrize(
    "token",
    [
        KNOWN_TOKEN[:-1],
        KNOWN_TOKEN + "A",
        KNOWN_TOKEN + "AA",
        KNOWN_TOKEN + "=",
        KNOWN_TOKEN.replace("-", "+").replace("_", "/"),
        " " + KNOWN_TOKEN,
        KNOWN_TOKEN + "\n",
        KNOWN_TOKEN[:-1] + "B",  # same bytes, non-zero trailing bits
        "",
        "A",
        "====",
        "é" * 80,
        "A" * 100_000,
        crypto.b64encode(bytes(61)),  # one byte short of the shortest token
        crypto.b64encode(bytes(62)),
        crypto.b64encode(bytes(189)),
        crypto.b64encode(bytes(190)),  # one byte past the longest token
    ],
)
def test_garbage_text_is_an_invalid_token(token: str) -> None:
    with pytest.raises(InvalidToken):
        opened(token)


@pytest.mark.parametrize(
    "token", [None, 0, 1.5, True, b"AQAB", KNOWN_TOKEN.encode(), [KNOWN_TOKEN], {"t": 1}]
)
def test_a_token_that_is_not_a_string_is_invalid(token: object) -> None:
    with pytest.raises(InvalidToken):
        opened(token)


def _authentic(payload: bytes) -> str:
    """A token with a valid MAC over any payload: what only a holder of the secret could make."""
    return crypto.b64encode(payload + tokens._mac(SECRET, USER, DEVICE, payload))


@pytest.mark.parametrize(
    "payload",
    [
        tokens._HEADER.pack(2, NOW + 1, 0, 1, 1) + b"s",  # unknown version
        tokens._HEADER.pack(1, NOW + 1, 5, 5, 1) + b"s",  # after == head
        tokens._HEADER.pack(1, NOW + 1, 0, 2**53, 1) + b"s",  # head beyond 2^53-1
        tokens._HEADER.pack(1, NOW + 1, 0, 1, 0) + b"s",  # limit 0
        tokens._HEADER.pack(1, NOW + 1, 0, 1, 1) + b"bad name",
        tokens._HEADER.pack(1, NOW + 1, 0, 1, 1) + b"\xff",
    ],
)
def test_an_authentic_but_inconsistent_token_is_still_refused(payload: bytes) -> None:
    with pytest.raises(InvalidToken):
        opened(_authentic(payload))


def test_the_authentic_helper_makes_tokens_that_open() -> None:
    assert opened(_authentic(tokens._HEADER.pack(1, NOW + 1, 0, 1, 1) + b"s")).stream == "s"


def test_invalid_token_keeps_the_session_open_and_is_401() -> None:
    with pytest.raises(InvalidToken) as excinfo:
        opened("x")
    assert excinfo.value.code == "invalid_token"
    assert excinfo.value.close_code_for(in_handshake=False) is None
    assert excinfo.value.http_status == 401
    # One answer for every cause.
    assert excinfo.value.message == InvalidToken().message


@given(st.text(max_size=300))
def test_opening_arbitrary_text_raises_only_invalid_token(text: str) -> None:
    with pytest.raises(InvalidToken):
        opened(text)


@given(st.binary(max_size=260))
def test_opening_arbitrary_canonical_b64_raises_only_invalid_token(data: bytes) -> None:
    with pytest.raises(InvalidToken):
        opened(crypto.b64encode(data))


@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text(), max_size=2)))
def test_opening_arbitrary_values_raises_only_invalid_token(value: object) -> None:
    with pytest.raises(InvalidToken):
        opened(value)


@given(
    stream=st.from_regex(r"[A-Za-z0-9._~:/-]{1,128}", fullmatch=True),
    head=st.integers(1, 2**53 - 1),
    data=st.data(),
    limit=st.integers(1, 2**32 - 1),
    now_ms=st.integers(0, 2**53 - 1 - TOKEN_TTL_MS),
)
def test_any_valid_cursor_round_trips(
    stream: str, head: int, data: st.DataObject, limit: int, now_ms: int
) -> None:
    after = data.draw(st.integers(0, head - 1))
    token = mint(
        SECRET,
        user_id=USER,
        device_id=DEVICE,
        stream=stream,
        after=after,
        head=head,
        limit=limit,
        now_ms=now_ms,
    )
    assert len(token) <= tokens._MAX_CHARS
    cursor = opened(token, now_ms=now_ms)
    assert cursor == Cursor(
        stream=stream, after=after, head=head, limit=limit, expires_at_ms=now_ms + TOKEN_TTL_MS
    )


# --- minting refusals (caller bugs) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"stream": ""},
        {"stream": "a b"},
        {"stream": "x" * 129},
        {"after": 250},  # a page that reached the head has no continuation
        {"after": 251},
        {"after": -1},
        {"after": True},
        {"head": 0, "after": 0},
        {"head": 2**53},
        {"limit": 0},
        {"limit": 2**32},
        {"limit": 1.0},
        {"now_ms": -1},
        {"now_ms": 2**53},
    ],
)
def test_minting_refuses_impossible_values(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- any of several messages
        a_token(**overrides)


def test_minting_needs_a_real_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        mint(b"short", user_id=USER, device_id=DEVICE, stream="s", after=0, head=1, limit=1, now_ms=NOW)
