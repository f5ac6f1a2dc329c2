"""Host-side validation: tool schemas, arguments, call results, and parsing of raw results."""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import types
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import mcp_types
import pytest
from pydantic import BaseModel

from runner import errors
from runner.errors import ProtocolViolation, ResultRejected, RunnerError, SchemaViolation
from runner.guard import schema as schema_module
from runner.guard import validate
from runner.guard.validate import (
    MAX_TOOLS,
    CheckedTool,
    check_arguments,
    check_call_result,
    check_initialize,
    check_tools,
    parse_result,
)

INPUT = {
    "type": "object",
    "properties": {
        "a": {"type": "integer"},
        "items": {"type": "array", "items": {"type": "string"}},
        "o": {"type": "object", "properties": {"k": {"enum": [1, 2]}}},
    },
    "required": ["a"],
    "additionalProperties": False,
}
OUTPUT = {
    "type": "object",
    "properties": {"n": {"type": "integer"}, "rows": {"type": "array", "items": {"properties": {"v": {"minimum": 0}}}}},
    "required": ["n"],
}


def tool(name: str = "t", input_schema: dict[str, Any] | None = None, output_schema: Any = None) -> mcp_types.Tool:
    return mcp_types.Tool(name=name, input_schema=input_schema or INPUT, output_schema=output_schema)


def checked(input_schema: dict[str, Any] | None = None, output_schema: Any = None) -> CheckedTool:
    return check_tools([tool("t", input_schema, output_schema)])["t"]


def result(structured: Any = None, *, is_error: bool = False) -> mcp_types.CallToolResult:
    return mcp_types.CallToolResult(content=[], structured_content=structured, is_error=is_error)


# check_tools


def test_check_tools_compiles_each_tool() -> None:
    tools = check_tools([tool("a"), tool("b", output_schema=OUTPUT)])
    assert list(tools) == ["a", "b"]
    assert tools["a"].output_validator is None
    assert tools["b"].output_validator is not None and tools["b"].tool.name == "b"


def test_check_tools_refuses_duplicate_names() -> None:
    with pytest.raises(ResultRejected, match="lists tool 'dup' twice"):
        check_tools([tool("dup"), tool("other"), tool("dup")])


@pytest.mark.parametrize(
    ("input_schema", "output_schema", "where"),
    [
        ({"type": "object", "properties": {"a": {"type": "nope"}}}, None, "$.properties.a.type"),
        ({"type": "object", "required": "a"}, None, "$.required"),
        ({"type": "object"}, {"properties": {"x": {"minimum": "z"}}}, "$.properties.x.minimum"),
    ],
    ids=["input-type", "input-required", "output-minimum"],
)
def test_check_tools_names_tool_with_invalid_schema(
    input_schema: dict[str, Any], output_schema: dict[str, Any] | None, where: str
) -> None:
    with pytest.raises(ResultRejected) as caught:
        check_tools([tool("fine"), tool("broken", input_schema, output_schema)])
    assert f"tool 'broken' declares an invalid JSON Schema at {where}" in caught.value.message


def test_check_tools_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ResultRejected, match=f"lists {MAX_TOOLS + 1} tools, more than the cap of {MAX_TOOLS}"):
        check_tools([tool(f"t{i}") for i in range(MAX_TOOLS + 1)])
    monkeypatch.setattr(validate, "MAX_TOOLS", 3)  # the boundary, without compiling 1024 schemas
    assert len(check_tools([tool(f"t{i}") for i in range(3)])) == 3
    with pytest.raises(ResultRejected, match="lists 4 tools, more than the cap of 3"):
        check_tools([tool(f"t{i}") for i in range(4)])


# check_arguments


@pytest.mark.parametrize(
    "arguments",
    [{"a": 1}, {"a": 0, "items": [], "o": {"k": 2}}, {"a": -5, "items": ["x", "y"]}],
)
def test_check_arguments_valid_passes(arguments: dict[str, Any]) -> None:
    assert check_arguments(checked(), arguments) is None


