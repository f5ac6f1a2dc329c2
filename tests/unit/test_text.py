"""Untrusted text shown to people: no terminal control survives."""

import json

import pytest

from runner.text import control_free, printable, unescaped, whole_words


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


def test_whole_words_cuts_between_words() -> None:
    assert whole_words("abc def", 3) == "abc"
    assert whole_words("abc def", -3) == "def"
    assert whole_words("abc def", 5) == "abc "
    assert whole_words("abc def", -5) == " def"
    assert whole_words("abcdef", 3) == whole_words("abcdef", -3) == ""


def test_a_cut_never_leaves_part_of_a_secret_behind() -> None:
    token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    for cut in range(1, len(token)):  # every cut through the token
        head = whole_words(("x " * 100) + token + " tail", 200 + cut)
        tail = whole_words("head " + token + (" x" * 100), -(200 + cut))
        assert head == "x " * 100
        assert tail == " x" * 100


def test_unescaped_reads_what_repr_and_json_spell_out() -> None:
    assert unescaped(repr("ghp_AAAA\u200bBBBB\x1b")) == "'ghp_AAAA\u200bBBBB\x1b'"
    assert unescaped(json.dumps("\uff47\U0001d422")) == '"\uff47\U0001d422"'
    assert unescaped(r"\ud800 stays spelled") == r"\ud800 stays spelled"  # a lone surrogate could not be sent on
    assert unescaped("no escapes") == "no escapes"


@pytest.mark.parametrize("invisible", ["\u034f", "\u180b", "\u2065", "\ufff0", "\u3164", "\u115f", "\U000e0100"])
def test_control_free_shows_what_is_drawn_as_nothing(invisible: str) -> None:
    shown = control_free(f"del{invisible}ete ❤\ufe0f")
    assert invisible not in shown and "\\u" in shown and shown.endswith("❤\ufe0f")  # the emoji selector stays


@pytest.mark.parametrize("name", [r"a\x0aforged", r"a\u000d\u000aforged", "a\\\\x0aforged", r"a\U0000000aforged"])
def test_unescaped_reads_an_escaped_backslash_as_one_character(name: str) -> None:
    """A name that spells ``\\x0a`` as four characters is quoted by ``repr`` as ``\\\\x0a``: read as a backslash
    and an escape, it became a line break, and a pin warning quoting a server's tool name forged a service log line."""
    assert "\n" not in unescaped(repr(name)) and "\r" not in unescaped(repr(name))
    assert unescaped(json.dumps(name)) == json.dumps(name)
    assert unescaped(repr(name + "\u200b")) == repr(name)[:-1] + "\u200b'"  # an escape after it is still read
