"""Device names (PROTOCOL.md §1): refusal as sent, NFC, trimming, 1..64 code points, uniqueness key."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from relay.errors import BadRequest
from relay.protocol.names import (
    MAX_NAME_CODE_POINTS,
    WHITE_SPACE,
    device_name_key,
    normalize_device_name,
)


def refusal(raw: object, *, path: str = "$.name") -> BadRequest:
    with pytest.raises(BadRequest) as info:
        normalize_device_name(raw, path=path)
    assert info.value.code == "bad_request"
    assert info.value.path == path
    return info.value


# --- length: code points after NFC and trimming ------------------------------------------------------


def test_a_name_of_64_code_points_is_accepted_and_65_is_refused() -> None:
    assert MAX_NAME_CODE_POINTS == 64
    assert normalize_device_name("a" * 64) == "a" * 64
    refusal("a" * 65)


def test_a_one_character_name_is_accepted_and_an_empty_one_refused() -> None:
    assert normalize_device_name("x") == "x"
    refusal("")


def test_astral_characters_count_as_one_code_point_each_not_as_bytes_or_utf16_units() -> None:
    emoji = "\U0001f600"  # 4 UTF-8 bytes, 2 UTF-16 units
    assert normalize_device_name(emoji * 64) == emoji * 64
    refusal(emoji * 65)


def test_the_length_is_counted_after_nfc_composes_combining_sequences() -> None:
    # 128 code points as sent, 64 once "e" + U+0301 is composed to "é".
    assert normalize_device_name("e\u0301" * 64) == "\u00e9" * 64
    refusal("e\u0301" * 65)


def test_combining_sequences_without_a_precomposed_form_count_every_code_point() -> None:
    name = "x\u0301" * 32  # no precomposed x-acute exists, so NFC keeps 64 code points
    assert normalize_device_name(name) == name
    refusal(name + "x")


def test_hangul_jamo_are_composed_before_counting() -> None:
    syllable = "\u1100\u1161"  # ᄀ + ᅡ → 가 under NFC
    assert normalize_device_name(syllable * 64) == "\uac00" * 64


def test_the_length_is_counted_after_trimming() -> None:
    assert normalize_device_name("  " + "a" * 64 + "\u3000") == "a" * 64


# --- trimming ----------------------------------------------------------------------------------------


def test_white_space_at_both_ends_is_trimmed_and_inner_white_space_kept() -> None:
    assert normalize_device_name("  Alice's  phone \u00a0") == "Alice's  phone"


@pytest.mark.parametrize(
    "space", ["\u0020", "\u00a0", "\u1680", "\u2003", "\u2028", "\u2029", "\u202f", "\u3000"]
)
def test_every_non_control_white_space_character_is_trimmed(space: str) -> None:
    assert normalize_device_name(f"{space}Phone{space}") == "Phone"


@pytest.mark.parametrize("name", [" ", "   ", "\u3000\u00a0 \u2003"])
def test_a_name_of_only_white_space_is_refused(name: str) -> None:
    refusal(name)


def test_a_white_space_character_that_nfc_maps_to_another_is_still_trimmed() -> None:
    # U+2000 EN QUAD is canonically equivalent to U+2002 EN SPACE.
    assert normalize_device_name("\u2000Phone\u2001") == "Phone"


def test_a_leading_tab_is_refused_not_trimmed_because_it_is_a_control_as_sent() -> None:
    refusal("\tPhone")
    refusal("Phone\n")


def test_zero_width_space_is_not_white_space_and_is_refused_rather_than_trimmed() -> None:
    refusal("\u200bPhone")


def test_the_trimmed_set_is_unicode_white_space() -> None:
    # Equal to str.isspace() except U+001C..U+001F, which Python strips but which are not
    # White_Space; they are Cc, so they are refused before trimming and the difference never shows.
    differs = {chr(cp) for cp in range(sys.maxunicode + 1) if (chr(cp) in WHITE_SPACE) != chr(cp).isspace()}
    assert differs == {"\x1c", "\x1d", "\x1e", "\x1f"}
    assert all(unicodedata.category(c) == "Cc" for c in differs)


# --- NFC ---------------------------------------------------------------------------------------------


def test_the_stored_name_is_nfc() -> None:
    assert normalize_device_name("Cafe\u0301") == "Caf\u00e9"
    assert normalize_device_name("e\u0301") == "\u00e9"


def test_nfc_does_not_apply_compatibility_mappings() -> None:
    # Fullwidth letters and ligatures are kept as sent; only the uniqueness key folds them.
    assert normalize_device_name("\uff30hone") == "\uff30hone"
    assert normalize_device_name("\ufb01le") == "\ufb01le"


# --- refused characters, as sent ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "char",
    [
        "\u200b",  # ZERO WIDTH SPACE (Cf)
        "\ufeff",  # BYTE ORDER MARK (Cf)
        "\u202e",  # RIGHT-TO-LEFT OVERRIDE (Cf)
        "\u2066",  # LEFT-TO-RIGHT ISOLATE (Cf)
        "\u00ad",  # SOFT HYPHEN (Cf)
        "\U000e0001",  # LANGUAGE TAG (Cf, astral)
        "\x00",
        "\t",
        "\n",
        "\r",
        "\x7f",
        "\x85",  # NEXT LINE: Cc, although it is White_Space
        "\x1f",
    ],
)
def test_control_and_format_characters_are_refused_anywhere(char: str) -> None:
    refusal(f"Pho{char}ne")
    refusal(f"{char}Phone")
    refusal(f"Phone{char}")


@pytest.mark.parametrize(
    "name", ["\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "\U0001f469\u200d\U0001f4bb"]
)
def test_zero_width_joiner_and_non_joiner_are_accepted(name: str) -> None:
    assert normalize_device_name(name) == name


@pytest.mark.parametrize("name", ["\ud800", "Phone\udfff", "\udc00\ud800"])
def test_lone_surrogates_are_refused(name: str) -> None:
    refusal(name)


def test_a_properly_paired_astral_character_is_not_a_surrogate() -> None:
    assert normalize_device_name("\U0001f4f1 Phone") == "\U0001f4f1 Phone"


@pytest.mark.parametrize("raw", [None, 1, 1.5, True, b"Phone", ["Phone"], {"name": "Phone"}])
def test_a_name_that_is_not_a_string_is_refused(raw: object) -> None:
    refusal(raw)


def test_the_refusal_carries_the_callers_path() -> None:
    refusal("", path="$.body.name")


def test_private_use_and_unassigned_code_points_are_accepted() -> None:
    # §1 refuses only Cc and Cf; categories Co and Cn are stored as sent.
    assert normalize_device_name("\ue000\U000effff") == "\ue000\U000effff"


# --- the uniqueness key ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Phone", "PHONE"),
        ("Phone", "\uff30\uff48\uff4f\uff4e\uff45"),  # fullwidth Ｐｈｏｎｅ
        ("PHONE", "\uff30\uff28\uff2f\uff2e\uff25"),
        ("Stra\u00dfe", "STRASSE"),  # ß vs ss
        ("\u00df", "ss"),
        ("\ufb01le", "file"),  # ligature ﬁ vs fi
        ("Caf\u00e9", "CAFE\u0301"),
        ("\u2460", "1"),  # circled digit one
    ],
)
def test_names_that_must_collide_have_equal_keys(a: str, b: str) -> None:
    assert device_name_key(normalize_device_name(a)) == device_name_key(normalize_device_name(b))


@pytest.mark.parametrize(("a", "b"), [("Phone", "Phone 2"), ("Phone", "Ph one"), ("cafe", "caf\u00e9")])
def test_different_names_have_different_keys(a: str, b: str) -> None:
    assert device_name_key(a) != device_name_key(b)


def test_the_key_is_a_fixed_point_but_not_always_casefolded() -> None:
    # U+01F0 ǰ casefolds to "j" + U+030C, which NFKC composes back: the key is stable under the key
    # itself, which is the property uniqueness needs, but not under casefold alone.
    key = device_name_key("\u01f0")
    assert key == "\u01f0"
    assert device_name_key(key) == key
    assert key.casefold() != key


def test_the_key_of_every_single_code_point_is_a_fixed_point() -> None:
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        key = device_name_key(chr(cp))
        assert device_name_key(key) == key, hex(cp)