@pytest.mark.parametrize(
    ("arguments", "path", "detail"),
    [
        ({"a": "x"}, "$.a", "'x' is not of type 'integer'"),
        ({"a": 1, "items": ["a", "b", 3]}, "$.items[2]", "3 is not of type 'string'"),
        ({"a": 1, "o": {"k": 9}}, "$.o.k", "9 is not one of [1, 2]"),
        ({}, "$", "'a' is a required property"),
        ({"a": 1, "zz": 0}, "$", "'zz' was unexpected"),
    ],
)
def test_check_arguments_names_failing_path(arguments: dict[str, Any], path: str, detail: str) -> None:
    with pytest.raises(SchemaViolation) as caught:
        check_arguments(checked(), arguments)
    assert caught.value.path == path
    assert caught.value.message.startswith(f"arguments for tool 't' break its inputSchema at {path}: ")
    assert detail in caught.value.message


# check_call_result


def test_call_result_without_output_schema_is_not_checked() -> None:
    assert check_call_result(checked(), result({"anything": "goes"})) is None
    assert check_call_result(checked(), result(None)) is None


def test_call_result_valid_structured_content_passes() -> None:
    assert check_call_result(checked(output_schema=OUTPUT), result({"n": 3, "rows": [{"v": 1}]})) is None


def test_call_result_missing_structured_content_rejected() -> None:
    with pytest.raises(ResultRejected, match="tool 't' declares an outputSchema but returned no structuredContent"):
        check_call_result(checked(output_schema=OUTPUT), result(None))


@pytest.mark.parametrize("structured", [None, {"n": "not an int"}])
def test_call_result_is_error_skips_output_checks(structured: Any) -> None:
    assert check_call_result(checked(output_schema=OUTPUT), result(structured, is_error=True)) is None


@pytest.mark.parametrize(
    ("structured", "path"),
    [({"n": "x"}, "$.n"), ({"n": 1, "rows": [{"v": 1}, {"v": -1}]}, "$.rows[1].v"), ({"rows": []}, "$")],
)
def test_call_result_mismatch_names_path(structured: Any, path: str) -> None:
    with pytest.raises(ResultRejected) as caught:
        check_call_result(checked(output_schema=OUTPUT), result(structured))
    assert f"tool 't' returned structuredContent that breaks its outputSchema at {path}: " in caught.value.message


# parse_result / check_initialize


def test_parse_result_valid() -> None:
    raw = {"content": [{"type": "text", "text": "hi"}], "structuredContent": {"n": 1}, "isError": True}
    parsed = parse_result(mcp_types.CallToolResult, raw, "tools/call result")
    assert parsed.is_error is True and parsed.structured_content == {"n": 1}
    assert parsed.content[0].text == "hi"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("model", "raw", "field"),
    [
        (mcp_types.CallToolResult, {"content": "nope"}, "content: Input should be a valid list"),
        (mcp_types.CallToolResult, {}, "content: Field required"),
        (mcp_types.ListToolsResult, {"tools": [{"name": "a"}]}, "tools.0.inputSchema: Field required"),
    ],
)
def test_parse_result_bad_shape_names_field(model: type[Any], raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ResultRejected) as caught:
        parse_result(model, raw, "thing")
    assert caught.value.message.startswith(f"the server's thing is not a valid MCP {model.__name__}: ")
    assert field in caught.value.message


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"content": [], "structuredContent": {"n": float("inf")}}, "$.structuredContent.n: number is not finite"),
        ({"content": [], "structuredContent": {"n": [float("nan")]}}, "$.structuredContent.n[0]: number is not"),
        ({"content": [{"type": "text", "text": "a\ud800"}]}, "$.content[0].text: string holds a lone surrogate"),
        ({"content": [], "structuredContent": {"\udfff": 1}}, "$.structuredContent.\\udfff: key holds a lone"),
        ({"content": [], "structuredContent": {"d": json.loads("[" * 200 + "]" * 200)}}, "nesting is deeper"),
    ],
)
def test_parse_result_refuses_what_the_audit_log_cannot_hold(raw: dict[str, Any], where: str) -> None:
    """A server's NaN, lone surrogate or deep nesting is ResultRejected here, not an error far downstream."""
    with pytest.raises(ResultRejected) as caught:
        parse_result(mcp_types.CallToolResult, raw, "result of tool 'echo'")
    assert caught.value.message.startswith("the server's result of tool 'echo' cannot be passed on: $")
    assert where in caught.value.message
    caught.value.message.encode("utf-8")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"content": [{"type": "video", "data": "x"}]}, "content.0: unknown type 'video' (MCP knows 'text'"),
        ({"content": [{"type": "text"}]}, "content.0.text: Field required"),
        ({"content": [{"type": "image", "data": "x"}]}, "mimeType: Field required"),
        ({"content": [{"type": "resource", "resource": {"uri": "file:///a"}}]}, "content.0.resource"),
        ({"content": [None]}, "content.0: fits none of TextContent"),
    ],
)
def test_invalid_content_is_result_rejected(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ResultRejected) as caught:
        parse_result(mcp_types.CallToolResult, raw, "result")
    assert field in caught.value.message


