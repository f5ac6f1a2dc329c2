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

import jsonschema
import mcp_types
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from pydantic import BaseModel, ValidationError

from runner.errors import ProtocolViolation, ResultRejected, SchemaViolation

M = TypeVar("M", bound=BaseModel)
MAX_TOOLS = 1024
_MAX_ERRORS_SHOWN = 3


def parse_result(model: type[M], raw: dict[str, Any], what: str) -> M:
    """``raw`` as an MCP ``model``, or ResultRejected saying which fields were wrong."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()[:_MAX_ERRORS_SHOWN]
        )
        raise ResultRejected(f"the server's {what} is not a valid MCP {model.__name__}: {problems}") from exc


def _json_path(path: Iterable[Any]) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _compile(schema: dict[str, Any]) -> Validator:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    validator: Validator = cls(schema)
    return validator


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
        if tool.name in checked:
            raise ResultRejected(f"the server lists tool {tool.name!r} twice")
        try:
            input_validator = _compile(tool.input_schema)
            output_validator = _compile(tool.output_schema) if tool.output_schema is not None else None
        except SchemaError as exc:
            raise ResultRejected(
                f"tool {tool.name!r} declares an invalid JSON Schema at {_json_path(exc.path)}: {exc.message}"
            ) from exc
        checked[tool.name] = CheckedTool(tool, input_validator, output_validator)
    return checked


def check_arguments(tool: CheckedTool, arguments: dict[str, Any]) -> None:
    """SchemaViolation naming the first failing path, before anything is sent to the server."""
    error = jsonschema.exceptions.best_match(tool.input_validator.iter_errors(arguments))
    if error is not None:
        path = _json_path(error.absolute_path)
        raise SchemaViolation(
            f"arguments for tool {tool.tool.name!r} break its inputSchema at {path}: {error.message}", path
        )


def check_call_result(tool: CheckedTool, result: mcp_types.CallToolResult) -> None:
    """Structured output must match outputSchema; a tool with one must return structured output."""
    if tool.output_validator is None or result.is_error:
        return
    if result.structured_content is None:
        raise ResultRejected(
            f"tool {tool.tool.name!r} declares an outputSchema but returned no structuredContent"
        )
    error = jsonschema.exceptions.best_match(tool.output_validator.iter_errors(result.structured_content))
    if error is not None:
        raise ResultRejected(
            f"tool {tool.tool.name!r} returned structuredContent that breaks its outputSchema at "
            f"{_json_path(error.absolute_path)}: {error.message}"
        )


def check_initialize(raw: dict[str, Any]) -> mcp_types.InitializeResult:
    try:
        return mcp_types.InitializeResult.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolViolation(f"the agent's initialize result is not valid MCP: {exc.errors()[:1]}") from exc
