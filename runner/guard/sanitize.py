"""The text sanitizer: every string a sandbox returns passes through here, on the host, before anyone reads it.

Three stages:

1. **Strip** what a person cannot see but a terminal or a model still reads: escape sequences, control
   characters, bidirectional overrides, zero-width and other invisible format characters, Unicode tag
   characters. This comes first so that a secret or an instruction split by a zero-width space is whole
   again for the other two stages.
2. **Detect** prompt injection (instructions, chat-template role markers, hidden text, links that can carry
   data out). Injection is only reported (``flagged`` or ``blocked``), never rewritten: rewriting would hide
   evidence and mangle legitimate text that merely quotes an attack. It runs before redaction so that a
   placeholder cannot break up the URL or phrase it sits in.
3. **Redact** secrets and personal data: each match becomes ``[REDACTED:<kind>]``. Every detector reports
   spans on the same text; where spans of different kinds overlap, the kind with the higher priority keeps its
   span (a password inside a URL is a ``url_password``, not part of an ``email``), and the text is rebuilt once.

Speed matters: this runs on every tool result. All patterns are compiled stdlib ``re`` with bounded
repetitions, and a match attempt can only begin at the start of a run (the negative lookbehind comes *after* a
first literal or character, which also lets ``re`` skip ahead to that character quickly), so the work stays
linear on hostile input. Expensive scans are gated: clean ASCII text leaves stage 1 after one ``bytes.translate``;
each injection rule needs a literal (searched for once per text); token detectors need a run of 16 token
characters; numbers and IBANs are found on a one-byte-per-character *shape* of the text, where candidates cost
a ``memchr``-speed scan and only real candidates reach Python.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import ipaddress
import json
import math
import re
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from runner.guard.findings import BLOCKED, FLAGGED, REDACTED, STRIPPED, FindingLog

# ---------------------------------------------------------------------------------------------------------------
# Names

DETECTORS: frozenset[str] = frozenset(
    {
        "email",
        "phone",
        "card",
        "ssn",
        "iban",
        "aws_access_key",
        "aws_secret_key",
        "github_token",
        "gitlab_token",
        "slack_token",
        "openai_key",
        "jwt",
        "private_key",
        "url_password",
        "ip_address",
        "high_entropy",
    }
)
"""Every redaction detector; each name is also the finding kind it reports."""

OPTIONAL_DETECTORS: frozenset[str] = frozenset({"ip_address", "high_entropy"})
"""Off by default: addresses and random-looking tokens are often the very data a tool is asked for."""

DEFAULT_REDACTIONS: frozenset[str] = DETECTORS - OPTIONAL_DETECTORS

INJECTION_ACTIONS: frozenset[str] = frozenset({"flag", "block"})
MIN_SECRET_LENGTH = 4

SECRET = "secret"
TERMINAL_ESCAPE = "terminal_escape"
CONTROL_CHARS = "control_chars"
BIDI_CONTROL = "bidi_control"
INVISIBLE_CHARS = "invisible_chars"
UNICODE_TAGS = "unicode_tags"
INJECTION_INSTRUCTION = "injection_instruction"
INJECTION_ROLE_MARKER = "injection_role_marker"
INJECTION_HIDDEN_TEXT = "injection_hidden_text"
INJECTION_EXFIL_LINK = "injection_exfil_link"

STRIP_KINDS: frozenset[str] = frozenset({TERMINAL_ESCAPE, CONTROL_CHARS, BIDI_CONTROL, INVISIBLE_CHARS, UNICODE_TAGS})
INJECTION_KINDS: frozenset[str] = frozenset(
    {INJECTION_INSTRUCTION, INJECTION_ROLE_MARKER, INJECTION_HIDDEN_TEXT, INJECTION_EXFIL_LINK}
)


@dataclass(frozen=True)
class SanitizeConfig:
    """What the sanitizer does; a profile's ``sanitize`` settings end up here."""

    enabled: bool = True
    """False: text passes unchanged and nothing is reported (benchmark baseline, trusted profiles)."""
    redact: frozenset[str] = DEFAULT_REDACTIONS
    """Detector names whose matches are redacted; see ``DETECTORS``."""
    injection_action: str = "flag"
    """``flag``: report and keep the text. ``block``: report with action ``blocked`` (the caller drops it)."""
    secrets: tuple[str, ...] = field(default=(), repr=False)
    """Literal secret values the service holds (e.g. injected into the sandbox); any occurrence is redacted."""


def placeholder(kind: str) -> str:
    """The text that replaces a redacted match."""
    return f"[REDACTED:{kind}]"


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: strip

# CSI (ESC [ … final byte), string controls (OSC, DCS, SOS, PM, APC: ESC ] P X ^ _ or their 8-bit forms) up to
# BEL or ST, then any other escape (nF and two-byte forms) or a lone ESC. Every ESC is removed by one of these.
# String payloads stop at any control character, so an unterminated OSC cannot swallow the lines that follow.
_ESCAPES = re.compile(
    r"[\x1b\x90\x98\x9b\x9d\x9e\x9f](?:"
    r"(?<=\x1b)\[[0-?]{0,64}[ -/]{0,8}[@-~]?|(?<=\x9b)[0-?]{0,64}[ -/]{0,8}[@-~]?"
    r"|(?:(?<=\x1b)[\]PX^_]|(?<=[\x90\x98\x9d\x9e\x9f]))[^\x00-\x1f\x7f-\x9f]{0,4096}(?:\x07|\x1b\\|\x9c)?"
    r"|(?<=\x1b)[ -/]{0,8}[0-~]?)"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Invisible format characters other than the joiners: zero-width space, word joiner and the invisible
# operators, deprecated format controls, BOM/ZWNBSP, Mongolian vowel separator, soft hyphen, combining
# grapheme joiner, Hangul fillers, Khmer inherent vowels, interlinear annotation marks, shorthand format
# controls and musical-symbol format controls. Runs of two or more variation selectors carry no meaning in
# any script or emoji sequence and are a known way to smuggle bytes, so they go too; a single selector stays.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180e\u200b\u2060-\u2064\u206a-\u206f\u3164\ufeff\uffa0"
    "\ufff9-\ufffb\U0001bca0-\U0001bca3\U0001d173-\U0001d17a]"
)
_INVISIBLE_SET = frozenset(
    "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180e\u200b\u2060\u2061\u2062\u2063\u2064\u206a\u206b\u206c\u206d"
    "\u206e\u206f\u3164\ufeff\uffa0\ufff9\ufffa\ufffb"
)
_SELECTOR_RUN = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]{2,}")
# ZWNJ/ZWJ are needed between non-ASCII characters (emoji sequences, Persian, Indic scripts); anywhere else,
# or in runs, they only hide things (``ig<ZWJ>nore``).
_JOINERS = re.compile("[\u200c\u200d](?:[\u200c\u200d]+|(?<![^\x00-\x7f][\u200c\u200d])|(?![^\x00-\x7f]))")
_TAG_RUN = re.compile("[\U000e0000-\U000e007f]+")
# An emoji subdivision flag (England, Scotland, Wales…): black flag, 2–6 tag letters/digits, cancel tag.
_FLAG_TAGS = re.compile("[\U000e0030-\U000e0039\U000e0061-\U000e007a]{2,6}\U000e007f")
_BLACK_FLAG = "\U0001f3f4"
_TAG_TO_ASCII = {cp: cp - 0xE0000 for cp in range(0xE0020, 0xE007F)}
_SELECTOR_TO_BYTE = {0xFE00 + i: i for i in range(16)} | {0xE0100 + i: 16 + i for i in range(240)}
# Anything stage 1 acts on, so clean text skips it after one search. A small character class is several times
# faster for ``re`` than one that also holds the astral ranges, so those (tags, supplementary variation selectors,
# shorthand and musical format controls) are found as UTF-8 byte prefixes instead, as are pairs of variation
# selectors (a single one after an emoji is normal and must not send every emoji down the slow path).
_SUSPECT_BMP = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb]"
)
# The same without the joiners, which a separate pass handles (they may stay, depending on their neighbours).
_SUSPECT_RUN = re.compile(_SUSPECT_BMP.pattern.replace("\u200b-\u200f", "\u200b\u200e\u200f") + "+")
_ESCAPE_LEADS = ("\x1b", "\x9b", "\x9d", "\x90", "\x98", "\x9e", "\x9f")
_SUPPLEMENTARY_SELECTORS_UTF8 = (b"\xf3\xa0\x84", b"\xf3\xa0\x85", b"\xf3\xa0\x86", b"\xf3\xa0\x87")
_CONTROL_SET = frozenset(chr(c) for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)])
_BIDI_SET = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_JOINER_SET = frozenset("\u200c\u200d")
_SUSPECT_KIND = (
    dict.fromkeys(_CONTROL_SET, CONTROL_CHARS)
    | dict.fromkeys(_BIDI_SET, BIDI_CONTROL)
    | dict.fromkeys(_INVISIBLE_SET, INVISIBLE_CHARS)
)
_SELECTOR_PAIR_UTF8 = re.compile(rb"\xef\xb8[\x80-\x8f]\xef\xb8[\x80-\x8f]")
_ASCII_ALLOWED = bytes(range(0x20, 0x7F)) + b"\t\n\r"


