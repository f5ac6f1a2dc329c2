"""A sandbox's stderr as the host keeps it: the last few KiB, always starting between words.

Shared by the Docker and Kubernetes handles: both receive stderr in pieces of any size and keep only a bounded
tail, which may end up in an error message after the session's sanitizer has seen it.
"""

from __future__ import annotations

from runner.text import printable

_BETWEEN_WORDS = (b" ", b"\n", b"\t", b"\r", b'"')
"""Bytes a stderr tail may start after: never in the middle of a word (``runner.text.whole_words``)."""


def _word_end(data: bytes | bytearray, start: int) -> int:
    """Where the word at ``start`` ends (its first byte between words), or -1 if it runs to the end of ``data``."""
    ends = [i for i in (data.find(ch, start) for ch in _BETWEEN_WORDS) if i >= 0]
    return min(ends) if ends else -1


class StderrTail:
    """The last ``cap`` bytes written to a stderr, cut only between words."""

    def __init__(self, cap: int) -> None:
        self._kept = bytearray()
        self._cap = cap
        self._mid_word = False

    def keep(self, data: bytes | bytearray) -> None:
        # A cut through a word (maybe a secret whose rest no detector would recognize) takes the rest of the word
        # too, also when that rest arrives later: the tail always starts between words.
        if self._mid_word:
            start = _word_end(data, 0)
            if start < 0:
                return
            data, self._mid_word = data[start:], False
        self._kept += data
        if len(self._kept) > self._cap:
            cut = len(self._kept) - self._cap
            if self._kept[cut - 1 : cut] not in _BETWEEN_WORDS:
                cut = _word_end(self._kept, cut)
                if cut < 0:
                    self._kept.clear()
                    self._mid_word = True
                    return
            del self._kept[:cut]

    def text(self) -> str:
        """The tail decoded leniently, printable, without surrounding blank space."""
        return printable(bytes(self._kept).decode("utf-8", errors="replace")).strip()
