"""Names as the policy compares them, and the MCP rule for what a tool name may be.

A server chooses its tool and prompt names and a caller chooses the URIs it reads; policy rules are written by
an operator who thinks of ``delete_file``, not of ``Delete_file``, ``ｄｅｌｅｔｅ_file``, a Cyrillic ``dеlete_file``
or ``del<U+200B>ete_file``. ``normalize`` maps all of those to one form, and the policy applies it to both the
rule's pattern and the name, so a look-alike of a denied or approval-gated name is treated as that name.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from urllib.parse import unquote

TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
"""The MCP 2025-11-25 tool-name rule (server/tools, "Tool Names"): 1-128 characters, ASCII letters, digits,
``_``, ``-`` and ``.``. The spec says SHOULD; the runner holds back any other name, because a name outside it
can hide what it is (invisible or look-alike characters, terminal escapes, a 1 MiB name)."""

# Look-alikes that NFKC leaves alone: Cyrillic and Greek letters drawn like Latin ones. Upper case is mapped
# before case folding, because folding would first turn a look-alike capital (Greek Eta, drawn like H) into a
# small letter that looks like something else (eta, drawn like n).
LOOK_ALIKES_UPPER = str.maketrans(
    "АВЕЅІЈКМНОРСТХУԚԜҺӀΑΒΕΖΗΙΚΜΝΟΡΤΥΧϹ",
    "ABESIJKMHOPCTXYQWHIABEZHIKMNOPTYXC",
)
LOOK_ALIKES_LOWER = str.maketrans(
    "аеһіјкорсѕхуԁԛԝӏғԍпгвмтαβγεικνορτυχωϲϳ",
    "aehijkopcsxydqwlfgnrbmtabyeiknoptuxwcj",
)
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me"})
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
"""Letters and symbols drawn as nothing: Hangul fillers, the blank braille pattern."""
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_PATH_END = re.compile(r"[?#]")
_DECODING_ROUNDS = 12
"""Steps of decoding or folding a URI may take (``%252E`` takes three); an honest URI needs a few, and a URI
still changing after these is refused as undecidable, not decoded at quadratic cost (``%25`` × 4000 took 0.1 s)."""
MAX_MATCHED = 16 * 1024
"""The longest name or URI the policy decides, counted decomposed (``matchable``); the door's caps are below it.
Names are never cut (a cut name passes for the prefix it begins with), so this bounds the work of a decision."""
_FILE_HOST = re.compile(r"//[^/?#]*")
"""A ``file:`` URI's authority, which servers read in different ways (most ignore it)."""


def normalize(text: str) -> str:
    """``text`` in the form policy rules are matched in: look-alikes of one name become that name.

    In order: compatibility forms folded (NFKD: fullwidth, mathematical letters, ligatures), then everything
    a reader cannot see dropped (format characters such as zero-width spaces, joiners, bidirectional
    controls and tag characters, controls, variation selectors and other combining marks, fillers), then
    Cyrillic and Greek look-alikes mapped to the Latin letters they imitate, case folded, and recomposed
    (NFKC). Dropping combining marks also maps ``dé`` to ``de``: for a deny or approval rule that errs on the
    side of the rule, which is the point. Only for matching: what is shown and recorded stays as sent.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    visible = "".join(
        ch for ch in decomposed if unicodedata.category(ch) not in _INVISIBLE_CATEGORIES and ch not in _FILLERS
    )
    folded = visible.translate(LOOK_ALIKES_UPPER).casefold().translate(LOOK_ALIKES_LOWER)
    return unicodedata.normalize("NFKC", folded)


def matchable(name: str) -> bool:
    """Whether the policy can decide ``name`` whole: at most ``MAX_MATCHED`` characters once decomposed (one
    character such as U+FDFA decomposes into 18, and ``normalize`` walks each in Python)."""
    return len(name) <= MAX_MATCHED and len(unicodedata.normalize("NFKD", name)) <= MAX_MATCHED


def resource_key(uri: str) -> str:
    """A resource URI (or a resource rule's pattern) as resource rules compare it, read as a URL parser reads it:
    split at the first ``?`` or ``#`` *as sent*, the part before decoded and resolved as a path (``.``, ``..``,
    repeated slashes; the authority with it), the query and fragment decoded, everything ``normalize``d.

    A server decodes and resolves URIs its own way, so ``file:///public/%2e%2e/etc/passwd`` must neither pass
    an allow rule for ``file:///public/*`` nor slip by a deny rule for ``file:///etc/*``. Decoding repeats
    until nothing changes, so a double-encoded ``%252e`` is seen through too; an escaped ``%3F`` or ``%23`` is
    part of the path, as a parser reads it, not the start of a query. The authority is resolved with the path,
    so ``mem://public/../private`` is not taken for a URI on host ``public``.
    """
    return resource_keys(uri)[0]


def resource_keys(uri: str) -> tuple[str, ...]:
    """Every way a server may read ``uri``, as resource rules compare them (``resource_key``'s first); a deny
    rule that hits any of them denies, and an allow rule must match all of them.

    Besides a URL parser's reading: all of it after the scheme decoded and resolved as one path (a server
    that cuts off ``file://`` and opens the rest reads ``/public/x?/../../etc`` as ``/etc``), and for
    ``file://host/…`` both with the host dropped before the path is resolved: ``localhost`` names this
    machine (RFC 8089), and a server opening ``urlparse(uri).path`` reads ``file://h/a/../../etc`` as ``/etc``.
    """
    scheme, rest = _split_scheme(uri)
    path, tail = _split_path(rest)
    path, tail, whole = _decoded(path), _decoded(tail), _decoded(rest)
    readings = [scheme + _resolved(path) + tail, scheme + _resolved(whole)]
    if scheme == "file:":
        for text, after in ((path, tail), (whole, "")):
            host = _FILE_HOST.match(text)
            if host is not None:
                readings.append(scheme + _resolved(text[host.end():] or "/") + after)
    return tuple(dict.fromkeys(readings))


def _split_scheme(uri: str) -> tuple[str, str]:
    """The scheme (normalized, with its colon) as sent, and the rest; an escaped scheme is no scheme."""
    match = _SCHEME.match(uri)
    end = match.end() if match else 0
    return normalize(uri[:end]), uri[end:]


def _split_path(rest: str) -> tuple[str, str]:
    match = _PATH_END.search(rest)
    return (rest, "") if match is None else (rest[: match.start()], rest[match.start():])


class Undecidable(ValueError):
    """A URI that does not settle within ``_DECODING_ROUNDS``: no rule can say what a server will read in it."""


def _decoded(text: str) -> str:
    """Percent-escapes decoded until none is left, and ``normalize``d, until neither changes anything (decoding
    can make a look-alike, folding a fullwidth ``％`` a new escape); ``Undecidable`` past ``_DECODING_ROUNDS``."""
    for _ in range(_DECODING_ROUNDS):
        changed = unquote(text)
        if changed == text:
            changed = normalize(text)
            if changed == text:
                return text
        text = changed
    raise Undecidable(f"it is still percent-encoded after {_DECODING_ROUNDS} rounds of decoding")


def _resolved(path: str) -> str:
    if not path:
        return path
    resolved = posixpath.normpath(path)
    return resolved + "/" if path.endswith("/") and not resolved.endswith("/") else resolved