def _hidden_message(decoded: str) -> bool:
    """Decoded invisible characters that read as text (at least two letters or digits), not noise."""
    return sum(ch.isalnum() for ch in decoded[:64]) >= 2


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: detectors. Each yields (start, end) spans of the text to redact.

Span = tuple[int, int]
_Finder = Callable[[str], Iterator[Span]]

_PRIVATE_KEY_BEGIN = re.compile(
    r"-----BEGIN ((?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP |SSH2 )?PRIVATE KEY(?: BLOCK)?)-----"
)


def _private_keys(text: str) -> Iterator[Span]:
    """Whole PEM blocks; one without its END line runs to the end of the text (better too much than a key)."""
    if "-----BEGIN " not in text:
        return
    pos = 0
    while (m := _PRIVATE_KEY_BEGIN.search(text, pos)) is not None:
        end_line = f"-----END {m.group(1)}-----"
        end = text.find(end_line, m.end())
        if end < 0:
            yield m.start(), len(text)
            return
        pos = end + len(end_line)
        yield m.start(), pos


# user and password of scheme://user:password@host; only the password is redacted. The password may hold ':' or
# '@'; the last '@' before the host wins, as in URL parsers.
_URL_PASSWORD = re.compile(
    r"://(?<=[A-Za-z0-9+.\-]://)[^\s:/?#@\[\]\"'<>]{0,256}:([^\s/?#\"'<>]{1,256})@(?=[A-Za-z0-9\[])"
)


def _url_passwords(text: str) -> Iterator[Span]:
    if "://" not in text or "@" not in text:
        return
    for m in _URL_PASSWORD.finditer(text):
        yield m.span(1)


_SLACK_TOKEN = re.compile(r"xox(?<![A-Za-z0-9_\-]xox)(?:[abposr]|e\.xox[bp])-[A-Za-z0-9\-]{10,250}(?![A-Za-z0-9\-])")
_SLACK_APP_TOKEN = re.compile(r"xapp-(?<![A-Za-z0-9_\-]xapp-)\d-[A-Za-z0-9\-]{10,250}(?![A-Za-z0-9\-])")
_SLACK_WEBHOOK = re.compile(r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/+\-]{10,300}")


def _slack(text: str) -> Iterator[Span]:
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


def _jwts(text: str) -> Iterator[Span]:
    if "eyJ" not in text:
        return
    for m in _JWT.finditer(text):
        if _jwt_header_ok(m.group().split(".", 1)[0]):
            yield m.span()


_GITHUB_TOKEN = re.compile(r"gh[pousr]_(?<![A-Za-z0-9_]gh[pousr]_)[A-Za-z0-9]{36,255}(?![A-Za-z0-9_])")
_GITHUB_PAT = re.compile(r"github_pat_(?<![A-Za-z0-9_]github_pat_)[A-Za-z0-9_]{40,255}(?![A-Za-z0-9_])")


def _github(text: str) -> Iterator[Span]:
    for m in _GITHUB_TOKEN.finditer(text):
        yield m.span()
    if "github_pat_" in text:
        for m in _GITHUB_PAT.finditer(text):
            yield m.span()


_GITLAB_TOKEN = re.compile(
    r"gl(?<![A-Za-z0-9_]gl)(?:pat|dt|rt|ptt|ft|imt|oas|soat|cbt|ffct|agent)-[A-Za-z0-9_\-]{20,255}"
    r"(?:\.[A-Za-z0-9_\-]{1,64}){0,3}(?![A-Za-z0-9_\-])"
)


def _gitlab(text: str) -> Iterator[Span]:
    for m in _GITLAB_TOKEN.finditer(text):
        yield m.span()


_OPENAI_KEY = re.compile(r"sk-(?<![A-Za-z0-9_\-]sk-)[A-Za-z0-9_\-]{20,250}(?![A-Za-z0-9_\-])")


def _openai(text: str) -> Iterator[Span]:
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


def _aws_access(text: str) -> Iterator[Span]:
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


def _aws_secret(text: str, lower: str, access_keys: list[Span]) -> Iterator[Span]:
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


def _emails(text: str) -> Iterator[Span]:
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


# Shapes: the text as bytes, one per character, with every ASCII digit turned into "0", upper-case letter into "A",
# lower-case letter or "_" into "a" and anything non-ASCII into "?". Candidate numbers and IBANs are found on the
# shape, where a pattern can start with a plain byte (which ``re`` finds with memchr); the precise patterns then run
# on the text, only at those places. Several times faster than scanning the text for ``[0-9]`` or ``[A-Z]``.
_SHAPE = bytes.maketrans(
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_", b"0" * 10 + b"A" * 26 + b"a" * 27
)
_IBAN_SHAPE = re.compile(rb"A(?<![0Aa]A)A00")


