"""Untrusted text made safe to show a person: escape sequences and control characters removed or shown escaped."""

from __future__ import annotations

import re
import unicodedata

# CSI (ESC [ … final byte), string controls (OSC, DCS, SOS, PM, APC: ESC ] P X ^ _ or their 8-bit forms) up to
# BEL or ST, then any other escape (nF and two-byte forms) or a lone ESC. Every ESC is removed by one of these.
# String payloads stop at any control character, so an unterminated OSC cannot swallow the lines that follow.
TERMINAL_ESCAPES = re.compile(
    r"[\x1b\x90\x98\x9b\x9d\x9e\x9f](?:"
    r"(?<=\x1b)\[[0-?]{0,64}[ -/]{0,8}[@-~]?|(?<=\x9b)[0-?]{0,64}[ -/]{0,8}[@-~]?"
    r"|(?:(?<=\x1b)[\]PX^_]|(?<=[\x90\x98\x9d\x9e\x9f]))[^\x00-\x1f\x7f-\x9f]{0,4096}(?:\x07|\x1b\\|\x9c)?"
    r"|(?<=\x1b)[ -/]{0,8}[0-~]?)"
)


_BETWEEN_WORDS = ' \n\t\r"'
"""What ends a word for ``whole_words``: white space, and the double quote that ends a JSON string (no credential
format holds either)."""


def whole_words(text: str, limit: int) -> str:
    """At most the first ``limit`` characters of ``text`` (the last ``-limit`` when negative), never part of a word.

    A cut through a word leaves part of it behind, and part of a secret is one no detector recognizes (``ghp_``
    and 12 of its 36 characters, the last 20 characters of a key): the word the cut runs through goes with it.
    Text from a sandbox is cut with this before it is sanitized.
    """
    if limit >= 0:
        if len(text) <= limit:
            return text
        head = text[:limit]
        if text[limit] in _BETWEEN_WORDS:
            return head
        return head[: max(head.rfind(ch) for ch in _BETWEEN_WORDS) + 1]
    if len(text) <= -limit:
        return text
    tail = text[limit:]
    if text[limit - 1] in _BETWEEN_WORDS:
        return tail
    starts = [pos for pos in (tail.find(ch) for ch in _BETWEEN_WORDS) if pos >= 0]
    return tail[min(starts) :] if starts else ""


# What ``repr`` and JSON make of a character they will not show: \xXX, \uXXXX (a surrogate pair as two), \UXXXXXXXX.
# An escaped backslash is read as one unit first, so the text after it is never taken for an escape.
_BACKSLASH_ESCAPE = re.compile(
    r"\\(?:\\|x([0-9a-fA-F]{2})|u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|u([0-9a-fA-F]{4})"
    r"|U([0-9a-fA-F]{8}))"
)


def _unescape(m: re.Match[str]) -> str:
    if m[0] == "\\\\":
        # The quoted text held a backslash, spelled ``\\``: what follows it is text (a name spelling ``\x0a``
        # as four characters), not an escape; read as one it put a line break into the service log.
        return m[0]
    if m[1] is not None:
        return chr(int(m[1], 16))
    if m[2] is not None:
        return chr(0x10000 + ((int(m[2], 16) - 0xD800) << 10) + int(m[3], 16) - 0xDC00)
    code = int(m[4] or m[5], 16)
    return m[0] if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF else chr(code)  # a lone surrogate stays spelled


def unescaped(text: str) -> str:
    """``text`` with the backslash escapes of ``repr`` and JSON turned back into the characters they spell.

    A message that quotes untrusted text through ``repr`` or ``json.dumps`` spells a zero-width space as six
    visible characters (``ghp_AAAA\\u200bBBBB``): a reader joins the halves at a glance, the sanitizer cannot.
    Decoded, the invisible character is one the sanitizer strips, and the secret is whole again for it.
    """
    return _BACKSLASH_ESCAPE.sub(_unescape, text) if "\\" in text else text


def printable(text: str, limit: int | None = None) -> str:
    """``text`` without escape sequences or control characters (newlines and tabs kept).

    ``limit`` keeps the first ``limit`` characters, or the last ``-limit`` when negative.
    """
    if limit is not None:
        text = text[limit:] if limit < 0 else text[:limit]
    text = TERMINAL_ESCAPES.sub("", text)
    return "".join(ch for ch in text if ch in "\n\t" or ch.isprintable())


_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Cn"})
"""Controls, format characters (bidi overrides, zero-width and tag characters…), surrogates, line separators, and
unassigned code points (some of which, U+2065 and U+FFF0–U+FFF8 among them, are drawn as nothing)."""
_DRAWN_AS_NOTHING = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u3164\uffa0\U000e0100-\U000e01ef]")
"""Printable by Python's rules, yet invisible: the combining grapheme joiner, Hangul fillers, Khmer inherent
vowels, Mongolian free variation selectors, supplementary variation selectors (the emoji selectors stay)."""


def _escape(ch: str) -> str:
    code = ord(ch)
    if code > 0xFFFF:  # as a JSON surrogate pair, so an escaped JSON document is still the same JSON
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def control_free(text: str) -> str:
    """``text`` with everything a terminal acts on or a reader cannot see shown as a ``\\uXXXX`` escape.

    Unlike ``printable`` nothing is removed, so a person sees that something was there (``\\u202e``, ``\\u001b``).
    Newlines and tabs stay. The escapes are JSON's, so JSON text stays valid JSON with the same value.
    """
    if text.replace("\n", "").replace("\t", "").isprintable() and not _DRAWN_AS_NOTHING.search(text):
        return text  # in C: the common case costs next to nothing
    return "".join(
        _escape(ch)
        if ch not in "\n\t" and (unicodedata.category(ch) in _ESCAPED_CATEGORIES or _DRAWN_AS_NOTHING.match(ch))
        else ch
        for ch in text
    )
