"""``mcp-runner shell PROFILE``: one session, many requests, typed or piped in.

A stateful server keeps what one call did for the next (``memory``'s knowledge graph, ``filesystem``'s roots);
the shell opens one session, runs each line against it, and closes it at ``exit`` or end of input. Read from a
pipe, it prints no prompt, and its exit status is the last failed line's (0 when none failed), so a script
notices; a failed line never ends the shell.
"""

from __future__ import annotations

import argparse
import cmd
import contextlib
import io
import sys
from collections.abc import Callable
from typing import Any

import grpc

from runner import cli_json
from runner.cli_common import add_json_option, field, is_utf8, open_client
from runner.cli_exit import Exit, exit_for, explain
from runner.cli_render import (
    UsageError,
    call_and_print,
    json_object,
    print_contents,
    print_prompt_result,
    print_prompts,
    print_resources,
    print_tools,
    prompt_arguments,
)
from runner.cli_session import labels_arg
from runner.client import RunnerClient

EXAMPLES = """\
examples:
  mcp-runner shell memory
  memory> call create_entities {"entities": [{"name": "Ada", "entityType": "person", "observations": ["poet"]}]}
  memory> call open_nodes {"names": ["Ada"]}
  memory> exit

  printf '%s\\n' 'tools' 'call read_graph' | mcp-runner shell memory --json
"""


class Shell(cmd.Cmd):
    """Each ``do_*`` is one command; its docstring is its ``help``."""

    intro = ""

    def __init__(self, client: RunnerClient, session_id: str, args: argparse.Namespace, interactive: bool) -> None:
        super().__init__(stdout=sys.stdout)
        self.client, self.session_id, self.args = client, session_id, args
        self.prompt = f"{args.profile}> " if interactive else ""
        self.use_rawinput = interactive
        self.status = Exit.OK
        """The last failed line's exit code."""

    def _run(self, line: Callable[[], int | None]) -> None:
        try:
            code = line() or Exit.OK
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = Exit.USAGE
        except grpc.RpcError as exc:
            if not isinstance(exc, grpc.Call):
                raise
            details = exc.details() or ""
            print(f"error: {exc.code().name}: {explain(exc.code(), details, self.args)}", file=sys.stderr)
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and details.startswith(f"session {self.session_id} "):
                print("(this shell's session has ended: `exit`, then start another shell)", file=sys.stderr)
            code = exit_for(exc.code())
        except KeyboardInterrupt:
            print("cancelled", file=sys.stderr)
            code = Exit.INTERRUPTED
        if code != Exit.OK:
            self.status = Exit(code)

    def onecmd(self, line: str) -> bool:
        if not is_utf8(line):
            self._run(_usage("this line is not UTF-8 (bytes that are not text): it was not run"))
            return False
        return super().onecmd(line)

    def do_tools(self, arg: str) -> None:
        """tools: list the session's tools"""

        def line() -> None:
            tools = self.client.list_tools(self.session_id)
            if self.args.json:
                cli_json.emit([cli_json.tool(t) for t in tools])
            else:
                print_tools(tools)

        self._run(line)

    def do_call(self, arg: str) -> None:
        """call TOOL [{JSON arguments}]: call a tool of the session"""
        tool, _, rest = arg.strip().partition(" ")
        if not tool:
            self._run(_usage("call needs a TOOL, e.g. call read_graph {}"))
            return
        self._run(lambda: call_and_print(self.client, self.session_id, tool, json_object(rest.strip() or "{}"),
                                         as_json=self.args.json))  # fmt: skip

    def do_resources(self, arg: str) -> None:
        """resources: list the session's resources"""
        self._run(lambda: print_resources(self.client.list_resources(self.session_id), self.args.json))

    def do_read(self, arg: str) -> None:
        """read URI: read one resource"""
        uri = arg.strip()
        if not uri:
            self._run(_usage("read needs a URI"))
            return
        self._run(lambda: print_contents(self.client.read_resource(self.session_id, uri), self.args.json))

    def do_prompts(self, arg: str) -> None:
        """prompts: list the session's prompts"""
        self._run(lambda: print_prompts(self.client.list_prompts(self.session_id), self.args.json))

    def do_get(self, arg: str) -> None:
        """get PROMPT [{JSON arguments, strings}]: render a prompt"""
        name, _, rest = arg.strip().partition(" ")
        if not name:
            self._run(_usage("get needs a PROMPT"))
            return
        self._run(lambda: print_prompt_result(
            self.client.get_prompt(self.session_id, name, prompt_arguments(rest.strip() or "{}")), self.args.json
        ))  # fmt: skip

    def do_exit(self, arg: str) -> bool:
        """exit: close the session and leave (also quit, or end of input)"""
        return True

    do_quit = do_exit

    def do_EOF(self, arg: str) -> bool:
        """end of input (Ctrl-D): as exit"""
        if self.use_rawinput:
            print(file=sys.stderr)
        return True

    def emptyline(self) -> bool:
        return False  # not cmd's default: repeating the last command (a tool call!) on an empty line

    def default(self, line: str) -> None:
        if line.lstrip().startswith("#"):
            return
        command = line.split()[0] if line.split() else line
        self._run(_usage(f"unknown command {field(command)!r}; `help` lists them"))


def _usage(message: str) -> Callable[[], None]:
    def refuse() -> None:
        raise UsageError(message)

    return refuse


def shell(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    if isinstance(sys.stdin, io.TextIOWrapper):  # bytes that are not UTF-8 arrive as surrogates, refused per line
        sys.stdin.reconfigure(errors="surrogateescape")
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing and history for input()
    with open_client(args) as client:
        opened = client.open_session(args.profile, labels=labels_arg(args.label))
        print(f"session {field(opened.session_id)} of profile {field(args.profile)}: {field(opened.server.name)} "
              f"{field(opened.server.version)}, {len(opened.tools)} tools; `help` lists the commands, `exit` "
              "closes it", file=sys.stderr)  # fmt: skip
        session = Shell(client, opened.session_id, args, interactive)
        try:
            while True:
                try:
                    session.cmdloop()
                    break
                except KeyboardInterrupt:  # at the prompt: a new line, as a shell does
                    print("^C", file=sys.stderr)
        except BaseException:
            with contextlib.suppress(grpc.RpcError):  # the shell's own failure is the one to report
                client.close_session(opened.session_id)
            raise
        _close_unless_ended(client, opened.session_id)
        return session.status


def _close_unless_ended(client: RunnerClient, session_id: str) -> None:
    """Close the session; one that already ended (its server exited, or reaped since) keeps the shell's status."""
    try:
        client.close_session(session_id)
    except grpc.RpcError as exc:
        if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
            raise


def add_command(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    parser = sub.add_parser(
        "shell", help="an interactive session: one sandbox kept across tools/call/read/get lines",
        description=__doc__.split("\n\n")[1].replace("``", "`") + "\n\ncommands: tools, call TOOL {json}, resources, "
        "read URI, prompts, get PROMPT {json}, help, exit", epilog=EXAMPLES, formatter_class=formatter,
    )  # fmt: skip
    parser.add_argument("profile", metavar="PROFILE")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeatable)")
    add_json_option(parser, "each line's answer as one JSON document")
    parser.set_defaults(func=shell)