# Every token format below holds 16 characters of this alphabet in a row; text without such a run (most prose)
# skips all the token detectors after one translate and one substring search.
_TOKEN_CHARS = bytes.maketrans(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/_-", b"a" * 66)
_LONG_RUN = b"a" * 16


# Written without spaces, or with a space after every fourth character (the paper format).
_IBAN = re.compile(
    r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z][0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)"
    r"(?![A-Za-z0-9])"
)
# Registered IBAN lengths by country (SWIFT registry); a country missing here is accepted on its checksum.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30,
    "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27,
    "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24,
    "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29,
    "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


_IBAN_DIGITS = {ord(ch): str(i) for i, ch in enumerate("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")}


def _mod97(iban: str) -> bool:
    return int((iban[4:] + iban[:4]).translate(_IBAN_DIGITS)) % 97 == 1


def _iban_span(candidate: str) -> int:
    """Length of the IBAN at the start of ``candidate`` (spaced ones may run into a following group), or 0."""
    compact = candidate.replace(" ", "")
    expected = _IBAN_LENGTHS.get(compact[:2])
    if expected is None:
        return len(candidate) if 15 <= len(compact) <= 34 and _mod97(compact) else 0
    if len(compact) == expected:
        return len(candidate) if _mod97(compact) else 0
    if len(compact) < expected or " " not in candidate or expected % 4:
        return 0
    # Spaced and followed by more groups: the IBAN ends on the group boundary after ``expected`` characters.
    return expected + expected // 4 - 1 if _mod97(compact[:expected]) else 0


def _ibans(text: str, shape: bytes) -> Iterator[Span]:
    checked: dict[str, int] = {}  # repeated candidates (tables, hostile padding) are checked once per text
    for candidate in _IBAN_SHAPE.finditer(shape):
        m = _IBAN.match(text, candidate.start())
        if m is None:
            continue
        length = checked.get(m.group())
        if length is None:
            length = checked[m.group()] = _iban_span(m.group())
        if length:
            yield m.start(), m.start() + length


# Numbers are found on the shape (one byte per character, digits as "0"): card-, SSN- and phone-shaped runs that
# are not glued to a word or to a longer number. Only those candidates reach Python, where the text is checked
# (Luhn and issuer prefixes, SSN area rules, NANP area codes, consistent separators).
_NUMBER_SHAPE = re.compile(
    rb"0(?<![0Aa.,+\-]0)(?:"
    rb"(?P<ssn>00-00-0000)"
    rb"|(?P<nanp>00[ .\-]000[ .\-]0000|[ .\-]000[ .\-]000[ .\-]0000|[ .\-]\(000\)[ .\-]?000[ .\-]0000)"
    rb"|(?P<card>(?:[ \-]?0){12,18})"
    rb")(?![0Aa\-]|[.,]0)"
)
_PAREN_PHONE_SHAPE = re.compile(rb"\((?<![0Aa+.()\-]\()000\)[ .\-]?000[ .\-]0000(?![0Aa\-]|[.,]0)")
_INTL_PHONE_SHAPE = re.compile(rb"\+(?<![0Aa+)]\+)(?:0[ .()\-]{0,2}){6,14}0(?!0|[.,]0)")
_NUMBER_KINDS = ("card", "ssn", "phone")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_brand(d: str) -> bool:
    """A known issuer prefix with a length that issuer uses (Visa, Mastercard, Amex, Discover, …)."""
    n = len(d)
    p2, p3, p4 = int(d[:2]), int(d[:3]), int(d[:4])
    if d[0] == "4":
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16
    if p2 in (34, 37):
        return n == 15
    if p4 == 6011 or 644 <= p3 <= 649 or p2 in (62, 65) or 3528 <= p4 <= 3589 or 2200 <= p4 <= 2204:
        return 16 <= n <= 19
    if 300 <= p3 <= 305 or p2 in (36, 38, 39):
        return 14 <= n <= 19
    if p4 in (5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763):
        return 13 <= n <= 19
    return False


def _card_ok(candidate: str) -> bool:
    digits = candidate.replace(" ", "").replace("-", "")
    if not 13 <= len(digits) <= 19 or not _card_brand(digits) or not _luhn(digits):
        return False
    seps = {ch for ch in candidate if not ch.isdigit()}
    if not seps:
        return True
    if len(seps) > 1:
        return False
    sizes = [len(g) for g in candidate.split(seps.pop())]
    return sizes in ([4, 6, 5], [4, 6, 4]) or (
        len(sizes) >= 4 and all(s == 4 for s in sizes[:-1]) and 1 <= sizes[-1] <= 4
    )


def _ssn_ok(candidate: str) -> bool:
    area, group, serial = candidate.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _intl_phone_ok(candidate: str) -> bool:
    digits = sum(ch.isdigit() for ch in candidate)
    if not 7 <= digits <= 15 or candidate.count("(") != candidate.count(")"):
        return False
    return candidate.count(".") != 1  # one dot is a decimal point: +1234567.89 is an amount


def _nanp_ok(candidate: str) -> bool:
    """(555) 123-4567, 555-123-4567, 555.123.4567, 1-555-123-4567: area code 2–9, the same separator twice."""
    if candidate[0] == "1" and candidate[1] in " .-":
        candidate = candidate[2:]
    if candidate[0] == "(":
        return candidate[1] not in "01"
    return candidate[0] not in "01" and candidate[3] == candidate[7]


def _numbers(text: str, shape: bytes, kinds: frozenset[str]) -> Iterator[tuple[str, int, int]]:
    """(kind, start, end) for cards, SSNs and phone numbers."""
    checks: dict[str, Callable[[str], bool]] = {"card": _card_ok, "ssn": _ssn_ok, "nanp": _nanp_ok}
    for m in _NUMBER_SHAPE.finditer(shape):
        shape_kind = m.lastgroup or ""
        kind = "phone" if shape_kind == "nanp" else shape_kind
        if kind in kinds and checks[shape_kind](text[m.start() : m.end()]):
            yield kind, m.start(), m.end()
    if "phone" in kinds:
        if "(" in text:
            for m in _PAREN_PHONE_SHAPE.finditer(shape):
                if _nanp_ok(text[m.start() : m.end()]):
                    yield "phone", m.start(), m.end()
        if "+" in text:
            for m in _INTL_PHONE_SHAPE.finditer(shape):
                if _intl_phone_ok(text[m.start() : m.end()]):
                    yield "phone", m.start(), m.end()


# The optional detectors scan on byte shapes too (see _SHAPE): dotted quads on the digit shape, IPv6 on a hex
# shape ("h" for a hex digit, "w" for any other word character) once "::" or three colons say one may be there.
_IPV4_SHAPE = re.compile(rb"0(?<![0Aa.]0)0{0,2}\.0{1,3}\.0{1,3}\.0{1,3}(?![0Aa]|\.0)")
_HEX_SHAPE = bytes(
    ord("h") if chr(b) in "0123456789abcdefABCDEF" else ord("w") if chr(b).isalnum() or b == ord("_") else
    b if chr(b) in ":." else ord(" ")
    for b in range(128)
) + b" " * 128  # fmt: skip
_IPV6_HINT = re.compile(rb"::|:h{1,4}:h{1,4}:")  # not 10:42:00
_IPV6_SHAPE = re.compile(rb"[h:](?<![hw:.][h:])h{0,3}(?::h{0,4}){2,7}(?![hw:]|\.[hw])")
_VERSION_CONTEXT = re.compile(r"(?i)\b(?:version|release|build|ver|v)[\s:=\"']*\Z")


