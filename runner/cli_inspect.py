"""``mcp-runner profiles``, ``sessions``, ``approvals`` and ``logs SESSION``: what can be opened, what is open and
waiting, and what a session left behind.

``logs`` joins what the service keeps of a session for people, its sandbox's stderr tail (the last few KiB,
redacted and stripped on the host like any result), with its events from the audit log. The service forgets an
ended session after 10 minutes; its audit records stay, and ``logs`` still shows them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import grpc

from runner import cli_json
from runner.cli_audit import audit_records, record_json, record_line
from runner.cli_common import add_json_option, field, one_line, open_client
from runner.cli_exit import Exit
from runner.cli_follow import follow, stderr_lines
from runner.cli_render import approval_line
from runner.client import RunnerClient
from runner.text import control_free

PROFILES_EXAMPLES = """\
examples:
  mcp-runner profiles
  mcp-runner profiles memory
  mcp-runner profiles --json | jq -r '.[] | select(.network == "none") | .name'
"""
LOGS_EXAMPLES = """\
examples:
  mcp-runner logs 3f9c0a1b2c3d4e5f
  mcp-runner logs 3f9c0a1b2c3d4e5f --json | jq -r .stderr
  mcp-runner logs 3f9c0a1b2c3d4e5f --follow
"""
NO_NETWORK = "none — give it an allowlist (network.egress) to reach hosts"
"""A profile without network, as ``profiles`` shows it: what to change when its server needs a host."""


def profiles(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        listed = client.list_profiles(args.name or "")
    if args.json:
        cli_json.emit([cli_json.profile(p) for p in listed])
        return Exit.OK
    if not listed:
        print("no profiles this caller may open (the policy's `profiles:` of this caller names none)",
              file=sys.stderr)  # fmt: skip
    for p in listed:
        about = f" — {one_line(p.description)}" if p.description else ""
        print(f"{field(p.name)}{about}")
        network = NO_NETWORK if p.network == "none" else field(p.network)
        print(f"    image: {field(p.image)}  runtime: {field(p.runtime)}  network: {network}")
        if p.tools_known:
            names = ", ".join(field(t.name) for t in p.tools) or "none"
            print(f"    tools: {names}  (as session {field(p.tools_session_id)} listed them)")
        else:
            print(f"    tools: unknown until a session opens (`mcp-runner tools --profile {field(p.name)}`)")
    return Exit.OK


SESSIONS_EXAMPLES = """\
examples:
  mcp-runner sessions
  mcp-runner sessions 3f9c0a1b2c3d4e5f          # one session: network, runtime, egress decisions
  mcp-runner sessions --json | jq -r '.[] | select(.state == "ready") | .session_id'
"""
APPROVALS_EXAMPLES = """\
examples:
  mcp-runner approvals watch                   # pending ones, then each new request and decision
  mcp-runner approvals list --all --json
  mcp-runner approvals approve apr_0123456789abcdef --reason "change OPS-42"
  mcp-runner approvals deny apr_0123456789abcdef --reason "not during the freeze"
