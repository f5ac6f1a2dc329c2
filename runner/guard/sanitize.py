"""The text sanitizer: every string a sandbox returns passes through here, on the host, before anyone reads it.

This module holds the configuration, the order of the stages and the final rewrite; each stage lives in its own
module of this package:

1. **Strip** (``strip``) what a person cannot see but a terminal or a model still reads. This comes first so that
   a secret or an instruction split by a zero-width space is whole again for the other two stages (also where a
   profile turns sanitizing off: the service's own secrets are looked for in the stripped text too).
2. **Detect** prompt injection (``injection``). It is only reported, never rewritten, and it runs before
   redaction so that a placeholder cannot break up the URL or phrase it sits in.
3. **Redact** secrets and personal data (``detectors`` for credentials and e-mail, ``shapes`` for numbers,
   IBANs, addresses and random tokens): each match becomes ``[REDACTED:<kind>]``. Every detector reports spans on
   the same text; where spans of different kinds overlap, the kind with the higher priority keeps its span (a
   password inside a URL is a ``url_password``, not part of an ``email``), and the text is rebuilt once, here.

Stages 2 and 3 look at a compatibility-folded copy of the text (NFKC, character by character), so that fullwidth
or mathematical letters (``ｉｇｎｏｒｅ``, ``ｇｈｐ＿…``) read as what they look like; the text itself keeps its
characters, and a redaction found on the copy is mapped back to the characters it came from. Injection is looked
for with Cyrillic and Greek look-alikes read as Latin letters too (``read_as_latin``), which NFKC leaves alone.

Speed matters: this runs on every tool result. All patterns are compiled stdlib ``re`` with bounded
repetitions, and a match attempt can only begin at the start of a run (the negative lookbehind comes *after* a
first literal or character, which also lets ``re`` skip ahead to that character quickly), so the work stays
linear on hostile input. Expensive scans are gated; each stage module says how.
"""

from __future__ import annotations

import base64
import bisect
import heapq
import json
import operator
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, count

from runner.guard.detectors import (
    LONG_RUN,
    TOKEN_CHARS,
    Finder,
    Span,
    aws_access_keys,
    aws_secret_keys,
    emails,
    github_tokens,
    gitlab_tokens,
    jwts,
    openai_keys,
    private_keys,
    slack_tokens,
    url_passwords,
)
from runner.guard.findings import BLOCKED, FLAGGED, REDACTED, FindingLog
from runner.guard.folding import fold, fold_map, unfold
from runner.guard.injection import detect as detect_injection
from runner.guard.injection import may_detect, read_as_latin
from runner.guard.kinds import BIDI_CONTROL as BIDI_CONTROL
from runner.guard.kinds import CONTROL_CHARS as CONTROL_CHARS
from runner.guard.kinds import INJECTION_EXFIL_LINK as INJECTION_EXFIL_LINK
from runner.guard.kinds import INJECTION_HIDDEN_TEXT as INJECTION_HIDDEN_TEXT
from runner.guard.kinds import INJECTION_INSTRUCTION as INJECTION_INSTRUCTION
from runner.guard.kinds import INJECTION_KINDS as INJECTION_KINDS
from runner.guard.kinds import INJECTION_ROLE_MARKER as INJECTION_ROLE_MARKER
from runner.guard.kinds import INVISIBLE_CHARS as INVISIBLE_CHARS
from runner.guard.kinds import SECRET as SECRET
from runner.guard.kinds import STRIP_KINDS as STRIP_KINDS
from runner.guard.kinds import TERMINAL_ESCAPE as TERMINAL_ESCAPE
from runner.guard.kinds import UNICODE_TAGS as UNICODE_TAGS
from runner.guard.shapes import NUMBER_KINDS, SHAPE, high_entropy, ibans, ip_addresses, numbers
from runner.guard.strip import strip

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
_MIN_BASE64_FORM = 8
"""Shorter base64 pieces of a short secret would be found by chance in any long base64 text."""
_URLSAFE = str.maketrans("+/", "-_")
_ASCII_ESCAPE = re.compile(r"(%[0-7][0-9A-Fa-f]|(?<!\\)\\++(?:u00[0-7][0-9A-Fa-f]|x[0-7][0-9A-Fa-f]|/))")
"""An ASCII character spelled as a URL escape (``%5F``) or as JSON and ``repr`` spell it (``\\u0041``, ``\\x41``,
``\\/``): whoever decodes the text reads the character. Its backslash may be doubled, as often as the text was
quoted again (``repr`` of ``ghp\\u005f…`` in an error message is ``ghp\\\\u005f…``): a reader sees through that too.
A run of backslashes is read once, from its first one and without backtracking: else a line of them costs
quadratic time."""
_LINE_BREAK = re.compile(r"(\r?\n[ \t]*)")


