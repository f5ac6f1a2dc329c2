"""``mcp-runner session open|tools|call|resources|read|prompts|get|close``: one session across many commands.

``tools --profile`` and ``call --profile`` open a session for the command's length; a stateful server (``memory``
keeps a knowledge graph) forgets everything between them. ``session open`` prints an id that later commands
name, until ``session close`` (or the profile's idle timeout) ends it. The session belongs to the caller that
opened it: the same token or certificate must come with every command.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runner import cli_json
from runner.cli_common import add_json_option, field, open_client
from runner.cli_exit import Exit
from runner.cli_render import (
    UsageError,
    call_and_print,
    json_object,
    print_contents,
    print_findings,
    print_prompt_result,
    print_prompts,
    print_resources,
    print_tools,
    prompt_arguments,
)
from runner.client import OpenedSession

EXAMPLES = """\
examples:
  id=$(mcp-runner session open memory)
  mcp-runner session call $id create_entities \\
      '{"entities": [{"name": "Ada", "entityType": "person", "observations": ["wrote the first program"]}]}'
  mcp-runner session call $id open_nodes '{"names": ["Ada"]}'
  mcp-runner session tools $id --json | jq '.[].name'
  mcp-runner session resources $id
  mcp-runner session read $id test://static/resource/1
  mcp-runner session prompts $id
  mcp-runner session get $id simple-prompt
  mcp-runner session close $id
"""


def labels_arg(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals:
            raise UsageError(f"--label {pair!r}: use KEY=VALUE")
        labels[key] = value
    return labels


def opened_json(opened: OpenedSession) -> dict[str, Any]:
    return {
        "session_id": opened.session_id, "server": cli_json.server(opened.server),
        "tools": [cli_json.tool(t) for t in opened.tools], "session": cli_json.session(opened.session),
        "findings": cli_json.findings(opened.findings),
    }  # fmt: skip


def _open(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        opened = client.open_session(args.profile, labels=labels_arg(args.label))
    if args.json:
        cli_json.emit(opened_json(opened))
        return Exit.OK
    print(opened.session_id)
    server = opened.server
    print(f"opened session {field(opened.session_id)} of profile {field(args.profile)}: {field(server.name)} "
          f"{field(server.version)}, {len(opened.tools)} tools; end it with `mcp-runner session close "
          f"{field(opened.session_id)}`", file=sys.stderr)  # fmt: skip
    print_findings(opened.findings)
    return Exit.OK


def _tools(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        tools = client.list_tools(args.session_id)
    if args.json:
        cli_json.emit([cli_json.tool(t) for t in tools])
    else:
        print_tools(tools)
    return Exit.OK


def _call(args: argparse.Namespace) -> int:
    arguments = json_object(args.arguments)
    with open_client(args) as client:
        return call_and_print(client, args.session_id, args.tool, arguments, timeout_ms=args.timeout_ms,
                              stream=args.stream, as_json=args.json)  # fmt: skip


def _resources(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        print_resources(client.list_resources(args.session_id), args.json)
    return Exit.OK


def _read(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        print_contents(client.read_resource(args.session_id, args.uri), args.json)
    return Exit.OK


def _prompts(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        print_prompts(client.list_prompts(args.session_id), args.json)
    return Exit.OK


def _get(args: argparse.Namespace) -> int:
    arguments = prompt_arguments(args.arguments)
    with open_client(args) as client:
        print_prompt_result(client.get_prompt(args.session_id, args.prompt, arguments), args.json)
    return Exit.OK


def _close(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        closed = client.close_session(args.session_id)
    if args.json:
        cli_json.emit(cli_json.session(closed))
        return Exit.OK
    usage = closed.usage
    print(f"session {field(closed.session_id)} {cli_json.SESSION_STATES.get(closed.state, 'unknown')}: "
          f"{usage.calls} calls, {usage.wall_ms / 1000:.1f} s, {usage.cpu_ms / 1000:.2f} CPU-s, peak "
          f"{usage.peak_memory_bytes / 2**20:.0f} MiB")  # fmt: skip
    return Exit.OK


TOOLS_EXAMPLES = """\
examples:
  mcp-runner tools --profile time
  mcp-runner tools --profile everything --json | jq -r '.[].name'
