"""The compatibility-folded copy of a text that injection and redaction read, and the way back from it.

Fullwidth or mathematical letters (``ｉｇｎｏｒｅ``, ``ｇｈｐ＿…``) read as what they look like once NFKC-folded;
the sanitizer looks for injection and secrets on such a copy, and maps a span it finds there back to the
characters of the text it came from. Kept apart from the sanitizer (runner/guard/sanitize.py) because it owns
one thing, the folded copy and its position map, which no stage needs to know the making of.
"""

from __future__ import annotations

import unicodedata
from itertools import repeat

_JOINERS = frozenset({0x200C, 0x200D})
"""ZWNJ and ZWJ: stripping keeps one between two non-ASCII characters (emoji sequences, Persian, Indic scripts),
and so between fullwidth or mathematical letters (``１<ZWJ>ｂ``) too; the folded copy reads those as ASCII letters
with nothing between them, so the copy leaves the joiners out."""


class _Folding(dict[int, str]):
    """Code point -> its NFKC form (a joiner: nothing), computed on first use; bounded, as a hostile text can
    hold a million."""

    def __missing__(self, cp: int) -> str:
        if len(self) >= 65536:
            self.clear()
        folded = self[cp] = "" if cp in _JOINERS else unicodedata.normalize("NFKC", chr(cp))
        return folded


_FOLDING = _Folding()


def fold(text: str) -> tuple[str, bool]:
    """``text`` with each character NFKC-folded, and whether positions shifted (``fold_map`` maps them back).

    ``text`` itself (the same object) when nothing folds; positions stay when every character folded to one
    character (the common case: fullwidth and mathematical letters).
    """
    joiners = "\u200c" in text or "\u200d" in text
    if text.isascii() or (not joiners and unicodedata.is_normalized("NFKC", text)):
        return text, False
    folded = text.translate(_FOLDING)
    if folded == text:
        return text, False
    # A joiner folds to nothing: lengths can match and positions shift all the same.
    return folded, joiners or len(folded) != len(text)


def fold_map(text: str) -> list[int]:
    """Where each character of ``fold(text)`` came from in ``text``."""
    origin: list[int] = []
    for i, ch in enumerate(text):
        origin.extend(repeat(i, len(_FOLDING[ord(ch)])))
    return origin


def unfold(start: int, end: int, origin: list[int] | None) -> tuple[int, int]:
    """A span of the folded copy as the span of the characters it came from."""
    if origin is None:
        return start, end
    if end <= start:
        return 0, 0  # empty: dropped when spans are chosen
    return origin[start], origin[end - 1] + 1
