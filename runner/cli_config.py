"""``mcp-runner config check [FILE]``: every check ``serve`` runs at start-up, without starting anything.

Exit codes: 0 the configuration is fine, 1 it has problems (one line each: file, key path, what to do), 2 the
command line was wrong. FILE defaults to what ``serve`` would read: env MCP_RUNNER_CONFIG, else the built-in
settings; the policy file the settings name is checked as well. A policy file given as FILE is checked as one.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

EPILOG = """examples:
  mcp-runner config check                    the settings `serve` would read (MCP_RUNNER_CONFIG or built-in)
  mcp-runner config check runner.yaml        a file of yours, and the policy file it names
  mcp-runner config check policy.yaml        a policy file alone
  mcp-runner config check runner.yaml --json one JSON object: ok, summary, problems, notes
exit codes: 0 fine, 1 problems found, 2 usage"""


def add_command(sub: Any) -> None:
    """Register ``config`` (with its one action, ``check``) on the CLI's subcommands."""
    config = sub.add_parser(
        "config", help="check a settings file (and its policy file) as `serve` would, without starting anything"
    )
    actions = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="list every problem (file, key path, what to do); exit 0 when fine, 1 when not",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", nargs="?", metavar="FILE", help="settings file, or a policy file (default: env "
                       "MCP_RUNNER_CONFIG, else the built-in settings)")
    check.add_argument("--backend", choices=("docker", "kubernetes"), help="check for this backend, as "
                       "`serve --backend` (env MCP_RUNNER_BACKEND, else the file's `backend:`, else docker)")
    check.add_argument("--json", action="store_true", help="one JSON object instead of text")
    check.set_defaults(func=config_check)


def config_check(args: argparse.Namespace) -> int:
    from runner.config_check import check_config

    report = check_config(Path(args.file) if args.file else None, backend=args.backend)
    if args.json:
        document = {
            "ok": report.ok,
            "summary": report.summary(),
            "problems": [asdict(problem) for problem in report.problems],
            "notes": list(report.notes),
        }
        print(json.dumps(document, indent=2))
        return 0 if report.ok else 1
    for problem in report.problems:
        print(f"error: {problem.line()}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}")
    if report.ok:
        print(f"ok: {report.summary()}")
        return 0
    print(f"{len(report.problems)} problem(s) found", file=sys.stderr)
    return 1
