"""What a payload's MIME type says about how it is read: text or binary, which charset, JSON or not.

Kept apart from the result walk (runner/guard/results.py) because it is a closed piece of policy about MIME
types alone: which payloads a person or a model reads as text (and so must be sanitized), and which document
charsets a blob is decoded in. The walk only asks these questions; it never parses a MIME type itself.
"""

from __future__ import annotations

import codecs
import re

_TEXT_SUBTYPES = frozenset(
    {"json", "xml", "javascript", "ecmascript", "yaml", "x-yaml", "toml", "x-toml", "sql", "graphql", "x-sh",
     "x-shellscript", "csv", "ndjson", "x-ndjson", "jsonl", "x-www-form-urlencoded", "markdown", "x-python"}
)  # fmt: skip
_CHARSET = re.compile(r";\s*charset\s*=\s*[\"']?([A-Za-z0-9_.:\-]{1,40})", re.IGNORECASE)
_DOCUMENT_CHARSETS = re.compile(
    r"utf-(?:8|8-sig|7|16|16-le|16-be|32|32-le|32-be)|ascii|iso8859-\d{1,2}|cp125\d|cp866|cp874|koi8-[ru]|mac-roman"
    r"|shift_jis|cp932|euc_jp|iso2022_jp|gb2312|gbk|gb18030|big5|big5hkscs|cp950|euc_kr|cp949"
)
"""Python's canonical names of the charsets documents are written in (the WHATWG list, UTF-7 and UTF-32); each
decodes in linear time and takes the ``replace`` error handler both ways."""


def text_like(mime_type: str | None) -> bool:
    """A MIME type whose payload is text a person or a model will read; no type at all counts as text."""
    if not mime_type:
        return True
    kind, _, subtype = mime_type.split(";", 1)[0].strip().lower().partition("/")
    return kind == "text" or subtype in _TEXT_SUBTYPES or subtype.endswith(("+json", "+xml", "+yaml"))


def document_charset(mime_type: str | None) -> str:
    """The document charset a MIME type's ``charset`` names, if it is one readers know (``_DOCUMENT_CHARSETS``);
    else UTF-8. Python also calls ``punycode``, ``idna`` and ``unicode_escape`` text encodings: no reader decodes a
    document with them, punycode decodes in quadratic time and idna raises on any error handler."""
    found = _CHARSET.search(mime_type or "")
    if found is not None:
        try:
            name = codecs.lookup(found.group(1)).name
        except LookupError:
            return "utf-8"
        if _DOCUMENT_CHARSETS.fullmatch(name):
            return name
    return "utf-8"


def json_typed(mime_type: str | None) -> bool:
    """A JSON MIME type (``application/json``, ``ld+json``, any ``+json``): its text is parsed and walked."""
    if not mime_type:
        return False
    subtype = mime_type.split(";", 1)[0].strip().lower().partition("/")[2]
    return subtype in ("json", "ld+json") or subtype.endswith("+json")