"""


def sessions(args: argparse.Namespace) -> int:
    if args.session_id:
        return _session_detail(args)
    with open_client(args) as client:
        listed = client.list_sessions()
    if args.json:
        cli_json.emit([cli_json.session(s) for s in listed])
        return Exit.OK
    rows: list[tuple[str, ...]] = [("SESSION", "PROFILE", "CALLER", "STATE", "AGE", "CALLS", "LABELS")]
    for s in listed:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        state = cli_json.SESSION_STATES.get(s.state, "unknown")
        cells = (s.session_id, s.profile, s.caller, state, f"{s.age_ms / 1000:.1f}s", str(s.usage.calls), labels)
        rows.append(tuple(map(field, cells)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return Exit.OK


def _session_detail(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        s = client.get_session(args.session_id)
    if args.json:
        cli_json.emit(cli_json.session(s))
        return Exit.OK
    state = cli_json.SESSION_STATES.get(s.state, "unknown")
    print(f"session {field(s.session_id)}  profile {field(s.profile)}  caller {field(s.caller)}  {state}")
    if s.failure:
        print(f"failure: {indented(s.failure)}")
    print(f"runtime: {field(s.runtime)}")
    print(f"network: {field(s.network)}")
    if s.workspace_bytes:
        print(f"workspace: /workspace, {s.workspace_bytes / 2**20:g} MiB (writable)")
    for mount in s.mounts:
        print(f"mount: {field(mount)}")
    if s.egress:
        print(f"egress decisions (most recent {len(s.egress)}):")
    for d in s.egress:
        moment = d.time.ToDatetime().strftime("%H:%M:%S")
        verdict = "allowed" if d.allowed else "REFUSED"
        target = field(f"{d.host}:{d.port}" if d.port else d.host or "-")
        address = f" [{field(d.address)}]" if d.address else ""
        method, why = field(d.method or "-"), f"{field(d.code)}: {field(d.reason)}"
        print(f"  {moment}  {verdict:<7}  {method:<7} {target}{address}  {why}")
    return Exit.OK


def approvals(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        if args.action == "list":
            listed = client.list_approvals(include_decided=args.all)
            if args.json:
                cli_json.emit([cli_json.approval(a) for a in listed])
            else:
                for approval in listed:
                    print(approval_line(approval))
        elif args.action == "watch":
            for approval in client.watch_approvals():
                if args.json:
                    cli_json.emit_line(cli_json.approval(approval))
                else:
                    print(approval_line(approval), flush=True)
        else:
            if not args.approval_id:
                print(f"error: approvals {args.action} needs an APPROVAL_ID", file=sys.stderr)
                return Exit.USAGE
            decided = client.decide_approval(args.approval_id, approve=args.action == "approve", reason=args.reason)
            if args.json:
                cli_json.emit(cli_json.approval(decided))
            else:
                print(approval_line(decided))
    return Exit.OK


def indented(text: str) -> str:
    """A multi-line text (a failure quoting a server's stderr) with its later lines indented under the first: none
    of them can pass for a line of the command's own, and no control character (``\\r``, ESC) can overwrite one."""
    return control_free(text).rstrip("\n").replace("\n", "\n    ")


def _events(client: RunnerClient, session_id: str) -> tuple[list[Any], str]:
    """The session's audit records, or none and why (the audit log may be off, or not the caller's to read)."""
    try:
        return list(audit_records(client, session_id=session_id)), ""
    except grpc.RpcError as exc:
        if not isinstance(exc, grpc.Call) or exc.code() not in (
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED
        ):  # fmt: skip
            raise
        return [], f"{exc.code().name}: {exc.details()}"


def logs(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        try:
            held = client.get_session_logs(args.session_id)
        except grpc.RpcError as exc:
            if not isinstance(exc, grpc.Call) or exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            held = None
            forgotten = exc
        events, unavailable = _events(client, args.session_id)
        if held is None and not events:
            raise forgotten
        _show_logs(args, held, events, unavailable)
        if not args.follow or held is None:
            return Exit.OK
        last = events[-1].seq if events else 0
        return follow(client, args.session_id, held.stderr_tail, last, not unavailable, args.json)


def _show_logs(args: argparse.Namespace, held: Any, events: list[Any], unavailable: str) -> None:
    if args.json:
        shown = {
            "session": cli_json.session(held.session) if held else None,
            "stderr": held.stderr_tail if held else None,
            "findings": cli_json.findings(held.findings) if held else [],
            "events": [record_json(r) for r in events], "events_unavailable": unavailable or None,
        }  # fmt: skip
        (cli_json.emit_line if args.follow else cli_json.emit)(shown)
        return
    if held is None:
        print(f"session {field(args.session_id)}: the service no longer holds it (it forgets ended sessions after "
              "10 minutes), so its stderr is gone; its audit records follow")  # fmt: skip
    else:
        s = held.session
        state = cli_json.SESSION_STATES.get(s.state, "unknown")
        print(f"session {field(s.session_id)}  profile {field(s.profile)}  caller {field(s.caller)}  {state}")
        if s.failure:
            print(f"failure: {indented(s.failure)}")
        tail = held.stderr_tail.rstrip("\n")
        print(f"--- stderr (its last KiB, sanitized on the host){'' if tail else ': nothing'} ---")
        if tail:
            print(stderr_lines(tail))
    print(f"--- events (audit log){': ' + unavailable if unavailable else ''} ---")
    for record in events:
        print(record_line(record), flush=True)


def add_commands(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Register ``profiles``, ``sessions``, ``approvals`` and ``logs`` on the CLI's subparsers."""
    listing = sub.add_parser(
        "profiles", help="the profiles you may open: image, network, and tools once a session showed them",
        epilog=PROFILES_EXAMPLES, formatter_class=formatter,
    )  # fmt: skip
    listing.add_argument("name", nargs="?", metavar="PROFILE", help="only this one (exit 3 if there is none you "
                         "may open)")  # fmt: skip
    add_json_option(listing, "a list of profiles (tools null when unknown)")
    listing.set_defaults(func=profiles)

    listed = sub.add_parser("sessions", help="list sessions, or show one (network, runtime, egress decisions)",
                            epilog=SESSIONS_EXAMPLES, formatter_class=formatter)  # fmt: skip
    listed.add_argument("session_id", nargs="?", help="show this session in detail")
    add_json_option(listed, "a list of sessions (one session with SESSION)")
    listed.set_defaults(func=sessions)

    deciding = sub.add_parser("approvals", help="list, watch, approve or deny calls waiting for approval",
                              epilog=APPROVALS_EXAMPLES, formatter_class=formatter)  # fmt: skip
    deciding.add_argument("action", choices=["list", "watch", "approve", "deny"])
    deciding.add_argument("approval_id", nargs="?", help="the approval to decide (approve/deny)")
    deciding.add_argument("--reason", default="", help="why (required to deny)")
    deciding.add_argument("--all", action="store_true", help="list: include decided and expired approvals")
    add_json_option(deciding, "list: a list of approvals; watch: JSON Lines, one approval each; approve/deny: one")
    deciding.set_defaults(func=approvals)

    showing = sub.add_parser(
        "logs", help="a session's stderr tail and its events", description=__doc__.split("\n\n")[1].replace("``", "`"),
        epilog=LOGS_EXAMPLES, formatter_class=formatter,
    )  # fmt: skip
    showing.add_argument("session_id", metavar="SESSION")
    showing.add_argument("-f", "--follow", action="store_true",
                         help="then show what it writes and does as it happens, until it ends (Ctrl-C stops)")
    add_json_option(showing, "{session, stderr, findings, events}; with --follow JSON Lines: that object on one "
                    "line, then {stderr: TEXT} and {event: RECORD} lines")  # fmt: skip
    showing.set_defaults(func=logs)
