"""Redaction detectors for credentials and e-mail addresses: each yields (start, end) spans of the text to redact.

Every credential format here starts with a fixed literal (``ghp_``, ``xox``, ``eyJ``, ``-----BEGIN`` in any case,
``sk-``, ``AKIA``…) that its pattern begins with, and most detectors first check that the literal occurs at all, so text
without it costs one substring search. Where a format alone is not enough, a validator checks the candidate (a
JWT header must decode to JSON, an OpenAI key must mix cases and digits, an AWS secret key needs a name or an
access key id next to it). The token formats all hold 16 token characters in a row, which ``TOKEN_CHARS`` and
``LONG_RUN`` let the caller test once per text before running any of them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterator

Span = tuple[int, int]
Finder = Callable[[str], Iterator[Span]]

# Any case: PEM parsers are strict, but a key written in lower case is still the key, and a person can read it.
_PRIVATE_KEY_BEGIN = re.compile(
    r"-----BEGIN ((?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP |SSH2 )?PRIVATE KEY(?: BLOCK)?)-----", re.IGNORECASE
)
_PRIVATE_KEY_END = re.compile(
    r"-----END (?:(?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP |SSH2 )?PRIVATE KEY(?: BLOCK)?)-----", re.IGNORECASE
)


def private_keys(text: str) -> Iterator[Span]:
    """Whole PEM blocks; one without its END line runs to the end of the text, and an END line without its BEGIN
    (a text cut off ahead of it: a log's tail) takes all the text before it (better too much than a key)."""
    if "-----" not in text:
        return
    pos = 0
    begin = _PRIVATE_KEY_BEGIN.search(text)
    while True:
        orphan = _PRIVATE_KEY_END.search(text, pos, begin.start() if begin is not None else len(text))
        if orphan is not None:
            yield pos, orphan.end()
            pos = orphan.end()
            continue
        if begin is None:
            return
        end_line = re.compile(re.escape(f"-----END {begin.group(1)}-----"), re.IGNORECASE).search(text, begin.end())
        if end_line is None:
            yield begin.start(), len(text)
            return
        pos = end_line.end()
        yield begin.start(), pos
        begin = _PRIVATE_KEY_BEGIN.search(text, pos)


# user and password of scheme://user:password@host; only the password is redacted. The password may hold ':' or
# '@'; the last '@' before the host wins, as in URL parsers.
_URL_PASSWORD = re.compile(
    r"://(?<=[A-Za-z0-9+.\-]://)[^\s:/?#@\[\]\"'<>]{0,256}:([^\s/?#\"'<>]{1,256})@(?=[A-Za-z0-9\[])"
)


def url_passwords(text: str) -> Iterator[Span]:
    if "://" not in text or "@" not in text:
        return
    for m in _URL_PASSWORD.finditer(text):
        yield m.span(1)


_SLACK_TOKEN = re.compile(r"xox(?<![A-Za-z0-9_\-]xox)(?:[abposr]|e\.xox[bp])-[A-Za-z0-9\-]{10,250}(?![A-Za-z0-9\-])")
_SLACK_APP_TOKEN = re.compile(r"xapp-(?<![A-Za-z0-9_\-]xapp-)\d-[A-Za-z0-9\-]{10,250}(?![A-Za-z0-9\-])")
_SLACK_WEBHOOK = re.compile(r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/+\-]{10,300}")


def slack_tokens(text: str) -> Iterator[Span]:
    if "xox" in text:
        for m in _SLACK_TOKEN.finditer(text):
            if any(ch.isdigit() for ch in m.group()):
                yield m.span()
    if "xapp-" in text:
        for m in _SLACK_APP_TOKEN.finditer(text):
            yield m.span()
    if "hooks.slack.com/" in text:
        for m in _SLACK_WEBHOOK.finditer(text):
            start = m.start()
            for scheme in ("https://", "http://"):
                if text.startswith(scheme, start - len(scheme)):
                    start -= len(scheme)
                    break
            yield start, m.end()


_JWT = re.compile(
    r"eyJ(?<![A-Za-z0-9_\-]eyJ)[A-Za-z0-9_\-]{5,4096}\.[A-Za-z0-9_\-]{2,16384}\.[A-Za-z0-9_\-]{0,4096}"
    r"(?![A-Za-z0-9_\-])"
)


def _jwt_header_ok(segment: str) -> bool:
    """The first segment must decode to a JSON object, so ``eyJfoo.bar.baz`` prose never matches."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return isinstance(json.loads(raw), dict)
    except (ValueError, binascii.Error):
        return False


def jwts(text: str) -> Iterator[Span]:
    if "eyJ" not in text:
        return
    for m in _JWT.finditer(text):
        if _jwt_header_ok(m.group().split(".", 1)[0]):
            yield m.span()


_GITHUB_TOKEN = re.compile(r"gh[pousr]_(?<![A-Za-z0-9_]gh[pousr]_)[A-Za-z0-9]{36,255}(?![A-Za-z0-9_])")
_GITHUB_PAT = re.compile(r"github_pat_(?<![A-Za-z0-9_]github_pat_)[A-Za-z0-9_]{40,255}(?![A-Za-z0-9_])")


def github_tokens(text: str) -> Iterator[Span]:
    for m in _GITHUB_TOKEN.finditer(text):
        yield m.span()
    if "github_pat_" in text:
        for m in _GITHUB_PAT.finditer(text):
            yield m.span()


_GITLAB_TOKEN = re.compile(
    r"gl(?<![A-Za-z0-9_]gl)(?:pat|dt|rt|ptt|ft|imt|oas|soat|cbt|ffct|agent)-[A-Za-z0-9_\-]{20,255}"
    r"(?:\.[A-Za-z0-9_\-]{1,64}){0,3}(?![A-Za-z0-9_\-])"
)


def gitlab_tokens(text: str) -> Iterator[Span]:
    for m in _GITLAB_TOKEN.finditer(text):
        yield m.span()


_OPENAI_KEY = re.compile(r"sk-(?<![A-Za-z0-9_\-]sk-)[A-Za-z0-9_\-]{20,250}(?![A-Za-z0-9_\-])")


def openai_keys(text: str) -> Iterator[Span]:
    if "sk-" not in text:
        return
    for m in _OPENAI_KEY.finditer(text):
        body = m.group()[3:]
        # Random keys mix cases and digits; hyphenated words such as sk-learn-compatible-… do not.
        if any(c.isdigit() for c in body) and any(c.isupper() for c in body) and any(c.islower() for c in body):
            yield m.span()


_AWS_ACCESS_KEY = re.compile(
    r"A(?<![A-Za-z0-9]A)(?:KIA|SIA|IDA|ROA|IPA|NPA|NVA|GPA|BIA|CCA|PKA|SCA|3T[A-Z0-9])[A-Z0-9]{16}(?![A-Za-z0-9])"
)


def aws_access_keys(text: str) -> Iterator[Span]:
    for m in _AWS_ACCESS_KEY.finditer(text):
        yield m.span()


# A 40-character base64 secret counts only next to words that say what it is (aws_secret_access_key = …,
# "SecretAccessKey": "…", secret key: …) or right after an access key id: on its own it is indistinguishable
# from any other identifier. Matched on the lower-cased text, starting at the literal, so the scan is fast.
_AWS_SECRET_NAMED = re.compile(
    r"secret(?:[ _.\-]?(?:access[ _\-]?)?key(?:[ _\-]?id)?|(?<=aws[ _.\-]secret)|(?<=awssecret))"
    r"[\"']?[ \t]{0,4}(?:=>|:=|=|:)[ \t]{0,4}[\"']?([a-z0-9/+]{40})(?![a-z0-9/+=])"
)
_AWS_SECRET_AFTER_KEY = re.compile(r"[\s,;:|\"'=]{1,12}([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])")


def aws_secret_keys(text: str, lower: str, access_keys: list[Span]) -> Iterator[Span]:
    """Named secrets (matched on the lower-cased text) and secrets right after an access key id."""
    if "secret" in lower:
        if len(lower) != len(text):  # a few characters lower-case to two; positions would drift
            lower = "".join(ch if len(ch.lower()) != 1 else ch.lower() for ch in text)
        for m in _AWS_SECRET_NAMED.finditer(lower):
            yield m.span(1)
    for _, end in access_keys:
        after = _AWS_SECRET_AFTER_KEY.match(text, end)
        if after is not None:
            yield after.span(1)


_EMAIL_DOMAIN = re.compile(
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,8}([A-Za-z]{2,24})(?![A-Za-z0-9\-])"
)
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9._%+\-]{1,64}\Z")
# name@2x.png and friends are asset names, not addresses.
_FILE_SUFFIXES = frozenset(
    {
        "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tiff", "css", "scss", "js", "mjs", "cjs", "jsx",
        "tsx", "json", "map", "html", "htm", "txt", "lock", "yaml", "yml", "toml", "ini", "cfg", "conf", "log",
        "xml", "zip", "gz", "tgz", "tar", "whl", "pdf", "csv",
    }
)  # fmt: skip


def emails(text: str) -> Iterator[Span]:
    if "@" not in text:
        return
    for m in _EMAIL_DOMAIN.finditer(text):
        at = m.start()
        if m.group(1).lower() in _FILE_SUFFIXES:
            continue
        local = _EMAIL_LOCAL.search(text, max(0, at - 64), at)
        if local is None:
            continue
        start = local.start()
        while start < at and text[start] == ".":
            start += 1
        if start == at or text[start:at] == "git":  # git@github.com:org/repo is a remote, not a person
            continue
        yield start, m.end()


# Every token format above holds 16 characters of this alphabet in a row; text without such a run (most prose)
# skips all the token detectors after one translate and one substring search.
TOKEN_CHARS = bytes.maketrans(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/_-", b"a" * 66)
LONG_RUN = b"a" * 16