def _ips(text: str, data: bytes) -> Iterator[Span]:
    if "." in text:
        for m in _IPV4_SHAPE.finditer(data.translate(_SHAPE)):
            octets = text[m.start() : m.end()].split(".")
            valid = octets[0] != "0" and all(int(o) <= 255 and (o == "0" or o[0] != "0") for o in octets)
            if valid and _VERSION_CONTEXT.search(text, max(0, m.start() - 12), m.start()) is None:
                yield m.span()
    if ":" in text:
        hexes = data.translate(_HEX_SHAPE)
        if _IPV6_HINT.search(hexes) is None:
            return
        for m in _IPV6_SHAPE.finditer(hexes):
            candidate = text[m.start() : m.end()]
            if sum(1 for group in candidate.split(":") if group) < 3:
                continue  # a[::2], fe80::1, 12:30: too little to be an address worth hiding
            try:
                ipaddress.IPv6Address(candidate)
            except ValueError:
                continue
            yield m.span()


# Token characters become "a", everything else a space: a run of 24 is then found by a long-needle substring
# search, and its ends by rfind/find of a space, all in C.
_RUN_SHAPE = bytes(
    ord("a") if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "+/_-") else ord(" ") for b in range(256)
)
_MIN_TOKEN = b"a" * 24
_MAX_TOKEN = 512
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = frozenset("0123456789abcdefABCDEF")
_DIGEST_LENGTHS = frozenset({32, 40, 56, 64, 96, 128})
_PATH_SEGMENT = re.compile(r"[A-Z]?[a-z0-9_.\-]*|[A-Z][A-Z0-9_]*")  # dir, Dir, NDKROOT; not wJalrXUtnFEMI
_WORDISH = re.compile(r"[a-z]{3,}")
_NOT_KEY_PREFIXES = ("sha1-", "sha256-", "sha384-", "sha512-", "_Z", "__Z")  # SRI digests, mangled C++ symbols


def _entropy(token: str) -> float:
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in Counter(token).values())


def _random_looking(token: str) -> bool:
    """Long, mixed and spread out like a key; not a UUID, a hex digest, a path, an identifier or a word."""
    core = token.rstrip("=")
    if _UUID.search(core) or core.startswith(_NOT_KEY_PREFIXES):
        return False
    if set(core) <= _HEX:
        return len(core) not in _DIGEST_LENGTHS and _entropy(core) >= 3.5
    if "/" in core and all(_PATH_SEGMENT.fullmatch(seg) for seg in core.split("/")):
        return False
    if not (any(c.isdigit() for c in core) and any(c.isupper() for c in core) and any(c.islower() for c in core)):
        return False
    if sum(map(len, _WORDISH.findall(core))) * 2 >= len(core):
        return False  # mostly lower-case runs: ThisIsAVeryLongCamelCaseIdentifier42, not a key
    return _entropy(core) >= min(4.2, 0.5 + math.log2(len(core)) * 0.8)


def _high_entropy(text: str, data: bytes) -> Iterator[Span]:
    runs = data.translate(_RUN_SHAPE)
    size = len(text)
    pos = runs.find(_MIN_TOKEN)
    while pos >= 0:
        start = runs.rfind(b" ", 0, pos) + 1
        end = runs.find(b" ", pos)
        end = size if end < 0 else end
        padded = end
        while padded < size and padded - end < 2 and text[padded] == "=":
            padded += 1
        glued = padded < size and (text[padded] == "=" or runs[padded] == ord("a"))
        if padded - start <= _MAX_TOKEN and not glued and _random_looking(text[start:padded]):
            yield start, padded
        pos = runs.find(_MIN_TOKEN, end)


# ---------------------------------------------------------------------------------------------------------------
# Stage 3: injection. Rules run on the lower-cased text (positions do not matter: nothing is rewritten). A rule
# either starts with its literal (``re`` then skips ahead to it quickly), or is searched only in a small window
# around each occurrence of an anchor literal; text without the anchors costs one substring search per rule.

_WS = r"\s{1,8}"
_QUALIFIER = (
    r"(?:previous|prior|above|preceding|earlier|foregoing|former|original|initial|existing|current|system|"
    r"developer|safety|security|other)"
)
_NOUN = r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guidance|context|constraints|policies)"
_FILLER = r"(?:all|any|each|every|the|your|my|our|these|those|of|that|everything|and)"
_CUES = r"you|your|ignore|must|always|never|respond|reply|answer|instructions?|i will|i'll|sure|certainly"


@dataclass(frozen=True)
class _Rule:
    """A pattern and the lower-case literals it needs; ``back``/``ahead`` > 0: search a window around each."""

    anchors: tuple[str, ...]
    pattern: re.Pattern[str]
    back: int = 0
    ahead: int = 0

    def count(self, lower: str, present: AbstractSet[str]) -> int:
        """Matches in ``lower``, given the anchors ``present`` in it (each text is searched for each anchor once)."""
        anchors = [anchor for anchor in self.anchors if anchor in present]
        if not anchors:
            return 0
        if not self.back and not self.ahead:
            return sum(1 for _ in self.pattern.finditer(lower))
        positions = sorted(pos for anchor in anchors for pos in _occurrences(lower, anchor))
        count, floor, size = 0, 0, len(lower)
        for pos in positions:
            if pos < floor:
                continue
            m = self.pattern.search(lower, max(floor, pos - self.back), min(size, pos + self.ahead))
            if m is not None:
                count += 1
                floor = m.end()
        return count


def _occurrences(text: str, literal: str) -> Iterator[int]:
    pos = text.find(literal)
    while pos >= 0:
        yield pos
        pos = text.find(literal, pos + 1)


def _literal_first(word: str, rest: str) -> re.Pattern[str]:
    """``word`` (not inside a longer word) then ``rest``; starting with a literal keeps the scan fast."""
    return re.compile(rf"{re.escape(word)}(?<![a-z0-9_]{re.escape(word)}){rest}")


