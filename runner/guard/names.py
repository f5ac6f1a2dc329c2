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
_UPPER = str.maketrans(
    "АВЕЅІЈКМНОРСТХУԚԜҺӀΑΒΕΖΗΙΚΜΝΟΡΤΥΧϹ",
    "ABESIJKMHOPCTXYQWHIABEZHIKMNOPTYXC",
)
_LOWER = str.maketrans(
    "аеһіјкорсѕхуԁԛԝӏғԍпгвмтαβγεικνορτυχωϲϳ",
    "aehijkopcsxydqwlfgnrbmtabyeiknoptuxwcj",
)
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me"})
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
"""Letters and symbols drawn as nothing: Hangul fillers, the blank braille pattern."""
_URI = re.compile(r"((?:[A-Za-z][A-Za-z0-9+.\-]*:)?)([^?#]*)(.*)", re.DOTALL)
"""Scheme; authority and path; query and fragment (after RFC 3986, appendix B)."""
_LIMIT = 4096
"""Longer text is cut before normalizing: no rule is that long, and the work stays bounded per request."""


def normalize(text: str) -> str:
    """``text`` in the form policy rules are matched in: look-alikes of one name become that name.

    In order: compatibility forms folded (NFKD: fullwidth, mathematical letters, ligatures), then everything
    a reader cannot see dropped (format characters such as zero-width spaces, joiners, bidirectional
    controls and tag characters, controls, variation selectors and other combining marks, fillers), then
    Cyrillic and Greek look-alikes mapped to the Latin letters they imitate, case folded, and recomposed
    (NFKC). Dropping combining marks also maps ``dé`` to ``de``: for a deny or approval rule that errs on the
    side of the rule, which is the point. Only for matching: what is shown and recorded stays as sent.
    """
    decomposed = unicodedata.normalize("NFKD", text[:_LIMIT])
    visible = "".join(
        ch for ch in decomposed if unicodedata.category(ch) not in _INVISIBLE_CATEGORIES and ch not in _FILLERS
    )
    folded = visible.translate(_UPPER).casefold().translate(_LOWER)
    return unicodedata.normalize("NFKC", folded)


def resource_key(uri: str) -> str:
    """A resource URI (or a resource rule's pattern) as resource rules compare it: percent-escapes decoded,
    the part after the scheme resolved as a path (``.``, ``..``, repeated slashes), then ``normalize``d.

    A server decodes and resolves URIs its own way, so ``file:///public/%2e%2e/etc/passwd`` must neither pass
    an allow rule for ``file:///public/*`` nor slip by a deny rule for ``file:///etc/*``. Decoding repeats
    until nothing changes (a few rounds at most), so a double-encoded ``%252e`` is seen through too. The
    authority is resolved with the path, so ``mem://public/../private`` is not taken for a URI on host
    ``public``: a server that reads everything after ``mem://`` as a path would go to ``private``.
    """
    text = uri[:_LIMIT]
    for _ in range(4):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    scheme, path, rest = _URI.match(text).groups()  # type: ignore[union-attr]  # every string matches
    if path:
        resolved = posixpath.normpath(path)
        path = resolved + "/" if path.endswith("/") and not resolved.endswith("/") else resolved
    return normalize(scheme + path + rest)
