"""Names as policy compares them (look-alikes folded) and the MCP tool-name rule."""

from __future__ import annotations

import pytest

from runner.guard.names import TOOL_NAME, normalize, resource_key, resource_keys


@pytest.mark.parametrize("name", ["getUser", "DATA_EXPORT_v2", "admin.tools.list", "a", "x" * 128, "a-b_c.d9"])
def test_valid_tool_names(name: str) -> None:
    assert TOOL_NAME.fullmatch(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 129,
        "two words",
        "a,b",
        "user/profile",  # the 2025-11-25 rule dropped the slash of the SEP-986 draft
        "d\u0435lete_file",
        "del\u200bete_file",
        "move_file\u200b",
        "tool\n",
        "tool\x1b[31m",
        "\uff44elete",
        "caf\u00e9",
    ],
)
def test_invalid_tool_names(name: str) -> None:
    assert not TOOL_NAME.fullmatch(name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Delete_File", "delete_file"),
        ("d\u0435l\u0435te_file", "delete_file"),  # Cyrillic ie twice
        ("del\u200bete_file", "delete_file"),  # zero-width space
        ("del\u200c\u200d\u2060\ufeffete", "delete"),  # joiners, word joiner, BOM
        ("de\u202elete", "delete"),  # a bidirectional override
        ("del\U000e0041ete", "delete"),  # a tag character
        ("dele\ufe0fte\U000e0100", "delete"),  # variation selectors
        ("\uff44\uff45\uff4c\uff45\uff54\uff45", "delete"),  # fullwidth
        ("\U0001d41d\U0001d41e\U0001d425\U0001d41e\U0001d42d\U0001d41e", "delete"),  # mathematical bold
        ("c\u0397mod", "chmod"),  # Greek capital eta, mapped before folding (folded, it would read as "n")
        ("\u0391\u0392\u0395\u039a\u039c\u039f\u03a1\u03a4\u03a7", "abekmoptx"),  # Greek capitals
        ("\u0430\u0441\u0435\u043e\u0440\u0445\u0443", "aceopxy"),  # Cyrillic small letters
        ("e\u0301", "e"),  # a combining accent
        ("\u3164x\u115f", "x"),  # Hangul fillers
        ("STRASSE", "strasse"),
        ("\u00dfe", "sse"),  # case folding, not lower()
        ("*delete*", "*delete*"),  # glob characters are kept
    ],
)
def test_normalize_folds_look_alikes(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_normalize_is_idempotent_and_never_cuts() -> None:
    for text in ("D\u0435L\u200bETE", "\U0001d41d\u0301x"):
        assert normalize(normalize(text)) == normalize(text)
    # A cut would make a long name look like the prefix it begins with (the policy bounds the length instead).
    assert normalize("a" * 5000 + "/x") == "a" * 5000 + "/x"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:///public/a.txt", "file:/public/a.txt"),
        ("file:///public/../etc/passwd", "file:/etc/passwd"),
        ("file:///public/%2e%2e/etc/passwd", "file:/etc/passwd"),
        ("file:///public/%252e%252e/etc/passwd", "file:/etc/passwd"),  # double-encoded
        ("file:///etc/./passwd", "file:/etc/passwd"),
        ("file:///etc//passwd", "file:/etc/passwd"),
        ("FILE:///ETC/Passwd", "file:/etc/passwd"),
        ("mem://%73ecret", "mem://secret"),
        ("mem://public/../private/a", "mem://private/a"),  # a server may read the "authority" as a path
        ("mem:///dir/", "mem:/dir/"),
        ("https://h/a?next=/../b#x", "https://h/a?next=/../b#x"),  # query and fragment are not a path
        ("greeting", "greeting"),
    ],
)
def test_resource_key(uri: str, expected: str) -> None:
    assert resource_key(uri) == expected


@pytest.mark.parametrize(
    ("uri", "readings"),
    [
        ("file:///public/a.txt", ("file:/public/a.txt",)),
        # An escaped ? or # is path to a URL parser: the traversal after it is resolved.
        ("file:///public/x%3F/../../etc/passwd", ("file:/etc/passwd",)),
        ("file:///public/x%23/../../etc", ("file:/etc",)),
        # A raw ? ends the path for a parser, not for a server that opens what follows file://.
        ("file:///public/x?/../../etc/passwd", ("file:/public/x?/../../etc/passwd", "file:/etc/passwd")),
        ("file:///public/%25252525252e%25252525252e/etc", ("file:/etc",)),  # encoded five times
        ("file:///public/%ef%bc%8e%ef%bc%8e/etc", ("file:/etc",)),  # fullwidth dots, escaped
        ("file:///public/.\u200b./etc", ("file:/etc",)),  # an invisible character between the dots
        ("file://LOCALHOST/etc/passwd", ("file://localhost/etc/passwd", "file:/etc/passwd")),
        ("file://any/etc/passwd", ("file://any/etc/passwd", "file:/etc/passwd")),  # urlparse(uri).path
        ("file://h/a/../../etc/x", ("file://etc/x", "file:/etc/x")),  # the host dropped before resolving
        ("https://h/a?next=/../b#x", ("https://h/a?next=/../b#x", "https://h/b#x")),
    ],
)
def test_resource_keys_are_every_reading(uri: str, readings: tuple[str, ...]) -> None:
    assert resource_keys(uri) == readings