def test_check_initialize_refuses_an_unencodable_server_name() -> None:
    raw = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "x\ud800", "version": "1"}}
    with pytest.raises(ProtocolViolation, match=r"cannot be passed on: \$\.serverInfo\.name: string holds a lone"):
        check_initialize(raw)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        # How the agent reports a result that does not fit MCP (or any failure of its own): a server-side fault.
        (errors.JSONRPC_INTERNAL_ERROR, errors.Status.FAILED_PRECONDITION),
        (errors.JSONRPC_INVALID_PARAMS, errors.Status.INVALID_ARGUMENT),
        (-32000, errors.Status.FAILED_PRECONDITION),  # the server's own fault: never UNKNOWN
        (-1, errors.Status.FAILED_PRECONDITION),
    ],
)
def test_server_error_status(code: int, status: errors.Status) -> None:
    assert errors.ServerError(code, "MCP server returned an invalid tools/call result").status is status


def test_check_initialize_rejects_bad_shape() -> None:
    with pytest.raises(ProtocolViolation, match=r"initialize result is not valid MCP.*protocolVersion"):
        check_initialize({"serverInfo": {"name": "x", "version": "1"}})


# Schemas come from an untrusted server: validation must never reach outside the host process's memory,
# nor echo untrusted values unbounded, nor let a server-chosen pattern stall the host.


def test_remote_ref_is_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    fetched: list[str] = []

    def spy(request: Any, *args: Any, **kwargs: Any) -> Any:
        fetched.append(getattr(request, "full_url", str(request)))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", spy)
    schema = {"type": "object", "properties": {"a": {"$ref": "http://169.254.169.254/latest/meta-data"}}}
    with contextlib.suppress(Exception):  # whatever it raises, the host must not have gone to the network
        check_arguments(checked(schema), {"a": 1})
    assert fetched == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_file_ref_does_not_read_host_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"const": "TOPSECRET-123"}))
    schema = {"type": "object", "properties": {"a": {"$ref": secret.as_uri()}}}
    with pytest.raises(RunnerError) as caught:
        check_arguments(checked(schema), {"a": "guess"})
    assert "TOPSECRET" not in caught.value.message


def test_rejection_message_does_not_echo_huge_untrusted_value() -> None:
    with pytest.raises(ResultRejected) as caught:
        check_call_result(checked(output_schema=OUTPUT), result({"n": "A" * 100_000}))
    assert len(caught.value.message) < 4096


_REDOS = """
import mcp_types
from runner.guard.validate import check_call_result, check_tools
schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}}
tool = check_tools([mcp_types.Tool(name="t", input_schema={"type": "object"}, output_schema=schema)])["t"]
try:
    check_call_result(tool, mcp_types.CallToolResult(content=[], structured_content={"s": "a" * 40 + "!"}))
except Exception:
    pass
"""


