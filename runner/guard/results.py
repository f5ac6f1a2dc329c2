"""The sanitizer applied to MCP results: every string a person or a model will read, and nothing else.

Each function returns a new model (``model_copy(update=…)``) and leaves its input as it was, so the raw result
can still be audited. What is sanitized is what gets shown or fed to a model: text content, embedded text
resources, names/titles/descriptions, string values in structured content, the descriptions and titles inside
tool schemas, server instructions. Binary payloads (images, audio, blobs), URIs, tool names and dictionary keys
are left alone: rewriting them would break the protocol or the caller's lookups, and keys and names are checked
by validation instead.

``where`` paths name the spot in the response (``content[0].text``, ``structured_content.rows[2].note``,
``tools[get_weather].input_schema.properties.city.description``); untrusted names and keys in them are shown
plainly when they are simple identifiers and JSON-quoted (ASCII, truncated) otherwise, so a finding's ``where``
can never smuggle control characters or a secret-sized blob into a log.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeAlias

import mcp_types

from runner.guard.findings import FindingLog
from runner.guard.sanitize import Sanitizer

MAX_DEPTH = 64
"""Nesting deeper than this was refused upstream (by the channel); here it is an error, never a deep recursion."""

Content: TypeAlias = (
    mcp_types.TextContent
    | mcp_types.ImageContent
    | mcp_types.AudioContent
    | mcp_types.ResourceLink
    | mcp_types.EmbeddedResource
)
ResourceContents: TypeAlias = mcp_types.TextResourceContents | mcp_types.BlobResourceContents

_SIMPLE_NAME = re.compile(r"[A-Za-z0-9_.\-/:]{1,128}")
_SIMPLE_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$\-]{0,63}")
_SCHEMA_TEXT_KEYS = frozenset({"description", "title"})


def _label(name: str) -> str:
    """An untrusted name as it may appear inside ``[...]`` in a ``where`` path."""
    return name if _SIMPLE_NAME.fullmatch(name) else json.dumps(name[:64])


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if _SIMPLE_KEY.fullmatch(key) else f"{path}[{json.dumps(key[:64])}]"


def _optional(s: Sanitizer, text: str | None, where: str, log: FindingLog) -> str | None:
    return None if text is None else s.text(text, where, log)


def _content(s: Sanitizer, item: Content, where: str, log: FindingLog) -> Content:
    """One content block; images and audio are returned as they are (the same, unmodified object)."""
    if isinstance(item, mcp_types.TextContent):
        return item.model_copy(update={"text": s.text(item.text, f"{where}.text", log)})
    if isinstance(item, mcp_types.EmbeddedResource):
        resource = item.resource
        if isinstance(resource, mcp_types.TextResourceContents):
            resource = resource.model_copy(update={"text": s.text(resource.text, f"{where}.resource.text", log)})
        return item.model_copy(update={"resource": resource})
    if isinstance(item, mcp_types.ResourceLink):
        return item.model_copy(
            update={
                "name": s.text(item.name, f"{where}.name", log),
                "title": _optional(s, item.title, f"{where}.title", log),
                "description": _optional(s, item.description, f"{where}.description", log),
            }
        )
    return item


def _json_value(s: Sanitizer, value: Any, where: str, log: FindingLog, depth: int = 0) -> Any:
    """A copy of a JSON value with every string sanitized; keys stay as they are."""
    if isinstance(value, str):
        return s.text(value, where, log)
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            raise ValueError(f"structured content nested deeper than {MAX_DEPTH} levels at {where}")
        if isinstance(value, dict):
            return {k: _json_value(s, v, _key_path(where, str(k)), log, depth + 1) for k, v in value.items()}
        return [_json_value(s, v, f"{where}[{i}]", log, depth + 1) for i, v in enumerate(value)]
    return value


def _schema(s: Sanitizer, schema: Any, where: str, log: FindingLog, depth: int = 0) -> Any:
    """A copy of a JSON Schema with only its ``description`` and ``title`` strings sanitized, at any depth."""
    if isinstance(schema, dict | list):
        if depth >= MAX_DEPTH:
            raise ValueError(f"schema nested deeper than {MAX_DEPTH} levels at {where}")
        if isinstance(schema, list):
            return [_schema(s, v, f"{where}[{i}]", log, depth + 1) for i, v in enumerate(schema)]
        out: dict[str, Any] = {}
        for key, value in schema.items():
            path = _key_path(where, str(key))
            if key in _SCHEMA_TEXT_KEYS and isinstance(value, str):
                out[key] = s.text(value, path, log)
            else:
                out[key] = _schema(s, value, path, log, depth + 1)
        return out
    return schema


def sanitize_call_result(s: Sanitizer, result: mcp_types.CallToolResult, log: FindingLog) -> mcp_types.CallToolResult:
    """Text, embedded text resources, resource-link labels and every string in structured content."""
    update: dict[str, Any] = {
        "content": [_content(s, item, f"content[{i}]", log) for i, item in enumerate(result.content)]
    }
    if result.structured_content is not None:
        update["structured_content"] = _json_value(s, result.structured_content, "structured_content", log)
    return result.model_copy(update=update)


def sanitize_tools(s: Sanitizer, tools: list[mcp_types.Tool], log: FindingLog) -> list[mcp_types.Tool]:
    """Titles, descriptions and the descriptions/titles inside both schemas; names are never rewritten."""
    out = []
    for tool in tools:
        where = f"tools[{_label(tool.name)}]"
        update: dict[str, Any] = {
            "title": _optional(s, tool.title, f"{where}.title", log),
            "description": _optional(s, tool.description, f"{where}.description", log),
            "input_schema": _schema(s, tool.input_schema, f"{where}.input_schema", log),
        }
        if tool.output_schema is not None:
            update["output_schema"] = _schema(s, tool.output_schema, f"{where}.output_schema", log)
        if tool.annotations is not None and tool.annotations.title is not None:
            title = s.text(tool.annotations.title, f"{where}.annotations.title", log)
            update["annotations"] = tool.annotations.model_copy(update={"title": title})
        out.append(tool.model_copy(update=update))
    return out


def sanitize_resources(s: Sanitizer, resources: list[mcp_types.Resource], log: FindingLog) -> list[mcp_types.Resource]:
    """Name, title and description of each listed resource (by position: names need not be unique)."""
    return [
        resource.model_copy(
            update={
                "name": s.text(resource.name, f"resources[{i}].name", log),
                "title": _optional(s, resource.title, f"resources[{i}].title", log),
                "description": _optional(s, resource.description, f"resources[{i}].description", log),
            }
        )
        for i, resource in enumerate(resources)
    ]


def sanitize_resource_contents(
    s: Sanitizer, contents: list[ResourceContents], log: FindingLog
) -> list[ResourceContents]:
    """The text of each text content of a resources/read result; blobs are left alone."""
    out: list[ResourceContents] = []
    for i, item in enumerate(contents):
        if isinstance(item, mcp_types.TextResourceContents):
            out.append(item.model_copy(update={"text": s.text(item.text, f"contents[{i}].text", log)}))
        else:
            out.append(item.model_copy())
    return out


def sanitize_prompts(s: Sanitizer, prompts: list[mcp_types.Prompt], log: FindingLog) -> list[mcp_types.Prompt]:
    """Title and description of each prompt and of each of its arguments; names are never rewritten."""
    out = []
    for prompt in prompts:
        where = f"prompts[{_label(prompt.name)}]"
        update: dict[str, Any] = {
            "title": _optional(s, prompt.title, f"{where}.title", log),
            "description": _optional(s, prompt.description, f"{where}.description", log),
        }
        if prompt.arguments is not None:
            update["arguments"] = [
                argument.model_copy(
                    update={
                        "title": _optional(s, argument.title, f"{where}.arguments[{_label(argument.name)}].title", log),
                        "description": _optional(
                            s, argument.description, f"{where}.arguments[{_label(argument.name)}].description", log
                        ),
                    }
                )
                for argument in prompt.arguments
            ]
        out.append(prompt.model_copy(update=update))
    return out


def sanitize_prompt_result(
    s: Sanitizer, result: mcp_types.GetPromptResult, log: FindingLog
) -> mcp_types.GetPromptResult:
    """The description and every message's content, handled like tool-result content."""
    messages = [
        message.model_copy(update={"content": _content(s, message.content, f"messages[{i}].content", log)})
        for i, message in enumerate(result.messages)
    ]
    return result.model_copy(
        update={"description": _optional(s, result.description, "description", log), "messages": messages}
    )


def sanitize_instructions(s: Sanitizer, text: str | None, log: FindingLog) -> str | None:
    """The server's ``instructions`` from initialize: read by the model, so as untrusted as any result."""
    return _optional(s, text, "instructions", log)
