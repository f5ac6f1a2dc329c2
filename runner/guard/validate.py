"""Host-side validation of everything a sandbox returns, and of arguments before they go in.

Results arrive as JSON objects the channel already size-capped; here they are
parsed into the ``mcp_types`` models (anything that does not fit is refused),
tool definitions are checked to carry usable JSON Schemas, arguments are
checked against ``inputSchema`` and structured output against
``outputSchema``. Nothing that fails is passed on.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import mcp_types
from jsonschema.protocols import Validator
from pydantic import BaseModel, ValidationError

from runner.errors import InvalidArgument, ProtocolViolation, ResultRejected, SchemaViolation
from runner.guard.schema import (
    NotQuick,
    SchemaError,
    UnsafeSchema,
    ValidationTooSlow,
    compile_schema,
    first_error,
    short,
)
from runner.observe.tracing import traced_step

M = TypeVar("M", bound=BaseModel)
MAX_TOOLS = 1024
_MAX_ERRORS_SHOWN = 3

MAX_RESULT_ITEMS = 4096
"""Most items a server's answer may hold in its lists (content blocks, tools, resources, templates, prompts,
contents, messages, icons…), counted over all of them before pydantic builds a model per item. The channel's value
cap alone let 60 000 content blocks through, which took pydantic ~0.5 s holding the GIL (every session waits, even
with the work in a thread). Honest pages stay far below: MAX_TOOLS is 1024 over all pages; servers page long
listings. Free-form JSON (structuredContent, schemas, _meta…) is not built into models and is not counted."""

_FREE_FORM = frozenset(
    {"structuredContent", "_meta", "inputSchema", "outputSchema", "input", "metadata", "data", "experimental",
     "extensions"}
)
"""Keys whose values the MCP models keep as plain JSON: their lists cost no model per item."""

MAX_JSON_DEPTH = 64
"""Deepest nesting of JSON taken from a caller or a server. Honest arguments and results nest a handful of
levels; 64 leaves room for any of them while staying far below the ~1000 frames that Python's json, pydantic,
jsonschema and the sanitizer recurse through, so no later walk of an accepted value can hit RecursionError."""

MAX_JSON_INTEGER = int(sys.float_info.max)
"""Largest integer magnitude accepted: beyond a double's range most JSON parsers read the number as infinity (a
JavaScript server would), and arithmetic on it with a float fails (jsonschema's ``multipleOf: 0.5``)."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_Path = tuple["_Path", str | int] | None
"""A JSON path as a linked list (parent, step): built only when a problem is reported."""


def _show_path(path: _Path) -> str:
    steps: list[str | int] = []
    while path is not None:
        path, step = path
        steps.append(step)
    out = "$"
    for step in reversed(steps):
        # Keys are untrusted text: shown JSON-escaped in ASCII (no surrogates, no controls) and cut short.
        out += f"[{step}]" if isinstance(step, int) else "." + short(json.dumps(step)[1:-1], 40)
    return out


def json_problem(value: Any, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why ``value`` cannot be held by the audit log, as ``$.a[3].b: number is not finite``; None when it can.

    The audit record's canonical JSON (``runner.audit.records.canonical_json``, then UTF-8) refuses non-finite
    numbers and strings that are not Unicode scalar values (lone surrogates); this refuses the same, plus
    integers beyond ``MAX_JSON_INTEGER`` (finite to Python, infinite to others), nesting deeper than
    ``max_depth`` and anything that is not a JSON value. Iterative, so depth cannot hurt it.
    """
    stack: list[tuple[Any, int, _Path]] = [(value, 0, None)]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                return f"{_show_path(path)}: string holds a lone surrogate (not Unicode text)"
        elif isinstance(item, int) and not isinstance(item, bool):
            if not -MAX_JSON_INTEGER <= item <= MAX_JSON_INTEGER:
                return f"{_show_path(path)}: integer is beyond the range of a JSON number (about ±1.8e308)"
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{_show_path(path)}: number is not finite"
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                return f"{_show_path(path)}: nesting is deeper than {max_depth} levels"
            if isinstance(item, list):
                stack.extend((child, depth + 1, (path, index)) for index, child in enumerate(item))
                continue
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"{_show_path(path)}: key {short(repr(key), 40)} is not a string"
                if not key.isascii() and _SURROGATE.search(key):
                    return f"{_show_path((path, key))}: key holds a lone surrogate (not Unicode text)"
                stack.append((child, depth + 1, (path, key)))
        else:
            return f"{_show_path(path)}: {type(item).__name__} is not a JSON value"
    return None


def _item_problem(raw: dict[str, Any]) -> str | None:
    """Where ``raw``'s lists pass MAX_RESULT_ITEMS items in all, or None; free-form values are not counted."""
    count = 0
    stack: list[tuple[Any, _Path]] = [(raw, None)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, list):
            count += len(item)
            if count > MAX_RESULT_ITEMS:
                return f"{_show_path(path)}: its lists hold more than {MAX_RESULT_ITEMS} items in all"
            stack.extend((child, (path, index)) for index, child in enumerate(item) if isinstance(child, dict | list))
        elif isinstance(item, dict):
            stack.extend((child, (path, key)) for key, child in item.items() if _modelled(key, child))
    return None


def _modelled(key: str, child: Any) -> bool:
    """Whether ``child`` may hold lists of models: a prompt's ``arguments`` list does, a call's arguments do not."""
    if key in _FREE_FORM:
        return False
    return isinstance(child, list) or (isinstance(child, dict) and key != "arguments")


def _problems(exc: ValidationError, count: int) -> str:
    """The first ``count`` problems as ``field: message``, bounded (they describe untrusted input).

    pydantic reports a value that fits no member of a union (a content block, resource contents) once per
    member, which reads as noise. Each such group becomes one problem: the member whose own ``type`` matched
    speaks for the group; when none did, the unknown ``type`` is named with the ones MCP knows.
    """
    plain: list[tuple[tuple[Any, ...], str]] = []
    unions: dict[tuple[Any, ...], dict[str, list[tuple[tuple[Any, ...], Any]]]] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        # A union member appears in the path under its class name; MCP's own field names are camelCase.
        tag = next((i for i, part in enumerate(loc) if isinstance(part, str) and part[:1].isupper()), None)
        if tag is None:
            plain.append((loc, str(err["msg"])))
        else:
            unions.setdefault(loc[:tag], {}).setdefault(str(loc[tag]), []).append((loc[:tag] + loc[tag + 1 :], err))
    for prefix, members in unions.items():
        meant = [errs for errs in members.values() if not any(_type_refused(loc, e) for loc, e in errs)]
        if len(meant) == 1:
            plain.extend((loc, str(e["msg"])) for loc, e in meant[0])
        elif not meant:
            refused = [e for errs in members.values() for loc, e in errs if _type_refused(loc, e)]
            known = ", ".join(str(e.get("ctx", {}).get("expected", "?")) for e in refused)
            plain.append((prefix, f"unknown type {short(repr(refused[0]['input']), 40)} (MCP knows {known})"))
        else:
            plain.append((prefix, f"fits none of {', '.join(members)}"))
    return "; ".join(
        f"{short('.'.join(str(p) for p in loc), 80) or '(root)'}: {short(message)}" for loc, message in plain[:count]
    )


def _type_refused(loc: tuple[Any, ...], err: Any) -> bool:
    return bool(err["type"] == "literal_error" and loc[-1:] == ("type",))


@traced_step("validate result", passes=(NotQuick,))
def parse_result(model: type[M], raw: dict[str, Any], what: str) -> M:
    """``raw`` as an MCP ``model``, or ResultRejected saying what was wrong.

    This is the one gate a server's answer passes before anything converts, sanitizes or records it, so
    every way it can be wrong ends here as ResultRejected: a value the audit log could not hold (which
    would otherwise fail later, far from its cause), nesting deep enough to break a later walk, or a shape
    pydantic refuses.
    """
    problem = json_problem(raw) or _item_problem(raw)
    if problem is not None:
        raise ResultRejected(f"the server's {what} cannot be passed on: {problem}")
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        problems = _problems(exc, _MAX_ERRORS_SHOWN)
        raise ResultRejected(f"the server's {what} is not a valid MCP {model.__name__}: {problems}") from exc
    problem = _size_problem(parsed)
    if problem is not None:
        raise ResultRejected(f"the server's {what} cannot be passed on: {problem}")
    return parsed


def parse_input(model: type[M], raw: Any, what: str) -> M:
    """``raw`` from a caller (a client's answer to a server's request) as an MCP ``model``, or InvalidArgument
    naming what does not fit; the same bounds as a server's result (``parse_result``)."""
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    problem = json_problem(raw) or _item_problem(raw)
    if problem is not None:
        raise InvalidArgument(f"{what} cannot be passed on: {problem}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = _problems(exc, _MAX_ERRORS_SHOWN)
        raise InvalidArgument(f"{what} is not a valid MCP {model.__name__}: {problems}") from exc


MAX_SIZE = 2**63 - 1
"""A resource's declared ``size`` travels as a protobuf int64: past it (or below 0) it cannot be a size."""


def _size_problem(value: Any) -> str | None:
    """A resource or resource link in ``value`` whose declared size the API cannot carry, wherever it sits.

    Checked here rather than where the answer is converted, so that a result the caller will not get is never
    recorded as returned.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, mcp_types.Resource | mcp_types.ResourceLink):
            if item.size is not None and not 0 <= item.size <= MAX_SIZE:
                return f"resource {short(str(item.uri), 80)!r} declares a size of {short(str(item.size), 40)} bytes"
        elif isinstance(item, BaseModel):
            stack.extend(v for v in vars(item).values() if isinstance(v, BaseModel | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, BaseModel | list))
    return None


def _json_path(path: Iterable[Any]) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


@dataclass(frozen=True)
class CheckedTool:
    """A tool definition whose schemas compiled; calls are checked against these validators."""

    tool: mcp_types.Tool
    input_validator: Validator
    output_validator: Validator | None
    plain_input: bool = False
    """Its inputSchema is plain (``plain_schema``): checking small arguments against it is quick."""
    plain_output: bool = True
    """It has no outputSchema, or a plain one: checking a small result's structuredContent is quick."""


PLAIN_SCHEMA_VALUES = 256
"""Most values a plain schema holds (``plain_schema``); honest tools' schemas hold tens."""
QUICK_VALUES = 64
QUICK_CHARS = 8 * 1024
"""Arguments of at most QUICK_VALUES values and QUICK_CHARS characters of strings and keys, checked against a
plain schema, take tens of microseconds: less than handing them to a thread would."""
_UNBOUNDED = frozenset({"$ref", "$dynamicRef", "$recursiveRef", "pattern", "patternProperties"})
"""Keywords whose cost the schema's and the instance's sizes do not bound: references may recurse (the budget
stops them only after VALIDATION_BUDGET_S), a pattern may backtrack for PATTERN_TIMEOUT_S each time it runs."""


def plain_schema(schema: Any) -> bool:
    """Whether validating against ``schema`` costs at most about its size times the instance's: no keyword of
    ``_UNBOUNDED`` and at most PLAIN_SCHEMA_VALUES values, so a small instance is checked in microseconds."""
    return _within(schema, PLAIN_SCHEMA_VALUES, None, _UNBOUNDED)


def quick_arguments(tool: CheckedTool, arguments: dict[str, Any]) -> bool:
    """Whether checking ``arguments`` is quick enough to do on the event loop (small, against a plain schema)."""
    return tool.plain_input and _within(arguments, QUICK_VALUES, QUICK_CHARS, frozenset())


def _within(value: Any, max_values: int, max_chars: int | None, refused_keys: frozenset[str]) -> bool:
    """Whether ``value`` holds at most ``max_values`` values (and ``max_chars`` characters of strings and keys)
    and none of ``refused_keys`` as a key; stops as soon as it is not, so a large value costs no more."""
    values, chars = 0, 0
    stack = [value]
    while stack:
        item = stack.pop()
        values += 1
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, dict | list):
            if values + len(item) > max_values:  # before anything is walked or stacked: a huge one costs nothing
                return False
            if isinstance(item, list):
                stack.extend(item)
                continue
            if not refused_keys.isdisjoint(item):
                return False
            chars += sum(len(key) for key in item)
            stack.extend(item.values())
        if max_chars is not None and chars > max_chars:
            return False
    return values <= max_values


def check_tools(tools: list[mcp_types.Tool]) -> dict[str, CheckedTool]:
    """Compile every tool's schemas; a server that lists broken schemas or duplicate names is refused."""
    if len(tools) > MAX_TOOLS:
        raise ResultRejected(f"the server lists {len(tools)} tools, more than the cap of {MAX_TOOLS}")
    checked: dict[str, CheckedTool] = {}
    for tool in tools:
        name = short(tool.name, 80)
        if tool.name in checked:
            raise ResultRejected(f"the server lists tool {name!r} twice")
        try:
            input_validator = compile_schema(tool.input_schema)
            output_validator = compile_schema(tool.output_schema) if tool.output_schema is not None else None
        except SchemaError as exc:
            raise ResultRejected(
                f"tool {name!r} declares an invalid JSON Schema at {short(_json_path(exc.path), 120)}: "
                f"{short(exc.message)}"
            ) from exc
        except UnsafeSchema as exc:
            raise ResultRejected(f"tool {name!r} declares a schema the runner refuses: {exc}") from exc
        checked[tool.name] = CheckedTool(
            tool,
            input_validator,
            output_validator,
            plain_input=plain_schema(tool.input_schema),
            plain_output=tool.output_schema is None or plain_schema(tool.output_schema),
        )
    return checked


@traced_step("validate arguments", passes=(NotQuick,))
def check_arguments(tool: CheckedTool, arguments: dict[str, Any]) -> None:
    """SchemaViolation naming the first failing path, before anything is sent to the server."""
    name = tool.tool.name
    try:
        error = first_error(tool.input_validator, arguments)
    except UnsafeSchema as exc:
        raise ResultRejected(f"tool {name!r} cannot be called: its inputSchema is refused: {exc}") from exc
    except ValidationTooSlow:
        raise SchemaViolation(
            f"checking arguments for tool {name!r} against its inputSchema took too long", "$"
        ) from None
    if error is not None:
        path = short(_json_path(error.absolute_path), 120)
        raise SchemaViolation(
            f"arguments for tool {name!r} break its inputSchema at {path}: {short(error.message)}", path
        )


def check_call_result(tool: CheckedTool, result: mcp_types.CallToolResult) -> None:
    """Structured output must match outputSchema; a tool with one must return structured output."""
    if tool.output_validator is None or result.is_error:
        return
    if result.structured_content is None:
        raise ResultRejected(
            f"tool {tool.tool.name!r} declares an outputSchema but returned no structuredContent"
        )
    try:
        error = first_error(tool.output_validator, result.structured_content)
    except UnsafeSchema as exc:
        raise ResultRejected(f"tool {tool.tool.name!r}'s outputSchema is refused: {exc}") from exc
    except ValidationTooSlow:
        raise ResultRejected(
            f"checking tool {tool.tool.name!r}'s structuredContent took too long; result dropped"
        ) from None
    if error is not None:
        raise ResultRejected(
            f"tool {tool.tool.name!r} returned structuredContent that breaks its outputSchema at "
            f"{short(_json_path(error.absolute_path), 120)}: {short(error.message)}"
        )


@traced_step("validate result", passes=(NotQuick,))
def parse_call_result(tool: CheckedTool, raw: dict[str, Any]) -> mcp_types.CallToolResult:
    """A tools/call result parsed and checked against the tool's outputSchema."""
    result = parse_result(mcp_types.CallToolResult, raw, f"result of tool {tool.tool.name!r}")
    check_call_result(tool, result)
    return result


def check_initialize(raw: dict[str, Any]) -> mcp_types.InitializeResult:
    problem = json_problem(raw)
    if problem is not None:
        raise ProtocolViolation(f"the agent's initialize result cannot be passed on: {problem}")
    try:
        return mcp_types.InitializeResult.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolViolation(f"the agent's initialize result is not valid MCP: {_problems(exc, 1)}") from exc
