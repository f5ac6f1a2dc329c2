"""Stage 1 of the sanitizer: strip what a person cannot see but a terminal or a model still reads.

Escape sequences, control characters, bidirectional overrides, zero-width and other invisible format characters,
Unicode tag characters: all of them can hide text from the person reading the output, or split a secret or an
instruction so that the later stages miss it. Tag characters and runs of variation selectors can smuggle a whole
message; they are decoded the way smuggling tools encode them, and one that reads as text is also reported as
hidden text (an injection finding). A single variation selector stays only where one means something (after an
emoji or other symbol, a CJK ideograph, a keycap digit): after a letter that reads as ASCII it only splits words
(``i<VS>g<VS>n<VS>o<VS>r<VS>e``) and goes. Clean ASCII text leaves this stage after one ``bytes.translate``; other text
after one search of a small character class plus a few byte-prefix checks for the astral ranges.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from runner.guard.findings import STRIPPED, FindingLog
from runner.guard.kinds import (
    BIDI_CONTROL,
    CONTROL_CHARS,
    INJECTION_HIDDEN_TEXT,
    INVISIBLE_CHARS,
    TERMINAL_ESCAPE,
    UNICODE_TAGS,
)
from runner.text import TERMINAL_ESCAPES as _ESCAPES

_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Invisible format characters other than the joiners: zero-width space, word joiner and the invisible
# operators, deprecated format controls, BOM/ZWNBSP, Mongolian vowel separator, soft hyphen, combining
# grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian free variation selectors, interlinear
# annotation marks, shorthand format controls, musical-symbol format controls, and the unassigned code points
# Unicode declares default-ignorable (U+2065, U+FFF0–U+FFF8, the rest of U+E0000–U+E0FFF): a renderer must draw
# those as nothing, so each can split a secret or a word as well as a zero-width space can.
# Runs of two or more variation selectors carry no meaning in any script or emoji sequence and are a known way
# to smuggle bytes, so they go too; a single selector stays only after a character that takes one (see
# ``_takes_selector``).
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b\u2060-\u2065\u206a-\u206f\u3164\ufeff\uffa0"
    "\ufff0-\ufffb\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0080-\U000e00ff\U000e01f0-\U000e0fff]"
)
_INVISIBLE_SET = frozenset(
    "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e\u180f\u200b\u2060\u2061\u2062\u2063\u2064"
    "\u2065\u206a\u206b\u206c\u206d\u206e\u206f\u3164\ufeff\uffa0"
) | frozenset(map(chr, range(0xFFF0, 0xFFFC)))
_SELECTORS = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]+")
_KEYCAP_BASES = frozenset("0123456789#*")
_KEYCAP = "\u20e3"
_INFORMATION_SOURCE = "\u2139"  # a letter-like emoji (ℹ️) that NFKC folds to "i"
# ZWNJ/ZWJ are needed between non-ASCII characters (emoji sequences, Persian, Indic scripts); anywhere else,
# or in runs, they only hide things (``ig<ZWJ>nore``).
_JOINERS = re.compile("[\u200c\u200d](?:[\u200c\u200d]+|(?<![^\x00-\x7f][\u200c\u200d])|(?![^\x00-\x7f]))")
_TAG_RUN = re.compile("[\U000e0000-\U000e007f]+")
# An emoji subdivision flag (England, Scotland, Wales…): black flag, 2–6 tag letters/digits, cancel tag.
_FLAG_TAGS = re.compile("[\U000e0030-\U000e0039\U000e0061-\U000e007a]{2,6}\U000e007f")
_BLACK_FLAG = "\U0001f3f4"
_TAG_TO_ASCII = {cp: cp - 0xE0000 for cp in range(0xE0020, 0xE007F)}
_SELECTOR_TO_BYTE = {0xFE00 + i: i for i in range(16)} | {0xE0100 + i: 16 + i for i in range(240)}
# Anything stage 1 acts on, so clean text skips it after one search. A small character class is several times
# faster for ``re`` than one that also holds the astral ranges, so those (tags, supplementary variation selectors,
# shorthand and musical format controls) are found as UTF-8 byte prefixes instead, as are variation selectors
# (each of which is then judged by what it follows, one callback per selector).
_SUSPECT_BMP = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\u3164\ufeff\uffa0\ufff0-\ufffb]"
)
# The same without the joiners, which a separate pass handles (they may stay, depending on their neighbours).
_SUSPECT_RUN = re.compile(_SUSPECT_BMP.pattern.replace("\u200b-\u200f", "\u200b\u200e\u200f") + "+")
_ESCAPE_LEADS = ("\x1b", "\x9b", "\x9d", "\x90", "\x98", "\x9e", "\x9f")
_SUPPLEMENTARY_SELECTORS_UTF8 = (b"\xf3\xa0\x84", b"\xf3\xa0\x85", b"\xf3\xa0\x86", b"\xf3\xa0\x87")
_CONTROL_SET = frozenset(chr(c) for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)])
_BIDI_SET = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SUSPECT_KIND = (
    dict.fromkeys(_CONTROL_SET, CONTROL_CHARS)
    | dict.fromkeys(_BIDI_SET, BIDI_CONTROL)
    | dict.fromkeys(_INVISIBLE_SET, INVISIBLE_CHARS)
)
_SELECTOR_UTF8 = re.compile(rb"\xef\xb8[\x80-\x8f]")
# U+E0080–U+E00FF and U+E01F0–U+E0FFF: unassigned, but default-ignorable, so drawn as nothing like the tags.
_UNASSIGNED_IGNORABLE_UTF8 = re.compile(rb"\xf3\xa0(?:[\x82\x83\x88-\xbf]|\x87[\xb0-\xbf])")
_ASCII_ALLOWED = bytes(range(0x20, 0x7F)) + b"\t\n\r"


def _hidden_message(decoded: str) -> bool:
    """Decoded invisible characters that read as text (at least two letters or digits), not noise."""
    return sum(ch.isalnum() for ch in decoded[:64]) >= 2


def strip(text: str, where: str, log: FindingLog, injection_action: str) -> str:
    """``text`` without what a person cannot see; what was removed is added to ``log`` under ``where``.

    ``injection_action`` is what a hidden message decoded from tag characters or variation selectors is
    reported as (``flagged`` or ``blocked``).
    """
    if text.isascii():
        if not text.encode("ascii").translate(None, _ASCII_ALLOWED):  # in C, several times faster than re
            return text
        if "\x1b" in text:
            text, n = _ESCAPES.subn("", text)
            log.add(TERMINAL_ESCAPE, STRIPPED, where, n)
        return _strip_chars(_CONTROLS, text, CONTROL_CHARS, where, log)
    # One search tells whether anything in the BMP needs stripping; the astral suspects (tags, supplementary
    # variation selectors, shorthand and musical format controls) are found as UTF-8 byte prefixes, which is
    # much cheaper than a character class that holds them.
    first = _SUSPECT_BMP.search(text)
    data = text.encode("utf-8", "surrogatepass")
    tags = b"\xf3\xa0\x80" in data or b"\xf3\xa0\x81" in data
    selectors = any(lead in data for lead in _SUPPLEMENTARY_SELECTORS_UTF8) or (
        b"\xef\xb8" in data and _SELECTOR_UTF8.search(data) is not None
    )
    other = b"\xf0\x9b\xb2" in data or b"\xf0\x9d\x85" in data or _UNASSIGNED_IGNORABLE_UTF8.search(data) is not None
    if first is None and not (tags or selectors or other):
        return text
    invisible = 0
    joiners = False
    if first is not None:
        if any(lead in text for lead in _ESCAPE_LEADS):  # one memchr each
            text, n = _ESCAPES.subn("", text)
            log.add(TERMINAL_ESCAPE, STRIPPED, where, n)
        counts = Counter[str]()

        def strip_run(m: re.Match[str]) -> str:
            counts.update(m.group())  # one pass for controls, bidi and invisible characters alike
            return ""

        text = _SUSPECT_RUN.sub(strip_run, text)
        joiners = "\u200c" in text or "\u200d" in text
        by_kind = Counter[str]()
        for ch, n in counts.items():
            by_kind[_SUSPECT_KIND.get(ch, "")] += n
        log.add(CONTROL_CHARS, STRIPPED, where, by_kind[CONTROL_CHARS])
        log.add(BIDI_CONTROL, STRIPPED, where, by_kind[BIDI_CONTROL])
        invisible = by_kind[INVISIBLE_CHARS]
    if tags:
        text = _strip_tags(text, where, log, injection_action)
    before = len(text)
    if selectors:
        text = _SELECTORS.sub(lambda m: _selectors(m, where, log, injection_action), text)
    if other:
        text = _INVISIBLE.sub("", text)
    if joiners:
        text = _JOINERS.sub("", text)
    log.add(INVISIBLE_CHARS, STRIPPED, where, invisible + before - len(text))
    return text


def _strip_chars(pattern: re.Pattern[str], text: str, kind: str, where: str, log: FindingLog) -> str:
    text, n = pattern.subn("", text)
    log.add(kind, STRIPPED, where, n)
    return text


def _strip_tags(text: str, where: str, log: FindingLog, injection_action: str) -> str:
    removed = 0
    hidden = 0

    def strip_run(m: re.Match[str]) -> str:
        nonlocal removed, hidden
        run = m.group()
        if text.endswith(_BLACK_FLAG, 0, m.start()) and _FLAG_TAGS.fullmatch(run):
            return run  # an emoji subdivision flag, drawn as one picture
        removed += len(run)
        if _hidden_message(run.translate(_TAG_TO_ASCII)):
            hidden += 1
        return ""

    text = _TAG_RUN.sub(strip_run, text)
    log.add(UNICODE_TAGS, STRIPPED, where, removed)
    log.add(INJECTION_HIDDEN_TEXT, injection_action, where, hidden)
    return text


def _takes_selector(text: str, start: int, end: int) -> bool:
    """Whether the one variation selector at ``text[start:end]`` can mean something where it stands.

    It can after a keycap base followed by the keycap mark (``1<VS16><U+20E3>``), after a symbol (emoji, ™, ©)
    and after anything else that is not ASCII-like (CJK ideographs, scripts with standardized variants). After an
    ASCII character, or a letter NFKC folds to ASCII (fullwidth, mathematical letters), it can only split a word.
    """
    if start == 0:
        return False
    before = text[start - 1]
    if before in _KEYCAP_BASES:
        return text.startswith(_KEYCAP, end)
    if before.isascii():
        return False
    if unicodedata.category(before)[0] == "S" or before == _INFORMATION_SOURCE:
        return True
    return not unicodedata.normalize("NFKC", before).isascii()


def _selectors(m: re.Match[str], where: str, log: FindingLog, injection_action: str) -> str:
    """A run of variation selectors: one that means something stays, others are removed (and decoded)."""
    run = m.group()
    if len(run) == 1:
        return run if _takes_selector(m.string, m.start(), m.end()) else ""
    return _hidden_bytes(run, where, log, injection_action)


def _hidden_bytes(run: str, where: str, log: FindingLog, injection_action: str) -> str:
    """A run of variation selectors, decoded the way byte-smuggling tools encode it."""
    data = run.translate(_SELECTOR_TO_BYTE).encode("latin-1")
    if _hidden_message(data.decode("utf-8", "replace")):
        log.add(INJECTION_HIDDEN_TEXT, injection_action, where)
    return ""
