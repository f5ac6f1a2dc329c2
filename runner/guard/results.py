"""The sanitizer applied to MCP results: one generic walk over every string of the result, keys included.

Every ``str`` in the pydantic model and in the JSON values it holds (structured content, schemas, ``_meta``,
fields a future protocol version adds, extra fields a model keeps) goes through the sanitizer, dictionary keys
too, so a new field cannot be forgotten. Each function returns a new model (``model_copy(update=…)``) and leaves
its input as it was, so the raw result can still be audited. Policy is layered on top of the walk, by field:

- **Payloads**: ``data``/``blob`` of a model with a ``mime_type`` are base64. A text-like one (``text/*``, JSON,
  XML, YAML…, or no MIME type at all) is decoded, sanitized as text and encoded again; binary ones (images,
  audio, octet streams) are left alone, since rewriting them would corrupt them. JSON (a blob, or the ``text`` of
  a JSON-typed resource) is parsed and walked as a value, so escapes spelled ``\\u001b`` are seen as what they are.
- **Locators** (``uri``, ``uri_template``, ``*_url``, ``src``, ``mime_type``): stripped and redacted, but not
  searched for prompt injection (a URI template is a templated URL by design).
- **Identifiers** a caller must send back unchanged: a tool's name and every key in its schemas (property names).
  The walk never rewrites them silently: a tool where one would change under sanitizing is reported with
  ``unsafe_identifier`` (action ``blocked``), and screening holds the whole tool back. Other names (prompts,
  resources, prompt arguments) are display labels as far as the runner is concerned and are rewritten like any
  text, with their findings; a caller then learns from the finding why a name holds a placeholder.

The walk has a work budget per result (``WorkBudget``): values visited and characters scanned. Past it the
result is refused with ResultRejected naming the budget, never passed on half-sanitized; a result of a million
tiny strings costs one bounded walk, not seconds of CPU under the GIL.

``where`` paths name the spot in the response (``content[0].text``, ``structured_content.rows[2].note``,
``tools[get_weather].input_schema.properties.city.description``). They are built from *sanitized* names and keys,
shown plainly when simple identifiers and JSON-quoted (ASCII, truncated) otherwise, so a finding's ``where`` can
never carry control characters, a secret or a long blob into a log.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import mcp_types
from pydantic import BaseModel

from runner.errors import ResultRejected
from runner.guard.findings import BLOCKED, REDACTED, FindingLog
from runner.guard.kinds import INJECTION_KINDS, UNSAFE_IDENTIFIER
from runner.guard.mime import document_charset, json_typed, text_like
from runner.guard.sanitize import Sanitizer

MAX_DEPTH = 64
"""Nesting deeper than this was refused upstream (by validation); here it is refused again, never a deep recursion."""

Content: TypeAlias = (
    mcp_types.TextContent
    | mcp_types.ImageContent
    | mcp_types.AudioContent
    | mcp_types.ResourceLink
    | mcp_types.EmbeddedResource
)
ResourceContents: TypeAlias = mcp_types.TextResourceContents | mcp_types.BlobResourceContents
T = TypeVar("T")


@dataclass(frozen=True)
class WorkBudget:
    """How much one result may cost the sanitizer. About 6 µs per small string: the node cap bounds a hostile
    result to about a second of CPU, off the event loop.

    The node cap is the channel's cap on a frame's values (runner/channel.py, MAX_FRAME_VALUES): each of a
    frame's separators and containers stands before or for a value the walk visits, so anything the channel lets
    through is within the budget unless text inside it (a JSON document, a text-like blob) adds values. A lower
    cap refused honest answers the transport had carried: the memory server's graph of 10,000 entities (2.3 MB,
    120,000 values) after the server had stored them."""

    nodes: int = 200_000
    """Values visited: strings, numbers, lists, objects, model fields."""
    chars: int = 16 * 1024**2
    """Characters sanitized, decoded text-like payloads included."""


DEFAULT_BUDGET = WorkBudget()

_SIMPLE_NAME = re.compile(r"[A-Za-z0-9_.\-/:]{1,128}")
_SIMPLE_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$\-]{0,63}")
_PAYLOAD_FIELDS = frozenset({"data", "blob"})
_LOCATOR_FIELDS = frozenset({"uri", "uri_template", "mime_type", "src", "url"})
_LONG_NUMBER = 10**8
"""Numbers from here up have as many digits as the shortest number a detector redacts (an SSN); shorter ones are
left alone without a look."""
_PROSE_FIELDS = ("title", "description")
_SEAM = 512
"""Characters read on each side of the seam between two text blocks: longer than any phrase a rule looks for."""
_MOSTLY_TEXT = 20
"""A payload without a MIME type is text when at most one character in this many is not (an image has many)."""
_CLEAN_CACHE_LIMIT = 4096
_CLEAN_CACHE_MAX_LEN = 128


def _nesting(value: Any, nodes: int) -> int:
    """How deep ``value`` nests (iteratively: a parsed document may be deeper than the walk may recurse), looking
    at no more than ``nodes`` values: the walk that follows refuses a larger document anyway."""
    deepest = 0
    stack = [(value, 0)]
    while stack and nodes > 0:
        item, depth = stack.pop()
        nodes -= 1
        deepest = max(deepest, depth)
        if deepest >= MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _shown_text(item: Any) -> str | None:
    """The text a reader sees of a content block, embedded resource or prompt message, if it is text."""
    if isinstance(item, mcp_types.PromptMessage | mcp_types.EmbeddedResource):
        item = item.content if isinstance(item, mcp_types.PromptMessage) else item.resource
    if isinstance(item, mcp_types.TextContent | mcp_types.TextResourceContents):
        return item.text
    return None


def _prose(value: Any) -> Iterator[str]:
    """The descriptions and titles in a JSON value (a tool's, its schemas' and their properties'), in the order a
    reader meets them; iterative, as schemas nest."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in _PROSE_FIELDS:
                if isinstance(item.get(key), str):
                    yield item[key]
            stack.extend(reversed(item.values()))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def _locator(name: str) -> bool:
    return name in _LOCATOR_FIELDS or name.endswith(("_uri", "_url"))


def _label(name: str) -> str:
    """A (sanitized) name as it may appear inside ``[...]`` in a ``where`` path."""
    return name if _SIMPLE_NAME.fullmatch(name) else json.dumps(name[:64])


def _key_path(path: str, key: str) -> str:
    if not _SIMPLE_KEY.fullmatch(key):
        return f"{path}[{json.dumps(key[:64])}]"
    return f"{path}.{key}" if path else key


class _Walk:
    """One result's walk: the sanitizer, the findings, the budget spent so far, and the identifier policy."""

    def __init__(self, s: Sanitizer, log: FindingLog, budget: WorkBudget, *, identifiers: bool = False) -> None:
        self.s = s
        self.log = log
        self.budget = budget
        self.identifiers = identifiers
        """True while walking a tool: a name or schema key that sanitizing would change holds the tool back."""
        self.nodes = 0
        self.chars = 0
        self._clean: set[str] = set()  # short strings already found clean (table keys repeat in every row)
        self._clean_words: set[str] = set()  # the same for identifiers read as words

    def tick(self, chars: int = 0) -> None:
        self.nodes += 1
        self.chars += chars
        if self.nodes > self.budget.nodes or self.chars > self.budget.chars:
            raise ResultRejected(
                f"the result exceeds the sanitizer's work budget of {self.budget.nodes} values and "
                f"{self.budget.chars} characters per result; it was refused, not passed on half-sanitized"
            )

    def text(self, value: str, where: str, *, locator: bool = False) -> str:
        self.tick(len(value))
        if value in self._clean:
            return value
        before = self.log.added
        out = self.s.locator(value, where, self.log) if locator else self.s.text(value, where, self.log)
        if (
            not locator  # a locator skips link detection: clean as a locator is not clean as text
            and self.log.added == before
            and len(value) <= _CLEAN_CACHE_MAX_LEN
            and len(self._clean) < _CLEAN_CACHE_LIMIT
        ):
            self._clean.add(value)
        return out

    def identifier(self, value: str, where: str) -> str:
        """A name the caller must send back: sanitized, and in a tool reported as unsafe when that changes it.
        Its words are read for injection too, however it joins them (``ignore_all_previous_instructions``)."""
        clean = self.text(value, where)
        if not value.isalnum() and value not in self._clean_words:
            before = self.log.added
            self.s.words(value, where, self.log)
            short = len(value) <= _CLEAN_CACHE_MAX_LEN and len(self._clean_words) < _CLEAN_CACHE_LIMIT
            if self.log.added == before and short:
                self._clean_words.add(value)
        if clean != value and self.identifiers:
            self.log.add(UNSAFE_IDENTIFIER, BLOCKED, where)
        return clean

    def value(self, value: Any, where: str, depth: int, *, locator: bool = False) -> Any:
        """Any value: a string, a model, a list or dict of them, or a scalar (which is returned as it is)."""
        if isinstance(value, str):
            return self.text(value, where, locator=locator)
        if isinstance(value, BaseModel):
            return self.model(value, where, depth)
        if isinstance(value, dict | list | tuple):
            if depth >= MAX_DEPTH:
                raise ResultRejected(f"the result nests deeper than {MAX_DEPTH} levels at {where}")
            self.tick()
            if isinstance(value, dict):
                return self.mapping(value, where, depth)
            items = [self.value(item, f"{where}[{i}]", depth + 1, locator=locator) for i, item in enumerate(value)]
            self.seams(items, where)
            return items
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) >= _LONG_NUMBER:
            return self.number(value, where)  # counted as the string it is read as
        self.tick()
        return value

    def definition(self, model: T, where: str) -> T:
        """A tool or prompt: every string, and the seam between each two descriptions or titles in a row. A model
        reads the definition as one text: an instruction can start in the description and end in a property's or
        an argument's description."""
        clean = self.model(model, where, 0)
        assert isinstance(clean, BaseModel)
        prose = list(_prose(clean.model_dump(exclude_none=True)))
        for left, right in itertools.pairwise(prose):
            self.seam(left, right, f"{where}.<between descriptions>")
        return clean

    def seams(self, items: list[Any], where: str) -> None:
        """Prompt injection across two text blocks in a row (``ignore all`` | ``previous instructions``): a model
        reads consecutive blocks as one text, so the end of each and the start of the next are read together too.
        Only what neither end shows alone is reported, under ``where[i-j]``."""
        shown = [_shown_text(item) for item in items]
        for i in range(len(shown) - 1):
            self.seam(shown[i], shown[i + 1], f"{where}[{i}-{i + 1}]")

    def seam(self, left: str | None, right: str | None, where: str) -> None:
        """What the end of ``left`` and the start of ``right`` say only together. Not counted against the budget:
        both were, and a seam reads at most ``_SEAM`` characters of each twice more."""
        if not left or not right:
            return
        left, right = left[-_SEAM:], right[:_SEAM]
        joined = FindingLog()
        self.s.injection(f"{left}\n{right}", "", joined)
        if not joined.added:
            return  # the common case: one read of the seam
        ends = FindingLog()
        self.s.injection(left, "", ends)
        self.s.injection(right, "", ends)
        alone = {f.kind: f.count for f in ends.findings()}
        for f in joined.findings():
            self.log.add(f.kind, f.action, where, f.count - alone.get(f.kind, 0))

    def number(self, value: float, where: str) -> Any:
        """A long number is read as the digits a reader sees: a card number is one as ``4111111111111111`` as much
        as in quotes. What the detectors redact in its digits becomes the placeholder text, like any string."""
        try:
            digits = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
        except ValueError:  # past Python's limit on digits (4300); results refuse numbers beyond a double anyway
            raise ResultRejected(f"the result holds a number too long to read at {where}") from None
        clean = self.text(digits, where)
        return value if clean == digits else clean

    def mapping(self, value: dict[Any, Any], where: str, depth: int) -> dict[Any, Any]:
        """Keys are sanitized too (structured-content keys are read like any text); in a tool they are identifiers."""
        out: dict[Any, Any] = {}
        for i, (key, item) in enumerate(value.items()):
            if isinstance(key, str):
                # Found in a key: the path names its position, never the key itself (it may be the secret).
                clean_key = self.identifier(key, f"{where}.<key {i}>" if where else f"<key {i}>")
                while clean_key in out:  # two keys that sanitize alike: keep both values, never drop one
                    clean_key += "_"
            else:
                clean_key = key
            out[clean_key] = self.value(item, _key_path(where, str(clean_key)), depth + 1)
        return out

    def model(self, model: T, where: str, depth: int) -> T:
        """Every declared and extra field of a pydantic model; unchanged fields keep their objects."""
        assert isinstance(model, BaseModel)
        if depth >= MAX_DEPTH:
            raise ResultRejected(f"the result nests deeper than {MAX_DEPTH} levels at {where}")
        self.tick()
        update: dict[str, Any] = {}
        fields = dict(model)  # declared fields, then the extra ones a model keeps
        mime_type = getattr(model, "mime_type", None)
        for name, item in fields.items():
            if item is None:
                continue
            path = _key_path(where, name)
            typed = mime_type if isinstance(mime_type, str) else None
            if name in _PAYLOAD_FIELDS and isinstance(item, str) and "mime_type" in type(model).model_fields:
                clean: Any = self.payload(item, path, typed)
            elif name == "text" and isinstance(item, str) and json_typed(typed):
                clean = self.document(item, path, typed)
            elif name == "name" and isinstance(item, str):
                clean = self.identifier(item, path)
            else:
                clean = self.value(item, path, depth + 1, locator=_locator(name))
            if clean is not item:
                update[name] = clean
        return model.model_copy(update=update) if update else model

    def payload(self, data: str, where: str, mime_type: str | None) -> str:
        """A base64 payload: a text-like one is decoded, sanitized and encoded again; binary is left alone.

        Text is decoded in the charset its MIME type names (UTF-8 if none or one Python does not know as text);
        bytes that are not text in it are read as U+FFFD, since a reader's decoder skips them and reads the rest
        (one stray byte must not make a text/plain blob "binary" and let it pass unread). Only a payload without a
        MIME type that is not mostly UTF-8 text is taken for binary and left as it is.
        """
        self.tick()
        if not text_like(mime_type):
            return data
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return data  # not base64: no reader gets text out of it
        charset = document_charset(mime_type)
        try:
            text = raw.decode(charset)
        except UnicodeError:
            text = raw.decode(charset, errors="replace")
            if not mime_type and text.count("\ufffd") * _MOSTLY_TEXT > len(text):
                return data  # no type, and not text: binary, left as the bytes it is
        clean = self.document(text, where, mime_type)
        out = raw if clean == text else clean.encode(charset, errors="replace")
        if charset != "utf-8":
            self.utf8_reading(out, where)
        return data if out is raw else base64.b64encode(out).decode("ascii")

    def utf8_reading(self, raw: bytes, where: str) -> None:
        """A payload in another charset, read as UTF-8: what many readers do whatever the MIME type says. ASCII
        bytes of a secret under a ``charset=utf-16`` label read as CJK in the declared charset, so nothing was
        redacted there; a payload whose UTF-8 reading still holds something to redact is refused."""
        text = raw.decode("utf-8", errors="replace")
        self.tick(len(text))
        other = FindingLog()
        self.s.text(text, where, other)
        found = other.findings()
        if any(finding.action == REDACTED for finding in found):
            raise ResultRejected(
                f"the payload at {where} holds data to redact when read as UTF-8 instead of its declared charset; "
                "it was refused, not passed on for readers that ignore the charset"
            )
        injected = [finding for finding in found if finding.kind in INJECTION_KINDS]
        if injected:  # reported as found in the payload, unless its declared reading found the same already
            seen = {finding.kind for finding in self.log.findings() if finding.where == where}
            for finding in injected:
                if finding.kind not in seen:
                    self.log.add(finding.kind, finding.action, where, finding.count)

    def document(self, text: str, where: str, mime_type: str | None) -> str:
        """Text of a MIME type. JSON is parsed and walked as a value: in its text, ``\\u001b`` is six harmless
        characters, but whoever parses it gets the escape (and a secret may be spelled with escapes)."""
        if json_typed(mime_type):
            duplicates = False

            def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
                nonlocal duplicates
                obj = dict(items)
                duplicates = duplicates or len(obj) < len(items)
                return obj

            try:
                parsed = json.loads(text, object_pairs_hook=pairs)
            except (ValueError, RecursionError):
                return self.text(text, where)  # not JSON after all: sanitized as the text it is
            if _nesting(parsed, self.budget.nodes) < MAX_DEPTH:
                clean = self.value(parsed, where, 1)
                # A key given twice keeps only its last value here, but the text holds both (and some parsers,
                # and any reader, take the first): such a document is passed on as what was walked.
                return text if clean == parsed and not duplicates else json.dumps(clean, ensure_ascii=False)
        return self.text(text, where)


