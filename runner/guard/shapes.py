"""Redaction detectors that work on byte *shapes*: IBANs, card, SSN and phone numbers, IPs, high-entropy tokens.

These kinds have no literal to search for, and scanning text for ``[0-9]`` or ``[A-Z]`` is slow. So candidates
are found on a one-byte-per-character shape of the text (see ``SHAPE``), where they cost a ``memchr``-speed scan,
and only real candidates reach Python, where validators decide (Luhn and issuer prefixes, IBAN lengths and mod-97,
SSN area rules, NANP area codes, IP address ranges, Shannon entropy).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator

from runner.guard.detectors import Span

# Shapes: the text as bytes, one per character, with every ASCII digit turned into "0", upper-case letter into "A",
# lower-case letter or "_" into "a" and anything non-ASCII into "?". Candidate numbers and IBANs are found on the
# shape, where a pattern can start with a plain byte (which ``re`` finds with memchr); the precise patterns then run
# on the text, only at those places. Several times faster than scanning the text for ``[0-9]`` or ``[A-Z]``.
SHAPE = bytes.maketrans(
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_", b"0" * 10 + b"A" * 26 + b"a" * 27
)
_IBAN_SHAPE = re.compile(rb"A(?<![0Aa]A)A00")


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


def ibans(text: str, shape: bytes) -> Iterator[Span]:
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
NUMBER_KINDS = ("card", "ssn", "phone")


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


def numbers(text: str, shape: bytes, kinds: frozenset[str]) -> Iterator[tuple[str, int, int]]:
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


# The optional detectors scan on byte shapes too (see SHAPE): dotted quads on the digit shape, IPv6 on a hex
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


def ip_addresses(text: str, data: bytes) -> Iterator[Span]:
    if "." in text:
        for m in _IPV4_SHAPE.finditer(data.translate(SHAPE)):
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


def high_entropy(text: str, data: bytes) -> Iterator[Span]:
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
