"""``mcp-runner templates`` and ``mcp-runner complete``, and what ``call`` prints when the server asks for input.

Each opens a session of the profile for the command's length, as ``tools`` and ``call`` do. ``call`` cannot
answer a server's request (it has no one to ask): it prints the request and exits 1 naming what can.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runner import cli_json
from runner.cli_common import add_json_option, field, one_line, open_client, print_json
from runner.cli_exit import Exit
from runner.client import InputRequest


def templates(args: argparse.Namespace) -> int:
    with open_client(args) as client, client.session(args.profile) as opened:
        listed = client.list_resource_templates(opened.session_id)
    if args.json:
        cli_json.emit([cli_json.template(t) for t in listed])
        return 0
    print(f"# {len(listed)} resource templates")
    for template in listed:
        description = one_line(template.description)
        mime = f" ({field(template.mime_type)})" if template.mime_type else ""
        about = f" — {description}" if description else ""
        print(f"{field(template.uri_template)}  {field(template.name)}{mime}{about}")
    return 0


def complete(args: argparse.Namespace) -> int:
    context: dict[str, str] = {}
    for pair in args.context:
        name, equals, value = pair.partition("=")
        if not equals:
            print(f"error: --context {pair!r}: use NAME=VALUE", file=sys.stderr)
            return 2
        context[name] = value
    with open_client(args) as client, client.session(args.profile) as opened:
        completed = client.complete(
            opened.session_id, argument=args.argument, value=args.value, prompt=args.prompt,
            resource_template=args.resource_template, context=context,
        )  # fmt: skip
    for value in completed.values:
        print(field(value))
    if completed.has_more or completed.HasField("total"):
        total = f" of {completed.total}" if completed.HasField("total") else ""
        print(f"({len(completed.values)}{total} values{', more exist' if completed.has_more else ''})", file=sys.stderr)
    return 0


def input_requested(request: InputRequest) -> int:
    """``call``'s end when the server asks the caller something: show it, say who can answer, exit 1."""
    shown: dict[str, Any] = {"method": request.method, "params": request.params}
    print_json(shown)
    print(
        f"error: the server asked for input ({request.method}) during the call; `mcp-runner call` cannot answer it, "
        "so the call was cancelled. Answer from a program: the Python client's call_tool_answering (or "
        "call_tool(answers_input=True) and answer_input), or an MCP host through the MCP door.",
        file=sys.stderr,
    )
    return Exit.FAILURE


TEMPLATES_EXAMPLES = """\
examples:
  mcp-runner templates --profile everything
  mcp-runner templates --profile everything --json | jq -r '.[].uri_template'
"""
COMPLETE_EXAMPLES = """\
examples:
  mcp-runner complete --profile everything --prompt completable-prompt department Eng
  mcp-runner complete --profile everything --prompt completable-prompt name --context department=Engineering
"""


def add_commands(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Register ``templates`` and ``complete`` on the CLI's subparsers."""
    listing = sub.add_parser("templates", help="list the resource templates of a profile's server",
                             epilog=TEMPLATES_EXAMPLES, formatter_class=formatter)  # fmt: skip
    listing.add_argument("--profile", required=True)
    add_json_option(listing, "a list of templates")
    listing.set_defaults(func=templates)

    completing = sub.add_parser("complete", help="ask a profile's server to complete an argument",
                                epilog=COMPLETE_EXAMPLES, formatter_class=formatter)  # fmt: skip
    completing.add_argument("--profile", required=True)
    ref = completing.add_mutually_exclusive_group(required=True)
    ref.add_argument("--prompt", metavar="NAME", help="an argument of this prompt")
    ref.add_argument("--resource-template", metavar="URI_TEMPLATE", help="a variable of this resource template")
    completing.add_argument("argument", help="the argument's name")
    completing.add_argument("value", nargs="?", default="", help="what is typed so far (default: nothing)")
    completing.add_argument(
        "--context", action="append", default=[], metavar="NAME=VALUE", help="another argument's value (repeatable)"
    )
    completing.set_defaults(func=complete)