class _Escapes(dict[str, str]):
    """What each escape spells; an escape whose backslash was doubled spells what it does with one."""

    def __missing__(self, escape: str) -> str:
        return self["\\" + escape.lstrip("\\")]


_UNESCAPED = _Escapes({"\\/": "/"})
_UNESCAPED.update(
    (f"{lead}{digits}", chr(code))
    for code in range(128)
    for digits in {f"{code:02x}", f"{code:02X}"}
    for lead in ("%", "\\u00", "\\x")
)
_IDENTIFIER_JOINT = re.compile(r"[_.\-]+|(?<=[a-z0-9])(?=[A-Z])")
"""Where an identifier joins its words: separators, and a capital after a small letter or digit (camelCase)."""
_LOCATOR_JOINT = re.compile(r"[_.\-/+=&?#:;,~]+|(?<=[a-z0-9])(?=[A-Z])")
"""The same for a URI, whose path segments and query parameters join words too."""


@dataclass(frozen=True)
class SanitizeConfig:
    """What the sanitizer does; a profile's ``sanitize`` settings end up here."""

    enabled: bool = True
    """False: text passes unchanged except for ``secrets``, which are always redacted (trusted profiles, bench)."""
    redact: frozenset[str] = DEFAULT_REDACTIONS
    """Detector names whose matches are redacted; see ``DETECTORS``."""
    injection_action: str = "flag"
    """``flag``: report and keep the text. ``block``: report with action ``blocked`` (the caller drops it)."""
    secrets: tuple[str, ...] = field(default=(), repr=False)
    """Literal secret values the service holds (e.g. injected into the sandbox); any occurrence is redacted."""


def placeholder(kind: str) -> str:
    """The text that replaces a redacted match."""
    return f"[REDACTED:{kind}]"


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
    """Each secret as written, URL-encoded, JSON-escaped and base64-encoded; longest first so a longer secret wins."""
    forms: set[str] = set()
    for secret in secrets:
        forms.add(secret)
        forms.add(urllib.parse.quote(secret, safe=""))
        forms.add(urllib.parse.quote_plus(secret, safe=""))
        forms.add(json.dumps(secret)[1:-1])
        forms.update(_base64_forms(secret.encode("utf-8", "surrogatepass")))
    return tuple(sorted(forms, key=lambda s: (-len(s), s)))


def _base64_forms(secret: bytes) -> set[str]:
    """What the secret turns into inside any base64 text that holds it (``Authorization: Basic`` of
    ``user:secret``, a config file sent as a blob): for each of the three alignments it can start at, the
    characters made of its bits alone, in both alphabets."""
    forms: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + secret).decode("ascii")
        first, end = (8 * offset + 5) // 6, 8 * (offset + len(secret)) // 6  # characters wholly the secret's bits
        stable = encoded[first:end]
        if len(stable) >= _MIN_BASE64_FORM:
            forms.update((stable, stable.translate(_URLSAFE)))
    return forms


