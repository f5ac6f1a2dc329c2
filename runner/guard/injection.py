"""The sanitizer's injection stage: detect prompt injection in untrusted text.

Instructions aimed at the model, chat-template role markers, hidden text (comments, invisible elements) that reads
as an instruction, and links that can carry data out. Injection is only reported (``flagged`` or ``blocked``),
never rewritten: rewriting would hide evidence and mangle legitimate text that merely quotes an attack.

Rules run on the lower-cased text (positions do not matter: nothing is rewritten). A rule either starts with its
literal (``re`` then skips ahead to it quickly), or is searched only in a small window around each occurrence of
an anchor literal; text without the anchors costs one substring search per rule.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from runner.guard.findings import FindingLog
from runner.guard.kinds import (
    INJECTION_EXFIL_LINK,
    INJECTION_HIDDEN_TEXT,
    INJECTION_INSTRUCTION,
    INJECTION_ROLE_MARKER,
)
from runner.guard.links import exfil_links
from runner.guard.names import LOOK_ALIKES_LOWER, LOOK_ALIKES_UPPER

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


# Letters NFKC leaves alone that "small caps" text generators use (ɪɢɴᴏʀᴇ ᴀʟʟ…), Armenian look-alikes, and
# Latin letters drawn like others (dotless i, script a and g); the policy's tables cover Cyrillic and Greek.
_SMALL_CAPITALS = str.maketrans(
    "ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘǫʀꜱᴛᴜᴠᴡʏᴢօսոհցզıȷɑɡ",
    "abcdefghijklmnopqrstuvwyzounhgqijag",
)


def _as_latin() -> dict[int, int | None]:
    """One table for ``read_as_latin``: a capital look-alike (Greek Eta, drawn like H) is read as the capital it
    imitates before case is folded, since its small letter (eta) looks like another (n); any other capital as
    its small letter's look-alike; small capitals and the like; accents and variation selectors dropped."""
    table: dict[int, int | None] = {}
    for small, latin in LOOK_ALIKES_LOWER.items():
        table[small] = latin
        capital = chr(small).upper()
        if len(capital) == 1:
            table[ord(capital)] = latin
    table.update(LOOK_ALIKES_UPPER)
    table.update(_SMALL_CAPITALS)
    for first, last in ((0x0300, 0x036F), (0xFE00, 0xFE0F), (0xE0100, 0xE01EF)):
        table.update(dict.fromkeys(range(first, last + 1)))
    return table


_AS_LATIN = _as_latin()


def may_detect(lower: str) -> bool:
    """Whether ``lower`` holds any literal a rule needs: without one, ``detect`` would find nothing."""
    return any(anchor in lower for anchor in _DETECT_ANCHORS)


def read_as_latin(text: str) -> str:
    """``text`` lower-cased, with Cyrillic and Greek letters drawn like Latin ones read as those (``іgnore`` with a
    Cyrillic i, ``ΙGΝΟRE`` in Greek capitals): NFKC leaves look-alikes alone, and a model reads them as the words
    they imitate. The tables are the policy's (``names``), so a rule and the sanitizer see the same words.
    Accents and variation selectors are dropped too (``ignóre``, a selector the stripping stage lets stand after
    a non-Latin look-alike): a reader skips them."""
    if text.isascii():
        return text.lower()
    # ``ó`` decomposed into ``o`` and its accent, which the table drops; one pass of the table, as it is the cost.
    return unicodedata.normalize("NFD", text).translate(_AS_LATIN).lower()


def detect(text: str, lower: str, where: str, log: FindingLog, action: str, *, links: bool = True) -> None:
    """Count prompt-injection signs in ``text`` (``lower`` is ``read_as_latin(text)``); report them as ``action``.

    ``links``: also links that can carry data out (not for a URI itself, which is made of queries and templates).
    """
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
    if links and "//" in text:
        log.add(INJECTION_EXFIL_LINK, action, where, exfil_links(text, lower))
