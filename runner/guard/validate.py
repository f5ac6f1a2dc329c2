"""Host-side validation of everything a sandbox returns, and of arguments before they go in.

Results arrive as JSON objects the channel already size-capped; here they are
parsed into the ``mcp_types`` models (anything that does not fit is refused),
tool definitions are checked to carry usable JSON Schemas, arguments are
checked against ``inputSchema`` and structured output against
``outputSchema``. Nothing that fails is passed on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import mcp_types
from jsonschema.protocols import Validator
from pydantic import BaseModel, ValidationError

from runner.errors import ProtocolViolation, ResultRejected, SchemaViolation
from runner.guard.schema import SchemaError, UnsafeSchema, ValidationTooSlow, compile_schema, first_error, short

M = TypeVar("M", bound=BaseModel)
MAX_TOOLS = 1024
_MAX_ERRORS_SHOWN = 3


def _problems(exc: ValidationError, count: int) -> str:
    """The first ``count`` pydantic errors as ``field: message``, bounded (they describe untrusted input)."""
    return "; ".join(
        f"{short('.'.join(str(p) for p in err['loc']), 80) or '(root)'}: {short(str(err['msg']))}"
        for err in exc.errors()[:count]
    )


def parse_result(model: type[M], raw: dict[str, Any], what: str) -> M:
    """``raw`` as an MCP ``model``, or ResultRejected saying which fields were wrong."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = _problems(exc, _MAX_ERRORS_SHOWN)
        raise ResultRejected(f"the server's {what} is not a valid MCP {model.__name__}: {problems}") from exc


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
        checked[tool.name] = CheckedTool(tool, input_validator, output_validator)
    return checked


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


def parse_call_result(tool: CheckedTool, raw: dict[str, Any]) -> mcp_types.CallToolResult:
    """A tools/call result parsed and checked against the tool's outputSchema."""
    result = parse_result(mcp_types.CallToolResult, raw, f"result of tool {tool.tool.name!r}")
    check_call_result(tool, result)
    return result


def check_initialize(raw: dict[str, Any]) -> mcp_types.InitializeResult:
    try:
        return mcp_types.InitializeResult.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolViolation(f"the agent's initialize result is not valid MCP: {_problems(exc, 1)}") from exc
