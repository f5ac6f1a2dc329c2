"""``mcp-runner``: serve the API, call tools, inspect sessions, decide approvals, read the audit log, replay.

Client commands talk to a running service (``--address``, default from ``MCP_RUNNER_ADDRESS``), with a bearer
token (``--token`` / ``MCP_RUNNER_TOKEN``) and TLS files (``--ca``, ``--cert``, ``--key`` / ``MCP_RUNNER_CA`` …)
when the service asks for them; these options are defined once (``cli_common.CONNECTION_OPTIONS``) and accepted
before the command or after it. A refused request prints ``error: CODE: message`` and exits with the code
``cli_exit`` gives its status. Commands register themselves from their modules (``cli_session``,
``cli_inspect``, ``cli_images`` …). Everything printed is control-free: controls, bidi overrides and other
invisible characters show as ``\\uXXXX`` escapes (JSON's, so JSON output stays valid).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO, cast

import grpc

from runner.bench.options import add_arguments as add_bench_arguments
from runner.bench.options import options_from
from runner.cli_audit import add_commands as add_audit_commands
from runner.cli_common import add_connection_options, is_utf8, spread_connection_options
from runner.cli_exit import EXIT_CODES_HELP, Exit, exit_for, explain
from runner.cli_health import health
from runner.cli_images import add_images_parser
from runner.cli_inspect import add_commands as add_inspect_commands
from runner.cli_protocol import add_commands as add_protocol_commands
from runner.cli_render import UsageError
from runner.cli_session import add_commands as add_session_commands
from runner.cli_session import add_once_commands
from runner.cli_shell import add_command as add_shell_command
from runner.client_channel import ADDRESS_ENV, service_address
from runner.door import host_configs
from runner.errors import RunnerError
from runner.host_port import grpc_target
from runner.settings_log import log_word
from runner.text import control_free

LOCAL_COMMANDS = ("serve", "certs", "token", "images", "config", "bench")
"""Commands that never reach a running service: they take no connection options."""
MCP_ADDRESS_REFUSAL = (
    "error: mcp-runner mcp relays to the service's MCP door, not to its gRPC --address: drop --address and give "
    f"the door's URL with --url (default {host_configs.DEFAULT_DOOR_URL})"
)
FORMATTER = argparse.RawDescriptionHelpFormatter
"""Every command's help keeps its examples' lines as written."""

EXAMPLES = """\
examples:
  mcp-runner profiles                                   # what you may open
  mcp-runner call --profile time get_current_time '{"timezone": "Asia/Tokyo"}'
  mcp-runner shell memory                               # one session across many calls
  mcp-runner sessions --json
  mcp-runner logs SESSION                               # its stderr tail and its events
  mcp-runner COMMAND --help                             # each command's options and examples
connection options (--address, --token, --ca, --cert, --key) go before or after the command."""
SERVE_EXAMPLES = """\
examples:
  mcp-runner serve                                      # 127.0.0.1:50051, the MCP door on 127.0.0.1:50052
  mcp-runner serve --config my-profiles.yaml --listen 127.0.0.1:6000
  mcp-runner serve --backend kubernetes --log-format json
"""
CERTS_EXAMPLES = """\
examples:
  mcp-runner certs ./certs --client alice --client ops
  mcp-runner certs ./certs --server-name runner.internal --force
"""
HEALTH_EXAMPLES = """\
examples:
  mcp-runner health                                     # readiness: 0 when SERVING
  mcp-runner health --live --timeout 2                  # liveness: any answer
"""
BENCH_EXAMPLES = """\
examples:
  mcp-runner bench
  mcp-runner bench --sections opens,calls --opens 20
