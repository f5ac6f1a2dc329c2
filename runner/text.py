"""Untrusted text made safe to show a person: terminal escape sequences and control characters removed."""

from __future__ import annotations

import re

# CSI (ESC [ … final), OSC (ESC ] … BEL or ESC \), other two-byte escapes, and the 8-bit CSI/OSC forms.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, ended by BEL or ST
    r"|\x1b[@-_]"  # other escapes
)


def printable(text: str, limit: int | None = None) -> str:
    """``text`` without escape sequences or control characters (newlines and tabs kept).

    ``limit`` keeps the first ``limit`` characters, or the last ``-limit`` when negative.
    """
    if limit is not None:
        text = text[limit:] if limit < 0 else text[:limit]
    text = _ESCAPES.sub("", text)
    return "".join(ch for ch in text if ch in "\n\t" or ch.isprintable())
