"""``mcp-runner``: serve the API, call tools, inspect sessions, build the sandbox images.

Client commands talk to a running server (``--address``, default from
``MCP_RUNNER_ADDRESS``). Exit codes: 0 ok, 1 the tool reported an error,
2 the runner refused (gRPC error, printed as ``error: CODE: details``) or the
command line was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import grpc

from runner.client import DEFAULT_ADDRESS, Progress, RunnerClient, ToolResult
from runner.errors import RunnerError

_STATES = {1: "starting", 2: "ready", 3: "closed", 4: "failed"}


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- commands


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the server side (Docker) is not needed by client commands.
    from runner.config import load_settings
    from runner.service import run_service

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run_service(load_settings(args.config, listen=args.listen)))
    except RunnerError as exc:
        print(f"error: {exc.status.value}: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _tools(args: argparse.Namespace) -> int:
    with RunnerClient(args.address) as client, client.session(args.profile) as opened:
        server = opened.server
        print(f"# {server.name} {server.version} (MCP {server.protocol_version}) — {len(opened.tools)} tools")
        for tool in opened.tools:
            description = _one_line(tool.description)
            print(f"{tool.name}" + (f" — {description}" if description else ""))
            print(f"    input: {tool.input_schema_json or '{}'}")
    return 0


def _print_result(result: ToolResult) -> None:
    if result.content:
        print(result.text)
    if result.structured_content is not None:
        print("structured content:")
        _print_json(result.structured_content)
    for f in result.findings:
        print(f"finding: {f.kind} x{f.count} {f.action} at {f.where}", file=sys.stderr)
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
    with RunnerClient(args.address) as client, client.session(args.profile) as opened:
        if args.stream:
            result: ToolResult | None = None
            for item in client.call_tool_stream(
                opened.session_id, args.tool, arguments, timeout_ms=args.timeout_ms
            ):
                if isinstance(item, Progress):
                    total = f"/{item.total:g}" if item.total is not None else ""
                    message = f": {item.message}" if item.message else ""
                    print(f"progress {item.progress:g}{total}{message}", file=sys.stderr)
                else:
                    result = item
            if result is None:
                print("error: the stream ended without a result", file=sys.stderr)
                return 2
        else:
            result = client.call_tool(opened.session_id, args.tool, arguments, timeout_ms=args.timeout_ms)
    _print_result(result)
    return 1 if result.is_error else 0


def _sessions(args: argparse.Namespace) -> int:
    with RunnerClient(args.address) as client:
        sessions = client.list_sessions()
    rows = [("SESSION", "PROFILE", "CALLER", "STATE", "AGE", "CALLS", "LABELS")]
    for s in sessions:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        state = _STATES.get(s.state, "unknown")
        rows.append(
            (s.session_id, s.profile, s.caller, state, f"{s.age_ms / 1000:.1f}s", str(s.usage.calls), labels)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _images(args: argparse.Namespace) -> int:
    from runner.images import ImageBuildError, ensure_images, list_images

    try:
        if args.action == "build":
            for name, ref in ensure_images(force=args.force).items():
                print(f"{name:15} {ref}")
        else:
            for name, ref, present in list_images():
                print(f"{name:15} {ref:40} {'present' if present else 'missing (run: mcp-runner images build)'}")
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _bench(args: argparse.Namespace) -> int:
    from runner.bench import bench_main

    try:
        bench_main(args.config, opens=args.opens, calls=args.calls, profile=args.profile)
    except RunnerError as exc:
        print(f"error: {exc.status.value}: {exc.message}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-runner", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--address",
        default=os.environ.get("MCP_RUNNER_ADDRESS", DEFAULT_ADDRESS),
        help="runner gRPC address (env MCP_RUNNER_ADDRESS, default %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--config", metavar="PATH", help="settings file (YAML or TOML)")
    serve.add_argument("--listen", metavar="ADDR", help="host:port to listen on")
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

    sessions = sub.add_parser("sessions", help="list open sessions")
    sessions.set_defaults(func=_sessions)

    images = sub.add_parser("images", help="build or list the sandbox images")
    images.add_argument("action", choices=["build", "list"])
    images.add_argument("--force", action="store_true", help="rebuild even when the image is present")
    images.set_defaults(func=_images)

    bench = sub.add_parser("bench", help="measure session open and tool calls: sandboxed vs on the host")
    bench.add_argument("--config", help="settings file (YAML or TOML)")
    bench.add_argument("--profile", default="time", help="profile to measure (default: time)")
    bench.add_argument("--opens", type=int, default=10, help="sessions to open (default: 10)")
    bench.add_argument("--calls", type=int, default=200, help="tool calls to time (default: 200)")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.func(args)
    except grpc.RpcError as exc:
        if isinstance(exc, grpc.Call):
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
