"""Helpers every ``mcp-runner`` client command shares: the connection from the common options and plain-text output.

Apart from ``runner.cli`` so the command modules (``runner.cli_audit``) use them without importing the CLI
that registers those commands.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from runner.client import RunnerClient, tls_credentials


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


def one_line(text: str) -> str:
    return " ".join(text.split())


def field(text: str) -> str:
    """A one-line field of a line-oriented output (a name, an id, a label): its line breaks and tabs shown as
    ``\\n`` and ``\\t``, so a value from a server or another caller cannot start a line that looks like the
    command's own (a forged tool, approval or session row)."""
    return text.replace("\n", "\\n").replace("\t", "\\t")


def open_client(args: argparse.Namespace) -> RunnerClient:
    credentials = None
    if args.ca or args.cert or args.key:
        credentials = tls_credentials(
            Path(args.ca) if args.ca else None,
            Path(args.cert) if args.cert else None,
            Path(args.key) if args.key else None,
        )
    return RunnerClient(args.address, credentials=credentials, token=args.token or None)