"""


# ---------------------------------------------------------------- commands


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the server side (Docker) is not needed by client commands.
    from runner.config_document import ConfigError
    from runner.observe import logs
    from runner.service import run_service
    from runner.settings_file import load_settings
    from runner.settings_log import FORMAT_VARIABLE, LEVEL_VARIABLE

    # The log options travel as their environment variables: so an option wins over the environment, and both over
    # the file's `log:` (runner.settings_log); the log is set up from the settings once they are read.
    for variable, chosen in ((LEVEL_VARIABLE, args.log_level), (FORMAT_VARIABLE, args.log_format)):
        if chosen:
            os.environ[variable] = chosen
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The SDK's door transport logs every MCP session's start and end at INFO; the door logs its own line per
    # sandbox (who, which profile, why it closed), so the SDK's are noise beside it. Warnings still show.
    logging.getLogger("mcp.server").setLevel(logging.WARNING)
    try:
        settings = load_settings(args.config, listen=args.listen, backend=args.backend, mcp_listen=args.mcp_listen)
        logs.configure(settings.log)  # here, once per process: run_service leaves process-wide state alone
        asyncio.run(run_service(settings))
    except ConfigError as exc:
        # A file or option that is wrong, or another service of the instance running: exit 2, which the systemd
        # unit's RestartPreventExitStatus names, since restarting cannot help.
        print(f"error: {exc.message}", file=sys.stderr)
        return Exit.USAGE
    except RunnerError as exc:
        print(f"error: {exc.status.value}: {exc.message}", file=sys.stderr)
        return exit_for(grpc.StatusCode[exc.status.value])
    return Exit.OK


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
        return exit_for(grpc.StatusCode[exc.status.value])
    except grpc.aio.AioRpcError as exc:  # the service refused what a section needs (e.g. an image not built)
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return exit_for(exc.code())
    return Exit.OK


# ------------------------------------------------------------------ parser


def _installed_version() -> str:
    try:
        return importlib.metadata.version("mcp-sandbox-runner")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-runner", description=__doc__.splitlines()[0].replace("``", ""),
        epilog=f"{EXAMPLES}\n{EXIT_CODES_HELP}", formatter_class=FORMATTER,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {_installed_version()}")
    add_connection_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gRPC server", epilog=SERVE_EXAMPLES, formatter_class=FORMATTER)
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
        "--log-level", choices=("debug", "info", "warning", "error"), type=log_word,
        help="the service log's level (env MCP_RUNNER_LOG_LEVEL, else the file's `log.level`, else info)",
    )
    serve.add_argument(
        "--log-format", choices=("text", "json"), type=log_word,
        help="text lines, or one JSON object per line (env MCP_RUNNER_LOG_FORMAT, else the file's `log.format`, "
        "else text)",
    )
    serve.set_defaults(func=_serve)

    # Commands registered by their own modules, in the order `mcp-runner --help` lists them.
    add_once_commands(sub, FORMATTER)
    add_session_commands(sub, FORMATTER)
    add_shell_command(sub, FORMATTER)
    add_inspect_commands(sub, FORMATTER)
    add_protocol_commands(sub, FORMATTER)
    add_audit_commands(sub, FORMATTER)
    from runner.cli_config import add_command as add_config_command  # its module loads nothing heavy until run

    add_config_command(sub)

    certs = sub.add_parser("certs", help="make a development CA with server and client certificates",
                           epilog=CERTS_EXAMPLES, formatter_class=FORMATTER)  # fmt: skip
    certs.add_argument("directory")
    certs.add_argument("--client", action="append", metavar="NAME", help="client certificate CN (repeatable)")
    certs.add_argument("--server-name", action="append", metavar="NAME", help="server DNS name or IP (repeatable)")
    certs.add_argument("--force", action="store_true", help="overwrite existing files")
    certs.set_defaults(func=_certs)

    token = sub.add_parser("token", help="make a bearer token and the hash to put in the policy file",
                           epilog="example:\n  mcp-runner token agent-7", formatter_class=FORMATTER)  # fmt: skip
    token.add_argument("caller", help="the caller's name in the policy file")
    token.set_defaults(func=_token)

    add_images_parser(sub)

    mcp = sub.add_parser(
        "mcp", help="speak MCP on stdin/stdout for a host that launches a command (Claude Desktop, Cursor, VS Code), "
                    "relayed to the service's MCP door; --print-config prints the host's entry",
        epilog=host_configs.HTTP_HOSTS_HELP,
    )
    host_configs.add_arguments(mcp)
    # Taken, unlisted, only to be refused in _main: the bridge reaches the door at --url, never the gRPC address.
    mcp.add_argument("--address", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    mcp.set_defaults(func=host_configs.command)

    probe = sub.add_parser("health", help="gRPC health check: exit 0 when the service is SERVING, else 1",
                           epilog=HEALTH_EXAMPLES, formatter_class=FORMATTER)  # fmt: skip
    probe.add_argument("--service", default="", help="the health service name to ask about (default: overall)")
    probe.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="give up after this long")
    probe.add_argument("--live", action="store_true", help="exit 0 on any answer, SERVING or not (liveness)")
    probe.set_defaults(func=health)

    bench = sub.add_parser(
        "bench", help="measure opens (warm, cold), calls, throughput, many sessions at once, guard, sandbox options "
                      "and audit, each beside its baseline (with --backend kubernetes: pods beside Docker containers)",
        epilog=BENCH_EXAMPLES, formatter_class=FORMATTER,
    )
    add_bench_arguments(bench)
    bench.set_defaults(func=_bench)
    spread_connection_options(parser, LOCAL_COMMANDS)
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
    for index, arg in enumerate(sys.argv[1:] if argv is None else argv, 1):
        if not is_utf8(arg):
            print(f"error: argument {index} ({arg[:80]!a}) is not UTF-8: whatever ran mcp-runner passed bytes "
                  "that are not text; pass names and values in UTF-8", file=sys.stderr)
            return Exit.USAGE
    parser = build_parser()
    # address=None in the namespace keeps argparse from filling in the default: an --address still None was not given.
    args = parser.parse_args(argv, namespace=argparse.Namespace(address=None))
    if args.command is None:
        parser.print_help(sys.stderr)
        return Exit.USAGE
    if args.command == "mcp" and args.address is not None:
        print(MCP_ADDRESS_REFUSAL, file=sys.stderr)
        return Exit.USAGE
    named_by = "--address" if args.address is not None else ADDRESS_ENV
    if args.address is None:
        args.address = service_address()
    if args.command not in (*LOCAL_COMMANDS, "mcp"):
        try:  # a port that is no port, or an empty --address: the command line's fault, before any connection
            grpc_target(args.address, named_by)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return Exit.USAGE
    try:
        code: int = args.func(args)
    except (RunnerError, UsageError) as exc:  # refused before any request: a TLS file that cannot be read, bad JSON
        print(f"error: {exc.message if isinstance(exc, RunnerError) else exc}", file=sys.stderr)
        return Exit.USAGE
    except grpc.RpcError as exc:
        if not isinstance(exc, grpc.Call):
            print(f"error: {exc}", file=sys.stderr)
            return Exit.FAILURE
        print(f"error: {exc.code().name}: {explain(exc.code(), exc.details() or '', args)}", file=sys.stderr)
        return exit_for(exc.code())
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