def _walk(
    s: Sanitizer, value: T, where: str, log: FindingLog, budget: WorkBudget | None, *, identifiers: bool = False
) -> T:
    walk = _Walk(s, log, budget or DEFAULT_BUDGET, identifiers=identifiers)
    out: T = walk.value(value, where, 0)
    return out


def _named(s: Sanitizer, item: T, kind: str, index: int) -> str:
    """``kind[name]`` for an item's findings: its sanitized name when sanitizing leaves it alone, else its index."""
    name = getattr(item, "name", None)
    if isinstance(name, str) and s.text(name, "", FindingLog()) == name:
        return f"{kind}[{_label(name)}]"
    return f"{kind}[#{index}]"


def sanitize_call_result(
    s: Sanitizer, result: mcp_types.CallToolResult, log: FindingLog, budget: WorkBudget | None = None
) -> mcp_types.CallToolResult:
    """Every string of a tool result: content, embedded resources, links, structured content and its keys."""
    return _walk(s, result, "", log, budget)


class ToolWalk:
    """Sanitizes the tools of one listing, each into its own log (screening holds back tools one by one), all
    within one work budget."""

    def __init__(self, s: Sanitizer, budget: WorkBudget | None = None) -> None:
        self._s = s
        self._walk = _Walk(s, FindingLog(), budget or DEFAULT_BUDGET, identifiers=True)

    def where(self, tool: mcp_types.Tool, index: int) -> str:
        """``tools[name]`` (or ``tools[#index]`` when the name itself needs sanitizing) for the tool's findings."""
        return _named(self._s, tool, "tools", index)

    def tool(self, tool: mcp_types.Tool, index: int, log: FindingLog) -> mcp_types.Tool:
        """Every string of the tool; a name or schema key that would change is reported as ``unsafe_identifier``."""
        self._walk.log = log
        where = self.where(tool, index)
        return self._walk.definition(tool, where)


