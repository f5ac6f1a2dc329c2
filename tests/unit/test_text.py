"""Untrusted text shown to people: no terminal control survives."""

import pytest

from runner.text import printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b]0;pwned title\x07after", "after"),
        ("\x1b]8;;http://x\x1b\\link", "link"),
        ("bell\x07 nul\x00 del\x7f", "bell nul del"),
        ("\x9b2Jclear", "clear"),
        ("rtl\u202eoverride", "rtloverride"),
        ("tabs\tand\nnewlines stay", "tabs\tand\nnewlines stay"),
    ],
)
def test_printable_strips_escapes_and_controls(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_limits_length() -> None:
    assert printable("abcdef", 3) == "abc"
    assert printable("abcdef", -2) == "ef"