"""
CALL_EXAMPLES = """\
examples:
  mcp-runner call --profile time get_current_time '{"timezone": "Asia/Tokyo"}'
  mcp-runner call --profile everything echo '{"message": "hi"}' --json | jq -r '.content[0].text'
  mcp-runner call --profile everything trigger-long-running-operation '{"duration": 2, "steps": 4}' --stream
  mcp-runner call --address 10.0.0.5:50051 --token "$TOKEN" --profile time get_current_time '{"timezone": "UTC"}'
"""


def _tools_once(args: argparse.Namespace) -> int:
    with open_client(args) as client, client.session(args.profile) as opened:
        pass
    if args.json:
        cli_json.emit([cli_json.tool(t) for t in opened.tools])
        return Exit.OK
    server = opened.server
    print(f"# {field(server.name)} {field(server.version)} (MCP {field(server.protocol_version)}) — "
          f"{len(opened.tools)} tools")  # fmt: skip
    print_tools(opened.tools)
    print_findings(opened.findings)
    return Exit.OK


def _call_once(args: argparse.Namespace) -> int:
    arguments = json_object(args.arguments)
    # Always the streaming call: the session lives only as long as this command, so a tool that needs
    # approval must wait for the decision here (the stream does), not come back later.
    with open_client(args) as client, client.session(args.profile) as opened:
        return call_and_print(client, opened.session_id, args.tool, arguments, timeout_ms=args.timeout_ms,
                              stream=args.stream, as_json=args.json)  # fmt: skip


def add_once_commands(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Register ``tools`` and ``call``: each opens a session of a profile for the command's length."""
    tools = sub.add_parser("tools", help="list the tools of a profile's server (a session opened and closed)",
                           epilog=TOOLS_EXAMPLES, formatter_class=formatter)  # fmt: skip
    tools.add_argument("--profile", required=True)
    add_json_option(tools, "a list of tools")
    tools.set_defaults(func=_tools_once)

    call = sub.add_parser("call", help="open a session, call one tool, close", epilog=CALL_EXAMPLES,
                          formatter_class=formatter)  # fmt: skip
    call.add_argument("--profile", required=True)
    call.add_argument("tool")
    call.add_argument("arguments", nargs="?", default="{}", help="arguments as a JSON object")
    call.add_argument("--timeout-ms", type=int, default=0, help="per-call timeout (0 = profile's)")
    call.add_argument("--stream", action="store_true", help="show progress while the tool runs")
    add_json_option(call, "the result: content, structured_content, is_error, findings, audit_id")
    call.set_defaults(func=_call_once)


def add_commands(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Register ``session`` and its actions on the CLI's subparsers."""
    session = sub.add_parser(
        "session", help="open a session, then use it across commands (for stateful servers), then close it",
        description=__doc__.split("\n\n")[1].replace("``", "`"), epilog=EXAMPLES, formatter_class=formatter,
    )  # fmt: skip
    actions = session.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, helptext: str, func: Any, json_what: str = "one JSON document") -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=helptext, description=helptext,
                                                             epilog=EXAMPLES, formatter_class=formatter)
        if name != "open":
            parser.add_argument("session_id", metavar="SESSION", help="the id `session open` printed")
        add_json_option(parser, json_what)
        parser.set_defaults(func=func)
        return parser

    opening = action("open", "open a session of PROFILE and print its id (more on stderr)", _open)
    opening.add_argument("profile", metavar="PROFILE")
    opening.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeatable)")
    action("tools", "list the session's tools", _tools, "a list of tools")
    calling = action("call", "call one of the session's tools", _call, "the result")
    calling.add_argument("tool", metavar="TOOL")
    calling.add_argument("arguments", nargs="?", default="{}", metavar="ARGS", help="a JSON object (default {})")
    calling.add_argument("--timeout-ms", type=int, default=0, help="per-call timeout (0 = the profile's)")
    calling.add_argument("--stream", action="store_true", help="show progress on stderr while the tool runs")
    action("resources", "list the session's resources", _resources, "a list of resources")
    reading = action("read", "read one resource", _read, "a list of contents (blobs in base64)")
    reading.add_argument("uri", metavar="URI")
    action("prompts", "list the session's prompts", _prompts, "a list of prompts")
    getting = action("get", "render one prompt", _get, "the rendered messages")
    getting.add_argument("prompt", metavar="PROMPT")
    getting.add_argument("arguments", nargs="?", default="{}", metavar="ARGS",
                         help="a JSON object of strings (default {})")  # fmt: skip
    action("close", "close the session and print what it used", _close, "the closed session")
