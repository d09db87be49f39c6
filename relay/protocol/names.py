"""Device names (PROTOCOL.md §1): what is refused, what is stored, and when two names collide.

Pure and total: :func:`normalize_device_name` accepts any Python value and either returns the stored
name or raises :class:`~relay.errors.BadRequest` with the path; :func:`device_name_key` never raises.

The rule, in order:

1. the value must be a ``str``;
2. *as sent*, it must hold no character of category Cc or Cf other than U+200C ZERO WIDTH NON-JOINER
   and U+200D ZERO WIDTH JOINER (needed to spell words in Persian, Indic scripts and emoji
   sequences), and no lone surrogate (category Cs: the JSON parser never yields one, but the CLI and
   other callers can, and such a string cannot be encoded as UTF-8, let alone stored or signed);
3. it is NFC-normalised, then :data:`WHITE_SPACE` is trimmed from both ends;
4. the result must be 1..64 code points (Python ``len``, not UTF-8 bytes, not UTF-16 units).

Since ``\\n`` is Cc, a name never holds a newline, which the enrolment signed string relies on (§2).
"""

from __future__ import annotations

import unicodedata

from relay.errors import BadRequest

__all__ = [
    "ALLOWED_FORMAT_CHARS",
    "MAX_NAME_CODE_POINTS",
    "WHITE_SPACE",
    "device_name_key",
    "normalize_device_name",
]

MAX_NAME_CODE_POINTS = 64

#: The only characters of category Cf a name may hold: ZWNJ and ZWJ.
ALLOWED_FORMAT_CHARS = frozenset("\u200c\u200d")

#: What is trimmed from both ends of a name: exactly the characters with the Unicode ``White_Space``
#: property (PropList.txt), written out so that the rule does not hang on one language's runtime.
#:
#: Why not ``str.strip()``? CPython's ``str.isspace`` is defined from bidirectional classes, and so it
#: also strips U+001C..U+001F (information separators), which are not ``White_Space``. On the names
#: that reach the trimming step the two agree exactly, because every Cc character is refused before
#: it (``tests/unit/test_names.py`` checks this over all of Unicode); the explicit set states the
#: contract in the standard's terms. It also agrees, on accepted names, with JavaScript's
#: ``String.prototype.trim`` (which differs only by U+FEFF, a refused Cf, and U+0085, a refused Cc)
#: and Go's ``strings.TrimSpace``, so clients can predict the stored name with their own trim.
#: White space inside a name is kept as sent.
WHITE_SPACE = (
    "\u0009\u000a\u000b\u000c\u000d\u0020\u0085\u00a0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
_RULE = (
    "name must be text of 1..64 characters after trimming white space, "
    "without control or format characters (other than U+200C and U+200D)"
)


def _refused_char(name: str) -> str | None:
    for char in name:
        if unicodedata.category(char) in _REFUSED_CATEGORIES and char not in ALLOWED_FORMAT_CHARS:
            return char
    return None


def normalize_device_name(raw: object, *, path: str = "$.name") -> str:
    """The name to store for ``raw``, as sent by a client; raises :class:`BadRequest` with ``path``.

    The returned name is NFC, has no white space at either end and holds 1..64 code points; it is
    what answers carry. Applying this function to its own result returns it unchanged. Uniqueness is
    decided on :func:`device_name_key` of the returned name, never on the name itself.
    """
    if not isinstance(raw, str):
        raise BadRequest("name must be a string", path=path)
    refused = _refused_char(raw)
    if refused is not None:
        raise BadRequest(_RULE, path=path, detail=f"refused character U+{ord(refused):04X}")
    name = unicodedata.normalize("NFC", raw).strip(WHITE_SPACE)
    if not 1 <= len(name) <= MAX_NAME_CODE_POINTS:
        raise BadRequest(_RULE, path=path, detail=f"{len(name)} code points after normalisation")
    return name


def device_name_key(name: str) -> str:
    """The uniqueness key of a stored name: ``NFKC(casefold(NFKC(name)))`` (§1).

    Two non-revoked devices of a user may not have names with equal keys, so ``Phone``, ``PHONE``,
    fullwidth ``Ｐｈｏｎｅ``, ``ß``/``ss`` and ``ﬁ``/``fi`` collide. The key is only compared and
    indexed, never shown. It is a fixed point (``device_name_key(k) == k`` for every key ``k``), but it
    is *not* always casefolded: NFKC recomposes a few characters, such as U+01F0 ``ǰ``, whose case
    folding decomposes them.
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
