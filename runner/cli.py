"""``mcp-runner``: serve the API, call tools, inspect sessions, decide approvals, read the audit log, replay.

Client commands talk to a running server (``--address``, default from
``MCP_RUNNER_ADDRESS``), with a bearer token (``--token`` / ``MCP_RUNNER_TOKEN``)
and TLS files (``--ca``, ``--cert``, ``--key`` / ``MCP_RUNNER_CA`` …) when the
server asks for them. Exit codes: 0 ok, 1 the tool reported an error, no audit
record matched, the audit log is broken or a replay did not match, 2 the runner
refused (gRPC error, printed as ``error: CODE: details``) or the command line
was wrong. Everything printed is control-free: controls, bidi overrides and other
invisible characters show as ``\\uXXXX`` escapes (JSON's, so JSON output stays valid).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO, cast

import grpc

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.audit.records import KINDS
from runner.bench.options import add_arguments as add_bench_arguments
from runner.bench.options import options_from
from runner.cli_audit import audit_export, audit_list, audit_show, audit_verify, replay, when_arg
from runner.cli_common import field, one_line, open_client, print_json
from runner.cli_health import health
from runner.cli_images import add_images_parser
from runner.cli_protocol import add_commands as add_protocol_commands
from runner.cli_protocol import input_requested
from runner.client import DEFAULT_ADDRESS, InputRequest, Progress, ToolResult, service_address
from runner.door import host_configs
from runner.errors import RunnerError
from runner.text import control_free
from runner.when import FORMS

_STATES = {1: "starting", 2: "ready", 3: "closed", 4: "failed"}
_APPROVAL_STATES = {1: "pending", 2: "approved", 3: "denied", 4: "expired"}


def _approval_line(approval: pb.Approval) -> str:
    state = _APPROVAL_STATES.get(approval.state, "unknown")
    decided = f" by {field(approval.decided_by)}" if approval.decided_by else ""
    reason = f" ({one_line(approval.reason)})" if approval.reason else ""
    return (
        f"{field(approval.approval_id)}  {state}{decided}{reason}  caller={field(approval.caller)} "
        f"session={field(approval.session_id)} tool={field(approval.tool)} "
        f"arguments={field(approval.arguments_json or '{}')}  rule: {field(approval.rule)}"
    )


# ---------------------------------------------------------------- commands


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the server side (Docker) is not needed by client commands.
    from runner.service import run_service
    from runner.settings_file import load_settings
    from runner.settings_log import FORMAT_VARIABLE, LEVEL_VARIABLE

    # The log options travel as their environment variables: so an option wins over the environment, and both over
    # the file's `log:` (runner.settings_log); the service sets its log up from the settings as it starts.
    for variable, chosen in ((LEVEL_VARIABLE, args.log_level), (FORMAT_VARIABLE, args.log_format)):
        if chosen:
            os.environ[variable] = chosen
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The SDK's door transport logs every MCP session's start and end at INFO; the door logs its own line per
    # sandbox (who, which profile, why it closed), so the SDK's are noise beside it. Warnings still show.
    logging.getLogger("mcp.server").setLevel(logging.WARNING)
    try:
        asyncio.run(run_service(load_settings(
            args.config, listen=args.listen, backend=args.backend, mcp_listen=args.mcp_listen
        )))
    except RunnerError as exc:
        print(f"error: {exc.status.value}: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _tools(args: argparse.Namespace) -> int:
    with open_client(args) as client, client.session(args.profile) as opened:
        server = opened.server
        head = f"{field(server.name)} {field(server.version)} (MCP {field(server.protocol_version)})"
        print(f"# {head} — {len(opened.tools)} tools")
        for tool in opened.tools:
            description = one_line(tool.description)
            print(f"{field(tool.name)}" + (f" — {description}" if description else ""))
            print(f"    input: {field(tool.input_schema_json or '{}')}")
        _print_findings(opened.findings)
    return 0


def _print_findings(findings: Sequence[pb.Finding]) -> None:
    for f in findings:
        print(f"finding: {f.kind} x{f.count} {f.action} at {f.where}", file=sys.stderr)


def _print_result(result: ToolResult) -> None:
    if result.content:
        print(result.text)
    if result.structured_content is not None:
        print("structured content:")
        print_json(result.structured_content)
    _print_findings(result.findings)
    if result.is_error:
        print("the tool reported an error", file=sys.stderr)


def _call(args: argparse.Namespace) -> int:
    try:
        arguments = json.loads(args.arguments)
    except ValueError as exc:
        print(f"error: arguments are not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(arguments, dict):
        print("error: arguments must be a JSON object", file=sys.stderr)
        return 2
    # Always the streaming call: the session lives only as long as this command, so a tool that needs
    # approval must wait for the decision here (the stream does), not come back later.
    with open_client(args) as client, client.session(args.profile) as opened:
        result: ToolResult | None = None
        stream = client.call_tool_stream(opened.session_id, args.tool, arguments, timeout_ms=args.timeout_ms,
                                         answers_input=True)  # fmt: skip
        for item in stream:
            if isinstance(item, InputRequest):
                return input_requested(item)
            if isinstance(item, Progress):
                if args.stream:
                    total = f"/{item.total:g}" if item.total is not None else ""
                    message = f": {item.message}" if item.message else ""
                    print(f"progress {item.progress:g}{total}{message}", file=sys.stderr)
            elif isinstance(item, ToolResult):
                result = item
            else:
                print(f"approval {_approval_line(item)}", file=sys.stderr)
        if result is None:
            print("error: the stream ended without a result", file=sys.stderr)
            return 2
    _print_result(result)
    return 1 if result.is_error else 0


def _sessions(args: argparse.Namespace) -> int:
    if args.session_id:
        return _session_detail(args)
    with open_client(args) as client:
        sessions = client.list_sessions()
    rows: list[tuple[str, ...]] = [("SESSION", "PROFILE", "CALLER", "STATE", "AGE", "CALLS", "LABELS")]
    for s in sessions:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        state = _STATES.get(s.state, "unknown")
        cells = (s.session_id, s.profile, s.caller, state, f"{s.age_ms / 1000:.1f}s", str(s.usage.calls), labels)
        rows.append(tuple(map(field, cells)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _session_detail(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        s = client.get_session(args.session_id)
    state = _STATES.get(s.state, "unknown")
    print(f"session {field(s.session_id)}  profile {field(s.profile)}  caller {field(s.caller)}  {state}")
    if s.failure:
        print(f"failure: {s.failure}")
    print(f"runtime: {field(s.runtime)}")
    print(f"network: {field(s.network)}")
    if s.egress:
        print(f"egress decisions (most recent {len(s.egress)}):")
    for d in s.egress:
        moment = d.time.ToDatetime().strftime("%H:%M:%S")
        verdict = "allowed" if d.allowed else "REFUSED"
        target = field(f"{d.host}:{d.port}" if d.port else d.host or "-")
        address = f" [{field(d.address)}]" if d.address else ""
        method, why = field(d.method or "-"), f"{field(d.code)}: {field(d.reason)}"
        print(f"  {moment}  {verdict:<7}  {method:<7} {target}{address}  {why}")
    return 0


def _approvals(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        if args.action == "list":
            for approval in client.list_approvals(include_decided=args.all):
                print(_approval_line(approval))
        elif args.action == "watch":
            for approval in client.watch_approvals():
                print(_approval_line(approval), flush=True)
        else:
            if not args.approval_id:
                print(f"error: approvals {args.action} needs an APPROVAL_ID", file=sys.stderr)
                return 2
            decided = client.decide_approval(args.approval_id, approve=args.action == "approve", reason=args.reason)
            print(_approval_line(decided))
    return 0


def _certs(args: argparse.Namespace) -> int:
    from runner.certs import make_dev_certs

    try:
        made = make_dev_certs(
            Path(args.directory),
            clients=args.client or ["alice"],
            server_names=args.server_name or ("localhost", "127.0.0.1", "::1"),
            overwrite=args.force,
        )
    except RunnerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(f"CA           {made.ca_cert}")
    print(f"server       {made.server_cert} (key {made.server_key})")
    for name, (cert, key) in made.clients.items():
        print(f"client {name:6}{cert} (key {key})")
    print("\nsettings file:\n  tls:")
    print(f"    cert: {made.server_cert}\n    key: {made.server_key}\n    client_ca: {made.ca_cert}")
    # A service that authenticates callers refuses to start without a policy file: print one to start from.
    print("  policy: policy.yaml\n\npolicy.yaml (each certificate's CN is its caller):\n  callers:")
    for name in made.clients:
        print(f"    {name}: {{profiles: [\"*\"]}}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from runner.api.auth import hash_token, new_token
    from runner.policy import CALLER_NAME

    if not CALLER_NAME.fullmatch(args.caller):
        # The entry printed is pasted into the policy: a name the loader refuses, or one carrying YAML of its own
        # ("bob: {roles: [admin]}"), must not be handed out with a token that then works for nobody (or more).
        print(f"error: caller name {args.caller!r}: use 1-64 letters, digits, '.', '_', '-' or '@'", file=sys.stderr)
        return 2
    token = new_token()
    print(f"token for {args.caller} (give it to the caller; it is not stored anywhere): {token}")
    print(f"policy file entry:\n  callers:\n    {args.caller}:\n      tokens: [\"{hash_token(token)}\"]")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from runner.bench.main import bench_main

    try:
        bench_main(options_from(args))
    except RunnerError as exc:
        print(f"error: {exc.status.value}: {exc.message}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:  # the service refused what a section needs (e.g. an image not built)
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------ parser


def _installed_version() -> str:
    try:
        return importlib.metadata.version("mcp-sandbox-runner")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-runner", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_installed_version()}")
    parser.add_argument(
        "--address",
        default=service_address(),
        help=f"runner gRPC address (env MCP_RUNNER_ADDRESS, default {DEFAULT_ADDRESS})",
    )
    env = os.environ.get
    for flag, variable, what in (
        ("--token", "MCP_RUNNER_TOKEN", "bearer token"),
        ("--ca", "MCP_RUNNER_CA", "CA certificate that signed the server's (turns on TLS)"),
        ("--cert", "MCP_RUNNER_CERT", "client certificate for mutual TLS"),
        ("--key", "MCP_RUNNER_KEY", "client private key for mutual TLS"),
    ):
        parser.add_argument(flag, default=env(variable), help=f"{what} (env {variable})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--config", metavar="PATH", help="settings file (YAML or TOML)")
    serve.add_argument("--listen", metavar="ADDR", help="host:port to listen on")
    serve.add_argument(
        "--mcp-listen", metavar="ADDR",
        help="host:port of the MCP door over HTTP, '' for none (env MCP_RUNNER_MCP_LISTEN, else the file's "
        "`mcp_http.listen`, else 127.0.0.1:50052)",
    )
    serve.add_argument(
        "--backend", choices=("docker", "kubernetes"),
        help="where sandboxes run (env MCP_RUNNER_BACKEND, else the file's `backend:`, else docker)",
    )
    serve.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"),
        help="the service log's level (env MCP_RUNNER_LOG_LEVEL, else the file's `log.level`, else info)",
    )
    serve.add_argument(
        "--log-format", choices=("text", "json"),
        help="text lines, or one JSON object per line (env MCP_RUNNER_LOG_FORMAT, else the file's `log.format`, "
        "else text)",
    )
    serve.set_defaults(func=_serve)

    tools = sub.add_parser("tools", help="list the tools of a profile's server")
    tools.add_argument("--profile", required=True)
    tools.set_defaults(func=_tools)

    call = sub.add_parser("call", help="open a session, call one tool, close")
    call.add_argument("--profile", required=True)
    call.add_argument("tool")
    call.add_argument("arguments", nargs="?", default="{}", help="arguments as a JSON object")
    call.add_argument("--timeout-ms", type=int, default=0, help="per-call timeout (0 = profile's)")
    call.add_argument("--stream", action="store_true", help="show progress while the tool runs")
    call.set_defaults(func=_call)

    add_protocol_commands(sub)

    sessions = sub.add_parser("sessions", help="list sessions, or show one (network, runtime, egress decisions)")
    sessions.add_argument("session_id", nargs="?", help="show this session in detail")
    sessions.set_defaults(func=_sessions)

    approvals = sub.add_parser("approvals", help="list, watch, approve or deny calls waiting for approval")
    approvals.add_argument("action", choices=["list", "watch", "approve", "deny"])
    approvals.add_argument("approval_id", nargs="?", help="the approval to decide (approve/deny)")
    approvals.add_argument("--reason", default="", help="why (required to deny)")
    approvals.add_argument("--all", action="store_true", help="list: include decided and expired approvals")
    approvals.set_defaults(func=_approvals)

    audit = sub.add_parser("audit", help="list, show, export or verify audit records")
    audit_actions = audit.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = audit_actions.add_parser("list", help="one line per record, oldest first")
    listing.add_argument("--session", default="", help="only this session's records")
    listing.add_argument("--caller", default="", help="only this caller's records")
    listing.add_argument("--since", type=when_arg, metavar="WHEN", help=f"from this time on (inclusive): {FORMS}")
    listing.add_argument("--until", type=when_arg, metavar="WHEN", help="before this time (exclusive); same forms")
    listing.add_argument(
        "--kind", action="append", default=[], metavar="KIND", help=f"only this kind (repeatable): {', '.join(KINDS)}"
    )
    listing.add_argument("--limit", type=int, default=0, metavar="N", help="at most N records (default: all)")
    listing.add_argument("--json", action="store_true", help="each record as one JSON line")
    listing.set_defaults(func=audit_list)
    show = audit_actions.add_parser("show", help="one record (aud_…) or every record of a session, in full")
    show.add_argument("id", metavar="ID", help="an audit record id (aud_…) or a session id")
    show.set_defaults(func=audit_show)
    export = audit_actions.add_parser("export", help="a session's records as JSON Lines (what verify --export checks)")
    export.add_argument("session_id", metavar="SESSION")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    export.set_defaults(func=audit_export)
    verify = audit_actions.add_parser("verify", help="check the hash chain: on the server, or a file offline")
    offline = verify.add_mutually_exclusive_group()
    offline.add_argument("--db", metavar="PATH", help="check this audit SQLite database offline")
    offline.add_argument("--export", metavar="FILE", help="check this JSON Lines export offline")
    verify.set_defaults(func=audit_verify)

    replaying = sub.add_parser("replay", help="re-run a recorded session's tool calls and compare the results")
    replaying.add_argument("session_id", metavar="SESSION")
    replaying.add_argument("--timeout", type=float, metavar="SECONDS", help="time limit for the replay")
    replaying.add_argument("--json", action="store_true", help="each verdict as one JSON line")
    replaying.set_defaults(func=replay)

    certs = sub.add_parser("certs", help="make a development CA with server and client certificates")
    certs.add_argument("directory")
    certs.add_argument("--client", action="append", metavar="NAME", help="client certificate CN (repeatable)")
    certs.add_argument("--server-name", action="append", metavar="NAME", help="server DNS name or IP (repeatable)")
    certs.add_argument("--force", action="store_true", help="overwrite existing files")
    certs.set_defaults(func=_certs)

    token = sub.add_parser("token", help="make a bearer token and the hash to put in the policy file")
    token.add_argument("caller", help="the caller's name in the policy file")
    token.set_defaults(func=_token)

    add_images_parser(sub)

    mcp = sub.add_parser(
        "mcp", help="speak MCP on stdin/stdout for a host that launches a command (Claude Desktop, Cursor, VS Code), "
                    "relayed to the service's MCP door; --print-config prints the host's entry",
        epilog=host_configs.HTTP_HOSTS_HELP,
    )
    host_configs.add_arguments(mcp)
    mcp.set_defaults(func=host_configs.command)

    probe = sub.add_parser("health", help="gRPC health check: exit 0 when the service is SERVING, else 1")
    probe.add_argument("--address", default=argparse.SUPPRESS, help="as the global --address")
    probe.add_argument("--service", default="", help="the health service name to ask about (default: overall)")
    probe.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="give up after this long")
    probe.add_argument("--live", action="store_true", help="exit 0 on any answer, SERVING or not (liveness)")
    probe.set_defaults(func=health)

    bench = sub.add_parser(
        "bench", help="measure opens (warm, cold), calls, throughput, many sessions at once, guard, sandbox options "
                      "and audit, each beside its baseline (with --backend kubernetes: pods beside Docker containers)"
    )
    add_bench_arguments(bench)
    bench.set_defaults(func=_bench)
    return parser


class _ControlFree:
    """A text stream that writes everything through ``control_free``.

    Whatever a command prints may hold what a server or another caller wrote (tool text, server and tool names,
    progress, findings, audit records, error details); escaping at the stream, not at each print, means no
    printed value can be forgotten, including ones a later command adds.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(control_free(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = cast(TextIO, _ControlFree(stdout)), cast(TextIO, _ControlFree(stderr))
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.func(args)
    except RunnerError as exc:  # client-side problems, e.g. a TLS file that cannot be read
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        if isinstance(exc, grpc.Call):
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