_VERB_REST = (
    rf"{_WS}(?:{_FILLER}{_WS}){{0,3}}(?:{_QUALIFIER}{_WS}){{1,2}}(?:[a-z\-]{{1,20}}{_WS})?{_NOUN}\b"
    rf"|{_WS}all{_WS}(?:of{_WS})?(?:the{_WS}|your{_WS})?{_NOUN}\b"
    rf"|{_WS}(?:all{_WS}|any{_WS}|the{_WS})?{_NOUN}{_WS}(?:above|before|given|so{_WS}far|you{_WS}"
    rf"(?:were{_WS}|have{_WS}been{_WS})?(?:given|received|told))\b"
    rf"|{_WS}(?:everything|all){_WS}(?:(?:you{_WS}(?:were{_WS}|have{_WS}been{_WS})?(?:told|given)|that{_WS}"
    rf"came){_WS})?(?:above|before|previously|so{_WS}far)\b"
)
_INSTRUCTION_RULES: tuple[_Rule, ...] = (
    *(
        _Rule((verb,), _literal_first(verb, f"(?:{_VERB_REST})"))
        for verb in ("ignore", "disregard", "forget", "override", "bypass")
    ),
    _Rule(
        ("you",),
        _literal_first(
            "you",
            rf"(?:{_WS}are|'re|’re){_WS}now{_WS}(?:"
            rf"(?:a|an|the|my|your){_WS}(?:[a-z\-]{{1,20}}{_WS}){{0,3}}?(?:assistant|ai|bot|chatbot|model|agent|"
            rf"persona|character|jailbroken|unrestricted|unfiltered|uncensored|hacker|admin|administrator|root)\b"
            rf"|in{_WS}(?:developer|god|debug|jailbreak|dan|unrestricted|admin|sudo){_WS}mode"
            rf"|dan\b|jailbroken|unrestricted|unfiltered|uncensored|free{_WS}(?:of|from)"
            rf"|no{_WS}longer{_WS}(?:bound|restricted|limited|an?{_WS}(?:ai|assistant)|required))",
        ),
    ),
    _Rule(
        ("instruction",),
        re.compile(
            rf"\b(?:new|updated|revised|real|actual|secret|hidden|true|override|system|additional|urgent)"
            rf"{_WS}(?:system{_WS})?instructions?[ \t]*:"
        ),
        back=40,
        ahead=30,
    ),
    _Rule(
        ("the user",),
        re.compile(
            rf"\b(?:do{_WS}not|don't|don’t|never|without){_WS}(?:tell(?:ing)?|inform(?:ing)?|alert(?:ing)?|"
            rf"warn(?:ing)?|mention(?:ing)?(?:{_WS}(?:this|it|anything))?{_WS}to|"
            rf"reveal(?:ing)?(?:{_WS}(?:this|it|anything))?{_WS}to|show(?:ing)?{_WS}(?:this|it){_WS}to|"
            rf"let(?:ting)?){_WS}the{_WS}user\b"
        ),
        back=70,
        ahead=10,
    ),
    _Rule(
        ("override",),
        re.compile(rf"\b(?:system|admin|administrator|developer|security|safety|root){_WS}override\b"),
        back=30,
        ahead=12,
    ),
    _Rule(
        ("mode",),
        re.compile(rf"\b(?:developer|dan|god|jailbreak){_WS}mode{_WS}(?:is{_WS})?(?:enabled|activated|on)\b"),
        back=30,
        ahead=30,
    ),
    _Rule(
        ("prompt", "instruction", "system message"),
        re.compile(
            rf"\b(?:reveal|print|output|show|repeat|display|leak|dump|disclose|tell{_WS}me|send|forward|email|post|"
            rf"upload){_WS}(?:me{_WS})?"
            rf"(?:your|the){_WS}(?:full{_WS}|entire{_WS}|original{_WS}|hidden{_WS}|initial{_WS}|exact{_WS})?"
            rf"(?:system{_WS}prompt|system{_WS}message|initial{_WS}instructions|hidden{_WS}instructions)"
        ),
        back=70,
        ahead=40,
    ),
    _Rule(
        ("conversation", "chat"),
        re.compile(
            rf"\b(?:send|forward|post|upload|email|transmit|exfiltrate|leak){_WS}"
            rf"(?:(?:the|all|this|your|any|of|entire|full|whole|user's|previous|current){_WS}){{0,3}}"
            rf"(?:conversation|chat{_WS}history|chat{_WS}log)\b"
        ),
        back=90,
        ahead=30,
    ),
    _Rule(
        ("ssh", "id_rsa", ".aws/", "mcp.json"),
        re.compile(
            rf"\b(?:read|cat|open|send|upload|exfiltrate|forward|leak|transmit){_WS}"
            rf"(?:(?:the|your|user's|all|contents{_WS}of|content{_WS}of|file){_WS}){{0,3}}"
            rf"(?:~/\.ssh/|\.ssh/id_|ssh{_WS}(?:private{_WS})?keys?\b|id_rsa\b(?!\.pub)|id_ed25519\b(?!\.pub)"
            rf"|\.aws/credentials|mcp\.json)"
        ),
        back=90,
        ahead=30,
    ),
)
_ROLE_RULES: tuple[_Rule, ...] = (_Rule(("inst]",), re.compile(r"\[/?inst\]")),)  # Llama 2 [INST] … [/INST]
# Lines that open a chat turn ("System: you must …", "Assistant: Sure, I will …", "### Instruction:"). One pattern
# that starts at a newline is cheaper than looking for each role word; the first line is matched separately.
_LINE_ROLE = re.compile(
    rf"\n(?:[ \t>*_#\-]{{0,8}}(?:system|assistant|human|developer)[ \t]*:[^\n]{{0,200}}?\b(?:{_CUES})\b"
    r"|[ \t]{0,3}#{2,4}[ \t]*(?:instruction|system(?:[ \t]+prompt)?)[ \t\r]*(?::|(?=\n)|\Z))"
)
# Words that make hidden markup (a comment, an invisible element) an instruction rather than housekeeping.
_CUE = re.compile(
    r"\b(?:ignore|disregard|instructions?|assistant|llm|prompt|as an ai|ai (?:model|agent|assistant)|"
    r"you (?:must|should|are|will|need)|(?:tell|inform) the user|do not (?:tell|mention|reveal)|system prompt)\b"
)
# Everything that starts with '<', in one pass: chat-template special tokens (<|im_start|>, <|eot_id|>, DeepSeek's
# fullwidth <｜…｜>), Llama's <<SYS>>, role tags (<system>, </assistant>), the end-of-sequence token </s>, and the
# <IMPORTANT> wrapper tool-poisoning attacks put around their orders.
_ANGLE = re.compile(
    r"<(?:(?P<token>[|｜][a-z0-9_▁.\-]{2,40}[|｜]>)"
    r"|(?P<sys></?sys>>)"
    r"|(?P<tag>(?:/[ \t]{0,3})?(?:system|system[_\-]prompt|system[_\-]message|assistant|im_start|im_end)[ \t]{0,3}>)"
    r"|(?P<eos>/s>)"
    r"|(?P<important>important>))"
)
_HIDDEN_STYLE = re.compile(
    r"style[ \t]*=[ \t]*[\"'][^\"'>]{0,400}?(?:display[ \t]*:[ \t]*none|visibility[ \t]*:[ \t]*hidden"
    r"|font-size[ \t]*:[ \t]*[01](?:\.0+)?(?:px|pt|em|rem|%)?[ \t]*(?:[;\"'!]|$)"
    r"|opacity[ \t]*:[ \t]*0(?:\.0+)?[ \t]*[;\"'!]"
    r"|(?<![a-z\-])color[ \t]*:[ \t]*(?:white|#fff\b|#ffffff\b|rgba?\([ \t]*255[ \t]*,[ \t]*255[ \t]*,[ \t]*255)"
    r"|(?:height|width|max-height)[ \t]*:[ \t]*0(?:px)?[ \t]*[;\"'!])"
)
# [//]: # (a markdown comment) — renders as nothing
_MARKDOWN_COMMENT = re.compile(r"\]:[ \t]*(?:#|<>)[ \t]*([^\n]{0,500})")
_MARKDOWN_LINK = re.compile(r"\]\([ \t]{0,8}<?([Hh][Tt][Tt][Pp][Ss]?://[^\s()<>\[\]\"'`]{1,2048})")
_HTML_IMAGE = re.compile(r"<img\b[^>]{0,500}?\bsrc[ \t]*=[ \t]*[\"']?(https?://[^\s\"'<>]{1,2048})", re.IGNORECASE)
# An http(s) URL with a template placeholder in it ("…?q={conversation}"); URLs without one fail inside ``re``.
_URL_HEAD = r"://(?:(?<=[Hh][Tt][Tt][Pp]://)|(?<=[Hh][Tt][Tt][Pp][Ss]://))"
_TEMPLATED_URL = re.compile(_URL_HEAD + r"[^\s\"'<>()\[\]`{]{0,2048}\{[^\s\"'<>()\[\]`]{0,2048}")
_ENCODED_TEMPLATE_URL = re.compile(_URL_HEAD + r"[^\s\"'<>()\[\]`]{0,2048}?%7[bB][^\s\"'<>()\[\]`]{0,2048}")
_PLACEHOLDER = re.compile(r"\{\{?[^{}\s]{1,64}\}\}?|%7[bB][^%\s]{1,64}%7[dD]|\$\{[^}\s]{1,64}\}|\$\([^)\s]{1,64}\)")
_QUERY_PLACEHOLDER = re.compile(r"=(?:\{|%7[bB]|\$\{|\$\()")
_IMAGE_PATH = re.compile(r"(?i)\.(?:png|jpe?g|gif|webp|svg|bmp|ico)\b|/(?:img|image|images|pixel|beacon|track)\b")
_ENCODED = re.compile(r"[A-Za-z0-9+/=_\-]+|(?:%[0-9A-Fa-f]{2}[^%]{0,3}){8,}")