class Sanitizer:
    """Cleans untrusted text according to one ``SanitizeConfig``; safe to share between threads."""

    def __init__(self, config: SanitizeConfig) -> None:
        check_config(config)
        self.config = config
        self._enabled = config.enabled
        self._redact = frozenset(config.redact)
        self._secrets = _secret_forms(config.secrets)
        self._wrappable = tuple(form for form in self._secrets if len(form) >= _MIN_BASE64_FORM)
        self._injection_action = BLOCKED if config.injection_action == "block" else FLAGGED
        self._numbers = frozenset(k for k in NUMBER_KINDS if k in self._redact)
        self._aws = bool(self._redact & {"aws_access_key", "aws_secret_key"})
        # Overlaps are settled by _PRIORITY, not by this order.
        anywhere: list[tuple[str, Finder]] = [
            ("private_key", private_keys),
            ("url_password", url_passwords),
            ("jwt", jwts),  # short headers ({"alg":"none"}) can slip under the token gate; "eyJ" is gate enough
        ]
        self._anywhere = [(kind, find) for kind, find in anywhere if kind in self._redact]
        tokens: list[tuple[str, Finder]] = [
            ("slack_token", slack_tokens),
            ("github_token", github_tokens),
            ("gitlab_token", gitlab_tokens),
            ("openai_key", openai_keys),
        ]
        self._tokens = [(kind, find) for kind, find in tokens if kind in self._redact]
        tail: list[tuple[str, Callable[[str, bytes], Iterator[Span]]]] = [
            ("ip_address", ip_addresses),
            ("high_entropy", high_entropy),
        ]
        self._tail = [(kind, find) for kind, find in tail if kind in self._redact]

    def text(self, text: str, where: str, log: FindingLog) -> str:
        """``text`` stripped and redacted; what was found is added to ``log`` under ``where``."""
        return self._clean(text, where, log)

    def locator(self, text: str, where: str, log: FindingLog) -> str:
        """A URI, URI template or MIME type: stripped and redacted, and searched for prompt injection read with its
        %-escapes decoded, but not for links that carry data (a query or a template placeholder is what a URI is
        made of, not a sign of an attack). Poison in an icon's ``src`` or a MIME type's parameters is poison, and
        so are its words joined as a URI joins them (``?q=ignore+all+previous+instructions``, ``/ignore-all-…``)."""
        found = FindingLog()
        clean = self._clean(text, where, found, links=False)
        if self._enabled and not any(f.kind in INJECTION_KINDS for f in found.findings()):
            self._words(urllib.parse.unquote_plus(text), where, found, _LOCATOR_JOINT)
        log.extend(found.findings())
        return clean

    def injection(self, text: str, where: str, log: FindingLog) -> None:
        """Prompt injection only, nothing rewritten: for text a reader sees as one but that arrives in pieces (the
        seam between two content blocks)."""
        if self._enabled and not (text.isascii() and not may_detect(text.lower())):
            folded, _ = fold(strip(text, where, FindingLog(), self._injection_action))
            detect_injection(folded, read_as_latin(folded), where, log, self._injection_action)

    def words(self, text: str, where: str, log: FindingLog) -> None:
        """Prompt injection in an identifier read as the words it joins (``ignore_all_previous_instructions``,
        ``ignorePreviousInstructions``): only reported, the identifier itself is ``text``'s business."""
        if self._enabled:
            self._words(text, where, log, _IDENTIFIER_JOINT)

    def _words(self, text: str, where: str, log: FindingLog, joint: re.Pattern[str]) -> None:
        if text.isascii() and not may_detect(text.lower()):
            return  # the common case: a plain identifier (first_name, maxDays) holds no word a rule starts from
        spaced = joint.sub(" ", strip(text, where, FindingLog(), self._injection_action))
        folded, _ = fold(spaced)
        detect_injection(folded, read_as_latin(folded), where, log, self._injection_action, links=False)

    def _clean(self, text: str, where: str, log: FindingLog, *, links: bool = True) -> str:
        if not text:
            return text
        if not self._enabled:
            return self._own_secrets(text, where, log)
        text = strip(text, where, log, self._injection_action)
        folded, shifted = fold(text)
        lower = folded.lower()
        # Injection is looked for before redaction: a placeholder must not break up the URL or phrase it is in.
        read = folded if links or "%" not in folded else urllib.parse.unquote(folded)
        latin = lower if read is folded and folded.isascii() else read_as_latin(read)
        detect_injection(folded, latin, where, log, self._injection_action, links=links)
        found = self._spans(folded, lower)
        if "%" in folded or "\\" in folded:
            found += self._escaped_spans(folded, self._spans)
        if "\n" in folded and self._wrappable:
            found += self._wrapped_spans(folded)
        if folded is not text:
            origin = fold_map(text) if found and shifted else None  # only text with a finding pays for the map
            found = [(kind, *unfold(start, end, origin)) for kind, start, end in found] + self._secret_spans(text)
        return _apply(text, found, where, log) if found else text

    def _own_secrets(self, text: str, where: str, log: FindingLog) -> str:
        """Sanitizing off: only the service's own secrets go, however they are spelled: split by invisible
        characters, in compatibility forms (``Ｏwn…``), or with escapes (``%4Fwn…``, ``\\u004fwn…``)."""
        found = self._secret_spans(text)
        stripping = FindingLog()
        stripped = strip(text, where, stripping, FLAGGED)
        hidden = self._secret_spans(stripped)
        folded, shifted = fold(stripped)
        if folded is not stripped or "%" in folded or "\\" in folded or "\n" in folded:
            spelled = self._secret_spans(folded) + self._escaped_spans(folded, self._secret_spans)
            spelled += self._wrapped_spans(folded) if "\n" in folded and self._wrappable else []
            origin = fold_map(stripped) if spelled and shifted else None
            hidden += [(kind, *unfold(start, end, origin)) for kind, start, end in spelled]
        if len(_choose(hidden)) > len(_choose(found)):
            log.extend(stripping.findings())
            return _apply(stripped, hidden, where, log)
        return _apply(text, found, where, log) if found else text

    def redact_secrets(self, text: str) -> str:
        """``text`` with only the service's own secrets redacted: for records of what a caller sent."""
        found = self._secret_spans(text)
        return _apply(text, found, "", FindingLog()) if found else text

    # -- redaction -----------------------------------------------------------------------------------------------------

    def _secret_spans(self, text: str, lower: str = "") -> list[tuple[str, int, int]]:
        """Every occurrence of one of the service's own secrets (``lower`` is unused: ``_spans``'s signature)."""
        found: list[tuple[str, int, int]] = []
        for secret in self._secrets:
            pos = text.find(secret)
            while pos >= 0:
                found.append((SECRET, pos, pos + len(secret)))
                pos = text.find(secret, pos + len(secret))
        return found

    def _wrapped_spans(self, text: str) -> list[tuple[str, int, int]]:
        """The service's own secrets wrapped across lines: ``base64`` wraps its output at 76 columns and PEM at 64,
        so the base64 form of ``user:secret`` in a config file sent as text can hold a line break (and the
        indentation of a YAML block after it). Found with the breaks taken out, and mapped back across them."""
        pieces = _LINE_BREAK.split(text)
        joined = "".join(pieces[0::2])
        found: list[tuple[str, int, int]] = []
        for secret in self._wrappable:
            pos = joined.find(secret)
            while pos >= 0:
                found.append((SECRET, pos, pos + len(secret)))
                pos = joined.find(secret, pos + len(secret))
        if not found:
            return []
        at = list(accumulate(map(len, pieces[0:-1:2])))  # where in ``joined`` each break was taken out
        taken = list(accumulate(map(len, pieces[1::2]), initial=0))  # characters taken out before each

        def back(pos: int) -> int:
            """Where the character at ``pos`` of ``joined`` sits in ``text``."""
            return pos + taken[bisect.bisect_right(at, pos)]

        return [(kind, back(start), back(end - 1) + 1) for kind, start, end in found]

    def _escaped_spans(
        self, text: str, find: Callable[[str, str], list[tuple[str, int, int]]]
    ) -> list[tuple[str, int, int]]:
        """What ``find`` redacts that is spelled with escapes (``ghp%5F…``, ``sk%2D…``, ``ghp_\\u0041…``): found on
        a decoded copy, and mapped back to the escapes it came from. Only ASCII is decoded: every credential
        format is ASCII."""
        pieces = _ASCII_ESCAPE.split(text)  # plain text, escape, plain text, …: the work stays in C
        if len(pieces) == 1:
            return []
        escapes = pieces[1::2]
        plain = list(map(len, pieces[0::2]))
        at = list(map(operator.add, accumulate(plain[:-1]), count()))  # where each escape's character sits
        shift = list(accumulate(map((1).__rsub__, map(len, escapes)), initial=0))  # characters escapes took beyond one
        pieces[1::2] = map(_UNESCAPED.__getitem__, escapes)
        decoded = "".join(pieces)

        def start_of(pos: int) -> int:
            """Where the character at ``pos`` of ``decoded`` starts in ``text``."""
            return pos + shift[bisect.bisect_left(at, pos)]

        def end_of(pos: int) -> int:
            """Where the character at ``pos`` of ``decoded`` ends in ``text``, escape and all."""
            k = bisect.bisect_left(at, pos)
            return pos + shift[k] + 1 + (shift[k + 1] - shift[k] if k < len(at) and at[k] == pos else 0)

        spans = find(decoded, decoded.lower())
        return [(kind, start_of(start), end_of(end - 1)) for kind, start, end in spans if end > start]

    def _spans(self, text: str, lower: str) -> list[tuple[str, int, int]]:
        """(kind, start, end) of everything to redact in ``text`` (``lower`` is ``text.lower()``)."""
        found = self._secret_spans(text)
        for kind, find in self._anywhere:
            found.extend((kind, start, end) for start, end in find(text))
        data = text.encode("ascii", "replace")  # one byte per character, so offsets stay the same
        if LONG_RUN in data.translate(TOKEN_CHARS):  # every token format holds 16 key characters in a row
            for kind, find in self._tokens:
                found.extend((kind, start, end) for start, end in find(text))
            if self._aws:
                access_keys = list(aws_access_keys(text))
                if "aws_access_key" in self._redact:
                    found.extend(("aws_access_key", start, end) for start, end in access_keys)
                if "aws_secret_key" in self._redact:
                    secret_keys = aws_secret_keys(text, lower, access_keys)
                    found.extend(("aws_secret_key", start, end) for start, end in secret_keys)
        if "email" in self._redact:
            found.extend(("email", start, end) for start, end in emails(text))
        if "iban" in self._redact or self._numbers:
            shape = data.translate(SHAPE)
            if "iban" in self._redact:
                found.extend(("iban", start, end) for start, end in ibans(text, shape))
            if self._numbers:
                found.extend(numbers(text, shape, self._numbers))
        for kind, find_in in self._tail:
            found.extend((kind, start, end) for start, end in find_in(text, data))
        return found


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