def test_output_pattern_cannot_stall_the_host() -> None:
    try:
        subprocess.run([sys.executable, "-c", _REDOS], timeout=3, check=True, cwd=Path(__file__).parents[2])
    except subprocess.TimeoutExpired:
        pytest.fail("validating a 41-character string took more than 3 s")


def test_a_result_integer_beyond_a_json_numbers_range_is_rejected_not_a_crash() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 0.5}}}
    tool = validate.check_tools([mcp_types.Tool(name="t", inputSchema={"type": "object"}, outputSchema=schema)])["t"]
    raw = {"content": [], "structuredContent": {"n": 10**400}}  # jsonschema's float arithmetic overflowed on it
    with pytest.raises(ResultRejected, match=r"\$\.structuredContent\.n: integer is beyond the range"):
        validate.parse_call_result(tool, raw)


@pytest.mark.parametrize("size", [2**63, -1, 10**40])
@pytest.mark.parametrize(
    ("model", "raw"),
    [
        (mcp_types.ListResourcesResult, lambda size: {"resources": [{"uri": "file:///a", "name": "a", "size": size}]}),
        (mcp_types.CallToolResult, lambda size: {"content": [
            {"type": "text", "text": "x"}, {"type": "resource_link", "uri": "file:///a", "name": "a", "size": size},
        ]}),
        (mcp_types.GetPromptResult, lambda size: {"messages": [
            {"role": "user", "content": {"type": "resource_link", "uri": "file:///a", "name": "a", "size": size}},
        ]}),
    ],
)
def test_a_declared_size_the_api_cannot_carry_is_rejected_before_anything_records_it(
    model: type[BaseModel], raw: Any, size: int
) -> None:
    """A server's impossible size is its fault (FAILED_PRECONDITION) at the guard, wherever a resource sits:
    found later, at conversion, the audit log would already say the result was returned."""
    with pytest.raises(ResultRejected, match="declares a size of"):
        parse_result(model, raw(size), "answer")
    assert parse_result(model, raw(2**63 - 1), "answer")



def test_a_result_with_more_list_items_than_the_cap_is_refused_before_pydantic_builds_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """60 000 content blocks (within the channel's value cap) held the GIL ~0.5 s in model_validate."""
    built: list[Any] = []
    real = mcp_types.CallToolResult.model_validate

    def counted(raw: Any) -> mcp_types.CallToolResult:
        built.append(raw)
        return real(raw)

    monkeypatch.setattr(mcp_types.CallToolResult, "model_validate", counted)
    block = {"type": "text", "text": ""}
    with pytest.raises(ResultRejected, match=r"\$\.content: its lists hold more than 4096 items"):
        parse_result(mcp_types.CallToolResult, {"content": [block] * 60_000}, "x")
    # Nested lists count together: 2048 prompts with 2 arguments each pass no list's cap alone.
    prompt = {"name": "p", "arguments": [{"name": "a"}, {"name": "b"}]}
    with pytest.raises(ResultRejected, match="more than 4096 items"):
        parse_result(mcp_types.ListPromptsResult, {"prompts": [prompt] * 2048}, "x")
    assert built == []
    # At the cap, and free-form JSON of any length, pass.
    parse_result(mcp_types.CallToolResult, {"content": [block] * validate.MAX_RESULT_ITEMS}, "x")
    parse_result(mcp_types.CallToolResult, {"content": [], "structuredContent": {"rows": list(range(50_000))}}, "x")
    assert len(built) == 2


def _nested_choices(levels: int) -> dict[str, Any]:
    """A schema without patterns whose every branch is tried: 2**levels evaluations for a value it refuses."""
    defs = {f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 2} for i in range(levels)}
    return {"$defs": {**defs, f"d{levels}": {"type": "string"}}, "$ref": "#/$defs/d0"}


