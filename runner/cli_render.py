"""How the client commands show what the service answered, as text or ``--json``, and how they run one tool call.

Shared by the one-shot commands (``tools``, ``call``), ``session …`` and ``shell``, so a tool, a result or a
resource reads the same whichever command showed it. Every value here came from a server or another caller:
one-line fields go through ``field`` so none can start a line that looks like the command's own.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from runner import cli_json
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.cli_common import field, one_line, print_json
from runner.cli_exit import Exit
from runner.cli_protocol import input_requested
from runner.client import InputRequest, Progress, RunnerClient, ToolResult
from runner.client_messages import content_text


class UsageError(Exception):
    """A command line the CLI refuses before asking the service anything (exit 2)."""


def json_object(text: str, what: str = "arguments") -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} are not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object, like '{{\"name\": \"value\"}}'")
    return value


def prompt_arguments(text: str) -> dict[str, str]:
    """A prompt's arguments: MCP passes them as strings, so only a JSON object of strings is one."""
    arguments = json_object(text)
    wrong = [name for name, value in arguments.items() if not isinstance(value, str)]
    if wrong:
        raise UsageError(f"prompt arguments are strings: {', '.join(map(repr, wrong))} is not one (quote it)")
    return arguments


def print_findings(findings: Iterable[pb.Finding]) -> None:
    for f in findings:
        print(f"finding: {f.kind} x{f.count} {f.action} at {f.where}", file=sys.stderr)


def print_tools(tools: Sequence[pb.Tool]) -> None:
    for tool in tools:
        description = one_line(tool.description)
        print(f"{field(tool.name)}" + (f" — {description}" if description else ""))
        print(f"    input: {field(tool.input_schema_json or '{}')}")


def print_result(result: ToolResult, as_json: bool) -> int:
    if as_json:
        cli_json.emit(cli_json.result(result))
    else:
        if result.content:
            print(result.text)
        if result.structured_content is not None:
            print("structured content:")
            print_json(result.structured_content)
        print_findings(result.findings)
    if result.is_error:
        print("the tool reported an error", file=sys.stderr)
        return Exit.FAILURE
    return Exit.OK


def approval_line(approval: pb.Approval) -> str:
    state = cli_json.APPROVAL_STATES.get(approval.state, "unknown")
    decided = f" by {field(approval.decided_by)}" if approval.decided_by else ""
    reason = f" ({one_line(approval.reason)})" if approval.reason else ""
    return (
        f"{field(approval.approval_id)}  {state}{decided}{reason}  caller={field(approval.caller)} "
        f"session={field(approval.session_id)} tool={field(approval.tool)} "
        f"arguments={field(approval.arguments_json or '{}')}  rule: {field(approval.rule)}"
    )


def call_and_print(
    client: RunnerClient, session_id: str, tool: str, arguments: dict[str, Any], *, timeout_ms: int = 0,
    stream: bool = False, as_json: bool = False,
) -> int:  # fmt: skip
    """One call through the streaming RPC: an approval it needs is waited for here, shown on stderr as it goes."""
    result: ToolResult | None = None
    for item in client.call_tool_stream(session_id, tool, arguments, timeout_ms=timeout_ms, answers_input=True):
        if isinstance(item, InputRequest):
            return input_requested(item)
        if isinstance(item, Progress):
            if stream:
                total = f"/{item.total:g}" if item.total is not None else ""
                message = f": {item.message}" if item.message else ""
                print(f"progress {item.progress:g}{total}{message}", file=sys.stderr)
        elif isinstance(item, ToolResult):
            result = item
        else:
            print(f"approval {approval_line(item)}", file=sys.stderr)
    if result is None:
        print("error: the stream ended without a result", file=sys.stderr)
        return Exit.FAILURE
    return print_result(result, as_json)


def print_resources(resources: Sequence[pb.Resource], as_json: bool) -> None:
    if as_json:
        cli_json.emit([cli_json.resource(r) for r in resources])
        return
    print(f"# {len(resources)} resources")
    for r in resources:
        mime = f" ({field(r.mime_type)})" if r.mime_type else ""
        about = f" — {one_line(r.description)}" if r.description else ""
        print(f"{field(r.uri)}  {field(r.name)}{mime}{about}")


def print_contents(contents: Sequence[pb.ResourceContents], as_json: bool) -> None:
    if as_json:
        cli_json.emit([cli_json.resource_contents(c) for c in contents])
        return
    for c in contents:
        if c.WhichOneof("body") == "blob":
            print(f"[{field(c.uri)}: {len(c.blob)} bytes of {field(c.mime_type or 'binary data')}; --json has them]")
        else:
            print(c.text)


def print_prompts(prompts: Sequence[pb.Prompt], as_json: bool) -> None:
    if as_json:
        cli_json.emit([cli_json.prompt(p) for p in prompts])
        return
    print(f"# {len(prompts)} prompts")
    for p in prompts:
        names = ", ".join(field(a.name) + ("" if a.required else "?") for a in p.arguments)
        about = f" — {one_line(p.description)}" if p.description else ""
        print(f"{field(p.name)}({names}){about}")


def print_prompt_result(rendered: pb.GetPromptResponse, as_json: bool) -> None:
    if as_json:
        cli_json.emit(cli_json.prompt_result(rendered))
        return
    if rendered.description:
        print(f"# {one_line(rendered.description)}")
    for message in rendered.messages:
        print(f"[{field(message.role)}] {content_text(message.content)}")
    print_findings(rendered.findings)
