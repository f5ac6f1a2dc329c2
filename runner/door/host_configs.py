"""``mcp-runner mcp``'s command line: its options (the door's URL, the token and TLS files), its stderr (one line a
log record, never a traceback), and ``--print-config HOST``: the snippet that makes a host launch the bridge.

Kept apart from ``runner.door.stdio_bridge`` so building the CLI's parser does not import the MCP SDK and HTTP
client every other command can do without.

Each host keeps its servers in its own JSON file: Claude Desktop ``claude_desktop_config.json`` and Cursor
``.cursor/mcp.json`` under ``mcpServers``, VS Code ``.vscode/mcp.json`` under ``servers`` with ``"type": "stdio"``.
The command is an absolute path: hosts start servers without the shell's PATH (Claude Desktop on macOS has almost
none) and from a directory of their own. A bearer token never goes into the snippet (those files are often shared
or committed): the snippet names a token file instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import ssl
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

DEFAULT_DOOR_URL = "http://127.0.0.1:50052/mcp"
"""The door of a service started with its defaults (``mcp-runner serve``, ``make run``); a profile's endpoint is
this URL, a slash and the profile's name."""

HOSTS = ("claude", "cursor", "vscode")

HOST_FILES = {
    "claude": "claude_desktop_config.json (Settings > Developer > Edit Config)",
    "cursor": ".cursor/mcp.json in the project, or ~/.cursor/mcp.json for every project",
    "vscode": ".vscode/mcp.json in the workspace",
}

HTTP_HOSTS_HELP = (
    "A host that speaks Streamable HTTP needs no bridge: point it at the door itself, "
    "http://127.0.0.1:50052/mcp/PROFILE (e.g. VS Code: {\"servers\": {\"time\": {\"type\": \"http\", "
    "\"url\": \"http://127.0.0.1:50052/mcp/time\"}}}), with an \"Authorization: Bearer …\" header when the "
    "service asks for tokens."
)


def bridge_command() -> list[str]:
    """The absolute command that runs ``mcp-runner``: the script beside this interpreter (a virtualenv's bin),
    else the one on PATH, else this interpreter running the CLI module."""
    beside = Path(sys.executable).parent / "mcp-runner"
    if beside.is_file():
        return [str(beside.absolute())]
    found = shutil.which("mcp-runner")
    if found:
        return [str(Path(found).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "runner.cli"]


def server_name(profile: str) -> str:
    return f"mcp-runner-{profile}"


def host_config(
    host: str, profile: str, *, command: list[str], door_url: str | None = None, token_file: str | None = None
) -> dict[str, Any]:
    """The host's JSON for one server entry that runs ``command mcp PROFILE`` (with ``--url``/``--token-file``
    when given)."""
    args = [*command[1:], "mcp"]
    if door_url:
        args += ["--url", door_url]
    if token_file:
        args += ["--token-file", str(Path(token_file).absolute())]
    args.append(profile)
    entry: dict[str, Any] = {"command": command[0], "args": args}
    if host == "vscode":
        return {"servers": {server_name(profile): {"type": "stdio", **entry}}}
    if host in ("claude", "cursor"):
        return {"mcpServers": {server_name(profile): entry}}
    raise ValueError(f"unknown host {host!r}: one of {', '.join(HOSTS)}")


def tls_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The TLS settings for an https door from the CLI's --ca/--cert/--key; None when none is given. Raises
    ``OSError`` (``ssl.SSLError`` is one) for a file that cannot be read or used."""
    if not (ca or cert):
        return None
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key)
    return context


def endpoint(door_url: str, profile: str) -> str:
    """The profile's endpoint on the door at ``door_url``."""
    return f"{door_url.rstrip('/')}/{quote(profile, safe='')}"


class _OneLine(logging.Formatter):
    """A log record as one line without its traceback: stderr is the host's log of this server, read by people."""

    def format(self, record: logging.LogRecord) -> str:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return " ".join(super().format(record).split())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Speak MCP on stdin/stdout (the stdio transport) and relay every message to the service's MCP door at "
        "URL/PROFILE as one session, one sandbox, for as long as the host keeps this command running. Exit codes: "
        "0 the host closed stdin or sent SIGTERM, 2 a file could not be read, 69 the door is not running or went "
        "away (start `mcp-runner serve`)."
    )
    env = os.environ.get
    parser.add_argument("profile", help="the profile whose sandboxed server the host gets")
    parser.add_argument(
        "--url", default=env("MCP_RUNNER_MCP_URL", DEFAULT_DOOR_URL), metavar="URL",
        help="the service's MCP door; the profile's endpoint is URL/PROFILE (env MCP_RUNNER_MCP_URL, "
        "default %(default)s)",
    )
    parser.add_argument(
        "--token-file", default=env("MCP_RUNNER_TOKEN_FILE"), metavar="PATH",
        help="read the bearer token from this file (env MCP_RUNNER_TOKEN_FILE; else the global --token / "
        "MCP_RUNNER_TOKEN)",
    )
    parser.add_argument(
        "--print-config", choices=HOSTS, metavar="HOST",
        help=f"print the host's config entry that launches this command, then exit ({', '.join(HOSTS)})",
    )


def command(args: argparse.Namespace) -> int:
    """``mcp-runner mcp``: print a host's config, or run the bridge until the host is done."""
    if args.print_config:
        if args.token and not args.token_file:
            print("mcp-runner mcp: the token is not written into the config: put it in a file only you can read "
                  "and pass --token-file", file=sys.stderr)
        door_url = args.url if args.url.rstrip("/") != DEFAULT_DOOR_URL else None
        config = host_config(
            args.print_config, args.profile, command=bridge_command(), door_url=door_url, token_file=args.token_file
        )
        print(f"mcp-runner mcp: merge this into {HOST_FILES[args.print_config]}", file=sys.stderr)
        print(json.dumps(config, indent=2))
        return 0
    # Imported here: the SDK's client transport and the HTTP client are this command's alone.
    from runner.door.stdio_bridge import Door, run_bridge

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine("mcp-runner mcp: %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])

    try:
        token = Path(args.token_file).read_text(encoding="utf-8").strip() if args.token_file else args.token
        tls = tls_context(args.ca, args.cert, args.key)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"mcp-runner mcp: cannot read the token or TLS files: {exc}", file=sys.stderr)
        return 2
    return run_bridge(Door(endpoint(args.url, args.profile), token=token or None, tls=tls))