def _carries_data(url: str, image: bool) -> bool:
    """Whether a URL can carry data out: template placeholders, encoded blobs, or (for images) any query."""
    if len(url) < 56 and not any(ch in url for ch in "?#{%$"):
        return False  # the common case, decided without parsing
    if image and "?" in url.split("#", 1)[0]:
        return True
    if _PLACEHOLDER.search(url):
        return True
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return True  # a URL Python cannot even split is not a plain link
    if image and parts.query:
        return True
    values = [v for _, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    if parts.fragment:
        values.append(parts.fragment)
    return any(_encoded(piece, 48) for piece in parts.path.split("/")) or any(_encoded(v, 32) for v in values)


def _encoded(piece: str, min_length: int) -> bool:
    """A URL piece that looks like encoded data: long base64 with mixed characters, dense %-escapes, or huge."""
    if len(piece) >= 200:
        return True
    if len(piece) < min_length or _ENCODED.fullmatch(piece) is None:
        return False
    if "%" in piece:
        return True
    return any(c.isdigit() for c in piece) and any(c.isupper() for c in piece) and any(c.islower() for c in piece)


def _anchors(rules: tuple[_Rule, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(anchor for rule in rules for anchor in rule.anchors))


_INSTRUCTION_ANCHORS = _anchors(_INSTRUCTION_RULES)
_DETECT_ANCHORS = (*_INSTRUCTION_ANCHORS, *_anchors(_ROLE_RULES), "<", "<!--", "style", "]:")
"""Every literal stage 3 looks for; a short text usually holds none of them and skips every rule."""


# A single character is found at memchr speed, a longer literal about thirty times slower: when the rarer character
# an anchor needs is absent (prose has no '<' or ']'), the anchor is not searched for at all.
_GATES = {"<!--": "<", "style": "<", "inst]": "]", "]:": "]", ".aws/": "/", "mcp.json": ".", "id_rsa": "_"}


def _present(lower: str, anchors: tuple[str, ...]) -> frozenset[str]:
    """The anchors that occur in ``lower``."""
    gates = {gate for gate in set(_GATES.values()) if gate in lower}
    return frozenset(
        anchor for anchor in anchors if (_GATES.get(anchor) in gates or anchor not in _GATES) and anchor in lower
    )


def _reads_as_instruction(lower: str) -> bool:
    present = _present(lower, _INSTRUCTION_ANCHORS)
    return _CUE.search(lower) is not None or any(rule.count(lower, present) for rule in _INSTRUCTION_RULES)


def _instruction_count(bodies: list[str]) -> int:
    """How many of ``bodies`` read like an instruction; one test on them all first, as most are housekeeping."""
    if not bodies or not _reads_as_instruction("\n".join(bodies)):
        return 0
    return sum(1 for body in bodies if _reads_as_instruction(body))


def _hidden_comments(lower: str) -> int:
    """HTML comments whose body reads like an instruction; an unterminated one runs to the end."""
    bodies = []
    pos = lower.find("<!--")
    while pos >= 0:
        end = lower.find("-->", pos + 4)
        bodies.append(lower[pos + 4 : end if end >= 0 else len(lower)])
        if end < 0:
            break
        pos = lower.find("<!--", end + 3)
    return _instruction_count(bodies)


def _hidden_styles(lower: str) -> int:
    """Elements styled invisible (display:none, zero size, white text) whose content reads like an instruction."""
    bodies = []
    for m in _HIDDEN_STYLE.finditer(lower):
        tag_end = lower.find(">", m.end(), m.end() + 2000)
        if tag_end < 0:
            continue
        close = lower.find("</", tag_end, tag_end + 2000)
        bodies.append(lower[tag_end + 1 : close if close >= 0 else tag_end + 2000])
    return _instruction_count(bodies)


def _markdown_comments(lower: str) -> int:
    """``[//]: # (…)`` reference-definition comments (they render as nothing) that read like an instruction."""
    bodies = []
    for m in _MARKDOWN_COMMENT.finditer(lower):
        window = max(0, m.start() - 41)  # the label is short; never look further back (no quadratic rescans)
        newline = lower.rfind("\n", window, m.start())
        line_start = newline + 1 if newline >= 0 else 0 if window == 0 else -1
        if line_start >= 0 and lower.startswith("[", line_start):
            bodies.append(m.group(1))
    return _instruction_count(bodies)


def _role_lines(lower: str) -> int:
    first = _LINE_ROLE.match("\n" + lower[:300])
    rest = sum(1 for _ in _LINE_ROLE.finditer(lower))
    return rest + (first is not None)


def _end_of_sequence(lower: str, start: int, end: int) -> bool:
    """``</s>`` as a chat-template end-of-sequence token, not as the end of an HTML ``<s>`` strikethrough."""
    window = max(0, start - 2000)
    line_start = max(lower.rfind("\n", window, start) + 1, window)
    opened = lower.rfind("<s>", line_start, start)
    after = lower[end : end + 16].lstrip()
    return opened < 0 or lower.rfind("</s>", opened, start) >= 0 or after.startswith(("<s>", "[inst]", "<|"))


def _angle_markers(lower: str) -> tuple[int, int]:
    """(instructions, role markers) among the tags and tokens that start with '<'."""
    instructions = markers = 0
    for m in _ANGLE.finditer(lower):
        if m.group("important") is not None:
            instructions += 1
        elif m.group("eos") is None or _end_of_sequence(lower, m.start(), m.end()):
            markers += 1
    return instructions, markers


def _exfil_links(text: str, lower: str) -> int:
    """Markdown links and images, HTML images and templated URLs that could carry data to someone else."""
    count = 0
    seen: set[int] = set()
    if "](" in text:
        for m in _MARKDOWN_LINK.finditer(text):
            window = max(0, m.start() - 500)
            opened = text.rfind("[", max(text.rfind("\n", window, m.start()) + 1, window), m.start())
            if opened < 0:
                continue
            seen.add(m.start(1))
            if _carries_data(m.group(1), image=opened > 0 and text[opened - 1] == "!"):
                count += 1
    if "<img" in lower:
        for m in _HTML_IMAGE.finditer(text):
            seen.add(m.start(1))
            if _carries_data(m.group(1), image=True):
                count += 1
    for trigger, pattern in (("{", _TEMPLATED_URL), ("%7b", _ENCODED_TEMPLATE_URL)):
        if trigger not in lower:
            continue
        for m in pattern.finditer(text):
            start = m.start() - (5 if text[m.start() - 1] in "sS" else 4)
            if start in seen or not _PLACEHOLDER.search(m.group()):
                continue
            seen.add(start)
            if _QUERY_PLACEHOLDER.search(m.group()) or _IMAGE_PATH.search(m.group()):
                count += 1
    return count


# ---------------------------------------------------------------------------------------------------------------


def check_config(config: SanitizeConfig) -> None:
    """ValueError naming what is wrong and what is allowed; run once, when a profile is loaded."""
    unknown = sorted(set(config.redact) - DETECTORS)
    if unknown:
        raise ValueError(f"unknown detector(s) {', '.join(unknown)}; valid: {', '.join(sorted(DETECTORS))}")
    if config.injection_action not in INJECTION_ACTIONS:
        raise ValueError(
            f"unknown injection_action {config.injection_action!r}; valid: {', '.join(sorted(INJECTION_ACTIONS))}"
        )
    for i, secret in enumerate(config.secrets):
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
            # never echo the value: it is a secret, even when it is a bad one
            raise ValueError(f"secrets[{i}] is shorter than {MIN_SECRET_LENGTH} characters; it would redact noise")


def _secret_forms(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """Each secret as written, URL-encoded and JSON-escaped; longest first so a longer secret wins."""
    forms: set[str] = set()
    for secret in secrets:
        forms.add(secret)
        forms.add(urllib.parse.quote(secret, safe=""))
        forms.add(urllib.parse.quote_plus(secret, safe=""))
        forms.add(json.dumps(secret)[1:-1])
    return tuple(sorted(forms, key=lambda s: (-len(s), s)))


class Sanitizer:
    """Cleans untrusted text according to one ``SanitizeConfig``; safe to share between threads."""

    def __init__(self, config: SanitizeConfig) -> None:
        check_config(config)
        self.config = config
        self._enabled = config.enabled
        self._redact = frozenset(config.redact)
        self._secrets = _secret_forms(config.secrets)
        self._injection_action = BLOCKED if config.injection_action == "block" else FLAGGED
        self._numbers = frozenset(k for k in _NUMBER_KINDS if k in self._redact)
        self._aws = bool(self._redact & {"aws_access_key", "aws_secret_key"})
        # Overlaps are settled by _PRIORITY, not by this order.
        anywhere: list[tuple[str, _Finder]] = [
            ("private_key", _private_keys),
            ("url_password", _url_passwords),
            ("jwt", _jwts),  # short headers ({"alg":"none"}) can slip under the token gate; "eyJ" is gate enough
        ]
        self._anywhere = [(kind, find) for kind, find in anywhere if kind in self._redact]
        tokens: list[tuple[str, _Finder]] = [
            ("slack_token", _slack),
            ("github_token", _github),
            ("gitlab_token", _gitlab),
            ("openai_key", _openai),
        ]
        self._tokens = [(kind, find) for kind, find in tokens if kind in self._redact]
        tail: list[tuple[str, Callable[[str, bytes], Iterator[Span]]]] = [
            ("ip_address", _ips),
            ("high_entropy", _high_entropy),
        ]
        self._tail = [(kind, find) for kind, find in tail if kind in self._redact]

    def text(self, text: str, where: str, log: FindingLog) -> str:
        """``text`` stripped and redacted; what was found is added to ``log`` under ``where``."""
        if not self._enabled or not text:
            return text
        text = self._strip(text, where, log)
        lower = text.lower()
        # Injection is looked for before redaction: a placeholder must not break up the URL or phrase it is in.
        self._detect_injection(text, lower, where, log)
        return self._redact_spans(text, lower, where, log)

    # -- stage 1 ----------------------------------------------------------------------------------------------

    def _strip(self, text: str, where: str, log: FindingLog) -> str:
        if text.isascii():
            if not text.encode("ascii").translate(None, _ASCII_ALLOWED):  # in C, several times faster than re
                return text
            if "\x1b" in text:
                text, n = _ESCAPES.subn("", text)
                log.add(TERMINAL_ESCAPE, STRIPPED, where, n)
            return self._strip_chars(_CONTROLS, text, CONTROL_CHARS, where, log)
        # One search tells whether anything in the BMP needs stripping; the astral suspects (tags, supplementary
        # variation selectors, shorthand and musical format controls) are found as UTF-8 byte prefixes, which is
        # much cheaper than a character class that holds them.
        first = _SUSPECT_BMP.search(text)
        data = text.encode("utf-8", "surrogatepass")
        tags = b"\xf3\xa0\x80" in data or b"\xf3\xa0\x81" in data
        selectors = any(lead in data for lead in _SUPPLEMENTARY_SELECTORS_UTF8) or (
            b"\xef\xb8" in data and _SELECTOR_PAIR_UTF8.search(data) is not None
        )
        other = b"\xf0\x9b\xb2" in data or b"\xf0\x9d\x85" in data
        if first is None and not (tags or selectors or other):
            return text
        invisible = 0
        joiners = False
        if first is not None:
            if any(lead in text for lead in _ESCAPE_LEADS):  # one memchr each
                text, n = _ESCAPES.subn("", text)
                log.add(TERMINAL_ESCAPE, STRIPPED, where, n)
            counts = Counter[str]()

            def strip_run(m: re.Match[str]) -> str:
                counts.update(m.group())  # one pass for controls, bidi and invisible characters alike
                return ""

            text = _SUSPECT_RUN.sub(strip_run, text)
            joiners = "\u200c" in text or "\u200d" in text
            by_kind = Counter[str]()
            for ch, n in counts.items():
                by_kind[_SUSPECT_KIND.get(ch, "")] += n
            log.add(CONTROL_CHARS, STRIPPED, where, by_kind[CONTROL_CHARS])
            log.add(BIDI_CONTROL, STRIPPED, where, by_kind[BIDI_CONTROL])
            invisible = by_kind[INVISIBLE_CHARS]
        if tags:
            text = self._strip_tags(text, where, log)
        before = len(text)
        if selectors:
            text = _SELECTOR_RUN.sub(lambda m: self._hidden_bytes(m.group(), where, log), text)
        if other:
            text = _INVISIBLE.sub("", text)
        if joiners:
            text = _JOINERS.sub("", text)
        log.add(INVISIBLE_CHARS, STRIPPED, where, invisible + before - len(text))
        return text

    @staticmethod
    def _strip_chars(pattern: re.Pattern[str], text: str, kind: str, where: str, log: FindingLog) -> str:
        text, n = pattern.subn("", text)
        log.add(kind, STRIPPED, where, n)
        return text

    def _strip_tags(self, text: str, where: str, log: FindingLog) -> str:
        removed = 0
        hidden = 0

        def strip(m: re.Match[str]) -> str:
            nonlocal removed, hidden
            run = m.group()
            if text.endswith(_BLACK_FLAG, 0, m.start()) and _FLAG_TAGS.fullmatch(run):
                return run  # an emoji subdivision flag, drawn as one picture
            removed += len(run)
            if _hidden_message(run.translate(_TAG_TO_ASCII)):
                hidden += 1
            return ""

        text = _TAG_RUN.sub(strip, text)
        log.add(UNICODE_TAGS, STRIPPED, where, removed)
        log.add(INJECTION_HIDDEN_TEXT, self._injection_action, where, hidden)
        return text

    def _hidden_bytes(self, run: str, where: str, log: FindingLog) -> str:
        """A run of variation selectors, decoded the way byte-smuggling tools encode it."""
        data = run.translate(_SELECTOR_TO_BYTE).encode("latin-1")
        if _hidden_message(data.decode("utf-8", "replace")):
            log.add(INJECTION_HIDDEN_TEXT, self._injection_action, where)
        return ""

    # -- stage 2 ----------------------------------------------------------------------------------------------

    def _redact_spans(self, text: str, lower: str, where: str, log: FindingLog) -> str:
        found: list[tuple[str, int, int]] = []
        for secret in self._secrets:
            pos = text.find(secret)
            while pos >= 0:
                found.append((SECRET, pos, pos + len(secret)))
                pos = text.find(secret, pos + len(secret))
        for kind, find in self._anywhere:
            found.extend((kind, start, end) for start, end in find(text))
        data = text.encode("ascii", "replace")  # one byte per character, so offsets stay the same
        if _LONG_RUN in data.translate(_TOKEN_CHARS):  # every token format holds 16 key characters in a row
            for kind, find in self._tokens:
                found.extend((kind, start, end) for start, end in find(text))
            if self._aws:
                access_keys = list(_aws_access(text))
                if "aws_access_key" in self._redact:
                    found.extend(("aws_access_key", start, end) for start, end in access_keys)
                if "aws_secret_key" in self._redact:
                    found.extend(("aws_secret_key", start, end) for start, end in _aws_secret(text, lower, access_keys))
        if "email" in self._redact:
            found.extend(("email", start, end) for start, end in _emails(text))
        if "iban" in self._redact or self._numbers:
            shape = data.translate(_SHAPE)
            if "iban" in self._redact:
                found.extend(("iban", start, end) for start, end in _ibans(text, shape))
            if self._numbers:
                found.extend(_numbers(text, shape, self._numbers))
        for kind, find_in in self._tail:
            found.extend((kind, start, end) for start, end in find_in(text, data))
        if not found:
            return text
        return _apply(text, found, where, log)

    # -- stage 3 ----------------------------------------------------------------------------------------------

    def _detect_injection(self, text: str, lower: str, where: str, log: FindingLog) -> None:
        action = self._injection_action
        present = _present(lower, _DETECT_ANCHORS)
        instructions, markers = _angle_markers(lower) if "<" in present else (0, 0)
        if present:
            instructions += sum(rule.count(lower, present) for rule in _INSTRUCTION_RULES)
            markers += sum(rule.count(lower, present) for rule in _ROLE_RULES)
        log.add(INJECTION_INSTRUCTION, action, where, instructions)
        if "\n" in lower or ":" in lower or "#" in lower:  # a role line needs a colon or a heading
            markers += _role_lines(lower)
        log.add(INJECTION_ROLE_MARKER, action, where, markers)
        hidden = 0
        if "<!--" in present:
            hidden += _hidden_comments(lower)
        if "style" in present:
            hidden += _hidden_styles(lower)
        if "]:" in present:
            hidden += _markdown_comments(lower)
        log.add(INJECTION_HIDDEN_TEXT, action, where, hidden)
        if "://" in text:
            log.add(INJECTION_EXFIL_LINK, action, where, _exfil_links(text, lower))


_PRIORITY = {
    kind: i
    for i, kind in enumerate(
        (SECRET, "private_key", "url_password", "slack_token", "jwt", "github_token", "gitlab_token", "openai_key",
         "aws_access_key", "aws_secret_key", "email", "iban", "card", "ssn", "phone", "ip_address", "high_entropy")
    )
}  # fmt: skip


def _choose(found: list[tuple[str, int, int]]) -> list[tuple[int, int, str]]:
    """Disjoint spans sorted by start; on overlap the detector with the higher priority keeps its span.

    Kinds are merged in priority order with a linear sweep each, so thousands of spans stay cheap.
    """
    by_kind: dict[str, list[tuple[int, int]]] = {}
    for kind, start, end in found:
        if end > start:
            by_kind.setdefault(kind, []).append((start, end))
    chosen: list[tuple[int, int, str]] = []
    for kind in sorted(by_kind, key=_PRIORITY.__getitem__):
        merged: list[list[int]] = []  # overlapping spans of one kind become one (secrets inside secrets)
        for start, end in sorted(by_kind[kind]):
            if merged and start < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        accepted: list[tuple[int, int, str]] = []
        i = 0
        for start, end in merged:
            while i < len(chosen) and chosen[i][1] <= start:
                i += 1
            if i < len(chosen) and chosen[i][0] < end:
                continue  # overlaps a span a detector with higher priority claimed
            accepted.append((start, end, kind))
        chosen = list(heapq.merge(chosen, accepted))
    return chosen


def _apply(text: str, found: list[tuple[str, int, int]], where: str, log: FindingLog) -> str:
    """Replace the chosen spans with placeholders and count what each detector redacted."""
    chosen = _choose(found)
    counts: dict[str, int] = {}
    out: list[str] = []
    pos = 0
    for start, end, kind in chosen:
        out.append(text[pos:start])
        out.append(placeholder(kind))
        counts[kind] = counts.get(kind, 0) + 1
        pos = end
    out.append(text[pos:])
    for kind, n in counts.items():
        log.add(kind, REDACTED, where, n)
    return "".join(out)
