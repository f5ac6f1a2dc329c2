"""Untrusted text made safe to show a person: terminal escape sequences and control characters removed."""

from __future__ import annotations

import re

# CSI (ESC [ … final byte), string controls (OSC, DCS, SOS, PM, APC: ESC ] P X ^ _ or their 8-bit forms) up to
# BEL or ST, then any other escape (nF and two-byte forms) or a lone ESC. Every ESC is removed by one of these.
# String payloads stop at any control character, so an unterminated OSC cannot swallow the lines that follow.
TERMINAL_ESCAPES = re.compile(
    r"[\x1b\x90\x98\x9b\x9d\x9e\x9f](?:"
    r"(?<=\x1b)\[[0-?]{0,64}[ -/]{0,8}[@-~]?|(?<=\x9b)[0-?]{0,64}[ -/]{0,8}[@-~]?"
    r"|(?:(?<=\x1b)[\]PX^_]|(?<=[\x90\x98\x9d\x9e\x9f]))[^\x00-\x1f\x7f-\x9f]{0,4096}(?:\x07|\x1b\\|\x9c)?"
    r"|(?<=\x1b)[ -/]{0,8}[0-~]?)"
)


def printable(text: str, limit: int | None = None) -> str:
    """``text`` without escape sequences or control characters (newlines and tabs kept).

    ``limit`` keeps the first ``limit`` characters, or the last ``-limit`` when negative.
    """
    if limit is not None:
        text = text[limit:] if limit < 0 else text[:limit]
    text = TERMINAL_ESCAPES.sub("", text)
    return "".join(ch for ch in text if ch in "\n\t" or ch.isprintable())