def test_every_keyword_of_a_schema_is_held_to_the_validation_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only patterns looked at the deadline: 22 levels of anyOf held the GIL for minutes."""
    monkeypatch.setattr(schema_module, "VALIDATION_BUDGET_S", 0.0)  # a budget already spent: the first keyword stops
    checked = check_tools([tool("t", _nested_choices(12), _nested_choices(12))])["t"]
    with pytest.raises(SchemaViolation, match="took too long"):
        check_arguments(checked, {"a": 1})
    result = mcp_types.CallToolResult(content=[], structured_content=5)
    with pytest.raises(ResultRejected, match="took too long"):
        check_call_result(checked, result)


def test_the_validation_budget_grows_with_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flat 0.5 s dropped the memory server's graph of 10,000 entities (0.4 s idle) on a busy machine: large
    honest values get time per value, while an exploding schema on a small value still stops at once."""
    monkeypatch.setattr(schema_module, "VALIDATION_BUDGET_S", 0.0)  # only the allowance per value is left
    ticks = itertools.count()  # a clock that moves 1 µs per look, whatever the machine's load
    monkeypatch.setattr(schema_module, "time", types.SimpleNamespace(monotonic=lambda: next(ticks) * 1e-6))
    rows = {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}
    checked = check_tools([tool("t", {"type": "object"}, {"type": "object", "properties": {"rows": rows}})])["t"]
    rows_of_names = {"rows": [{"name": f"r{i}"} for i in range(20_000)]}
    check_call_result(checked, mcp_types.CallToolResult(content=[], structured_content=rows_of_names))
    exploding = check_tools([tool("x", _nested_choices(12), _nested_choices(12))])["x"]
    with pytest.raises(ResultRejected, match="took too long"):
        check_call_result(exploding, mcp_types.CallToolResult(content=[], structured_content=5))


def test_unique_items_is_one_pass_and_keeps_jsonschemas_equality(monkeypatch: pytest.MonkeyPatch) -> None:
    """jsonschema compared objects pairwise in one keyword call (5000 objects: 17 s of the GIL)."""
    compared: list[Any] = []
    real = jsonschema._utils.equal

    def counted(one: Any, two: Any) -> bool:
        compared.append(one)
        return bool(real(one, two))

    monkeypatch.setattr(jsonschema._utils, "equal", counted)
    unique = {"type": "object", "properties": {"u": {"type": "array", "uniqueItems": True}}}
    checked = check_tools([tool("t", unique)])["t"]
    check_arguments(checked, {"u": [{"a": i} for i in range(5000)]})
    assert compared == []
    for same in ([1, 1.0], [{"a": 1, "b": [2]}, {"b": [2.0], "a": 1}], ["x", "x"]):
        with pytest.raises(SchemaViolation, match="non-unique"):
            check_arguments(checked, {"u": same})
    for different in ([True, 1], [False, 0, None], [[1], [1, 1]], ["1", 1], [{"a": 1}, {"a": True}]):
        check_arguments(checked, {"u": different})


@pytest.mark.parametrize(
    "pattern",
    ["((a{1000}){1000}){1000}", "(?:x{1000,}){1000}", "a{99999999999999999999}", "(" * 3000 + "a" + ")" * 3000],
)
def test_a_pattern_too_large_to_compile_is_refused_when_tools_are_listed(pattern: str) -> None:
    """regex writes out repeats when it compiles, before its match timeout starts: minutes of the GIL, gigabytes."""
    for declared in ({"type": "string", "pattern": pattern}, {"type": "object", "patternProperties": {pattern: {}}}):
        with pytest.raises(ResultRejected, match="schema the runner refuses"):
            check_tools([tool("t", {"type": "object", "properties": {"x": declared}})])
    check_tools([tool("t", {"type": "object", "properties": {"x": {"pattern": "^[0-9a-f]{64}$|(?:a{0,1000}){1000}"}}})])