def sanitize_tools(
    s: Sanitizer, tools: list[mcp_types.Tool], log: FindingLog, budget: WorkBudget | None = None
) -> list[mcp_types.Tool]:
    """Every string of each tool; a name or schema key that would change is reported as ``unsafe_identifier``."""
    walk = ToolWalk(s, budget)
    return [walk.tool(tool, i, log) for i, tool in enumerate(tools)]


def sanitize_resources(
    s: Sanitizer, resources: list[mcp_types.Resource], log: FindingLog, budget: WorkBudget | None = None
) -> list[mcp_types.Resource]:
    """Every string of each listed resource (by position: names need not be unique)."""
    return _walk(s, resources, "resources", log, budget)


def sanitize_resource_contents(
    s: Sanitizer, contents: list[ResourceContents], log: FindingLog, budget: WorkBudget | None = None
) -> list[ResourceContents]:
    """Text contents, text-like blobs, URIs and MIME types of a resources/read result; binary blobs stay."""
    return _walk(s, contents, "contents", log, budget)


def sanitize_prompts(
    s: Sanitizer, prompts: list[mcp_types.Prompt], log: FindingLog, budget: WorkBudget | None = None
) -> list[mcp_types.Prompt]:
    """Every string of each prompt and its arguments."""
    walk = _Walk(s, log, budget or DEFAULT_BUDGET)
    return [walk.definition(prompt, _named(s, prompt, "prompts", i)) for i, prompt in enumerate(prompts)]


def sanitize_prompt_result(
    s: Sanitizer, result: mcp_types.GetPromptResult, log: FindingLog, budget: WorkBudget | None = None
) -> mcp_types.GetPromptResult:
    """The description and every message's content, handled like tool-result content."""
    return _walk(s, result, "", log, budget)


def sanitize_initialize(
    s: Sanitizer, result: mcp_types.InitializeResult, log: FindingLog, budget: WorkBudget | None = None
) -> mcp_types.InitializeResult:
    """The server's name, version, title, instructions, capabilities and ``_meta``: read as any result is."""
    return _walk(s, result, "", log, budget)


def sanitize_value(s: Sanitizer, value: T, where: str, log: FindingLog, budget: WorkBudget | None = None) -> T:
    """Every string of any model or JSON value of a server's: its requests to the client, its notifications."""
    return _walk(s, value, where, log, budget)


def sanitize_progress(s: Sanitizer, message: str | None, log: FindingLog) -> str | None:
    """A progress notification's message, shown to the caller while a tool runs."""
    return None if message is None else _walk(s, message, "progress.message", log, None)
