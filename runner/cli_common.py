"""Helpers every ``mcp-runner`` client command shares: the connection from the common options and plain-text output.

Apart from ``runner.cli`` so the command modules (``runner.cli_audit``) use them without importing the CLI
that registers those commands.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from runner.client import RunnerClient, tls_credentials
from runner.client_channel import ADDRESS_ENV, DEFAULT_ADDRESS, service_address
from runner.text import control_free

CONNECTION_OPTIONS = (
    ("--address", ADDRESS_ENV, "HOST:PORT",
     f"the service's gRPC address (env {ADDRESS_ENV}, default {DEFAULT_ADDRESS})"),
    ("--token", "MCP_RUNNER_TOKEN", "TOKEN", "bearer token (env MCP_RUNNER_TOKEN)"),
    ("--ca", "MCP_RUNNER_CA", "FILE", "CA certificate that signed the service's; turns on TLS (env MCP_RUNNER_CA)"),
    ("--cert", "MCP_RUNNER_CERT", "FILE", "client certificate for mutual TLS (env MCP_RUNNER_CERT)"),
    ("--key", "MCP_RUNNER_KEY", "FILE", "client private key for mutual TLS (env MCP_RUNNER_KEY)"),
)
"""How client commands reach the service: defined once, accepted before the command and after it."""


def add_connection_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The connection options on ``parser``: with their defaults (env, then built-in) at the top; below it, without
    any (``SUPPRESS``), so a value given after the command replaces the top's and an absent one leaves it be."""
    group = parser.add_argument_group("connection (before or after the command)")
    for flag, variable, metavar, what in CONNECTION_OPTIONS:
        if flag in parser._option_string_actions:  # the command has its own meaning for it
            continue
        default: Any = argparse.SUPPRESS
        if top:
            default = service_address() if flag == "--address" else os.environ.get(variable)
        group.add_argument(flag, default=default, metavar=metavar, help=what)


def spread_connection_options(parser: argparse.ArgumentParser, local: Collection[str]) -> None:
    """Add the connection options to every command below ``parser`` (nested ones too) except the ``local`` ones,
    which never reach the service: so ``mcp-runner call --address X …`` works, whoever registered ``call``."""
    done: set[int] = set()

    def spread(node: argparse.ArgumentParser) -> None:
        for action in node._actions:
            if not isinstance(action, argparse._SubParsersAction):
                continue
            for name, child in action.choices.items():
                if (node is parser and name in local) or id(child) in done:
                    continue
                done.add(id(child))
                add_connection_options(child, top=False)
                spread(child)

    spread(parser)


def add_json_option(parser: argparse.ArgumentParser, what: str = "one JSON document") -> None:
    parser.add_argument("--json", action="store_true", help=f"machine output on standard output: {what}")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


def one_line(text: str) -> str:
    return " ".join(text.split())


def field(text: str) -> str:
    """A one-line field of a line-oriented output (a name, an id, a label): its line breaks and tabs shown as
    ``\\n`` and ``\\t``, and every other control or invisible character (``\\r``, ESC, U+2028) as ``control_free``
    escapes it, so a value from a server or another caller cannot start or overwrite a line that looks like the
    command's own (a forged tool, approval or session row)."""
    return control_free(text).replace("\n", "\\n").replace("\t", "\\t")


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be sent: bytes that were not UTF-8 reach Python as lone surrogates (surrogateescape),
    which no request (protobuf, JSON) can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def open_client(args: argparse.Namespace) -> RunnerClient:
    credentials = None
    if args.ca or args.cert or args.key:
        credentials = tls_credentials(
            Path(args.ca) if args.ca else None,
            Path(args.cert) if args.cert else None,
            Path(args.key) if args.key else None,
        )
    return RunnerClient(args.address, credentials=credentials, token=args.token or None)
