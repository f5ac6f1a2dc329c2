"""The CLI's shape: connection options before or after any client command, the exit-code table, connection
failures explained, and help with examples for every command."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from runner import cli
from runner.cli_exit import EXIT_CODES_HELP, Exit, exit_for, explain

CLIENT_COMMANDS = [
    ["sessions"], ["profiles"], ["logs", "s1"], ["tools", "--profile", "time"], ["call", "--profile", "time", "t"],
    ["session", "open", "time"], ["session", "call", "s1", "t"], ["shell", "memory"], ["audit", "list"],
    ["approvals", "list"], ["replay", "s1"], ["templates", "--profile", "p"], ["health"],
]  # fmt: skip


@pytest.mark.parametrize("argv", CLIENT_COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_connection_options_after_the_command(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("MCP_RUNNER_ADDRESS", "MCP_RUNNER_TOKEN", "MCP_RUNNER_CA"):
        monkeypatch.delenv(variable, raising=False)
    parser = cli.build_parser()
    after = parser.parse_args([*argv, "--address", "10.0.0.2:7", "--token", "t2", "--ca", "ca.pem"])
    assert (after.address, after.token, after.ca) == ("10.0.0.2:7", "t2", "ca.pem")
    before = parser.parse_args(["--address", "10.0.0.1:7", "--token", "t1", *argv])
    assert (before.address, before.token, before.ca) == ("10.0.0.1:7", "t1", None)  # not reset by the command
    both = parser.parse_args(["--address", "10.0.0.1:7", *argv, "--address", "10.0.0.3:7"])
    assert both.address == "10.0.0.3:7"  # the later one wins, as for any option


def test_the_environment_is_the_default_wherever_the_option_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_RUNNER_ADDRESS", "10.9.9.9:1")
    monkeypatch.setenv("MCP_RUNNER_TOKEN", "from-env")
    args = cli.build_parser().parse_args(["audit", "list", "--session", "s1"])
    assert (args.address, args.token) == ("10.9.9.9:1", "from-env")


@pytest.mark.parametrize("command", ["serve", "certs", "token", "bench"])
def test_local_commands_take_no_connection_options(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args([command, "x", "--address", "10.0.0.1:1"])
    assert exited.value.code == Exit.USAGE
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["mcp", "time", "--address", "10.0.0.1:7"], ["--address", "10.0.0.1:7", "mcp", "time"],
    ["--address=127.0.0.1:50051", "mcp", "time", "--print-config", "claude"],
])  # fmt: skip
def test_mcp_refuses_the_grpc_address_and_points_at_url(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == Exit.USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "MCP door, not to its gRPC --address" in captured.err and "--url" in captured.err


def test_mcp_takes_the_token_and_tls_options_and_ignores_the_address_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MCP_RUNNER_ADDRESS", "10.9.9.9:1")  # set for the other commands: no reason to refuse
    assert cli.main(["--token", "t", "mcp", "time", "--ca", "ca.pem", "--print-config", "claude"]) == 0
    assert '"time"' in capsys.readouterr().out
    args = cli.build_parser().parse_args(["mcp", "time", "--token", "t2", "--ca", "a", "--cert", "c", "--key", "k"])
    assert (args.token, args.ca, args.cert, args.key) == ("t2", "a", "c", "k")


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (grpc.StatusCode.OK, 0), (grpc.StatusCode.NOT_FOUND, 3), (grpc.StatusCode.PERMISSION_DENIED, 4),
        (grpc.StatusCode.UNAUTHENTICATED, 4), (grpc.StatusCode.UNAVAILABLE, 5), (grpc.StatusCode.INVALID_ARGUMENT, 6),
        (grpc.StatusCode.OUT_OF_RANGE, 6), (grpc.StatusCode.DEADLINE_EXCEEDED, 7),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 8), (grpc.StatusCode.FAILED_PRECONDITION, 9),
        (grpc.StatusCode.ABORTED, 9), (grpc.StatusCode.INTERNAL, 1), (grpc.StatusCode.UNIMPLEMENTED, 1),
        (grpc.StatusCode.UNKNOWN, 1), (grpc.StatusCode.CANCELLED, 1),
    ],
)  # fmt: skip
def test_exit_code_table(code: grpc.StatusCode, exit_code: int) -> None:
    assert exit_for(code) == exit_code
    assert f"\n  {exit_code} " in f"\n{EXIT_CODES_HELP}" or exit_code == 0  # documented where --help shows it


ARGS = argparse.Namespace(address="127.0.0.1:6000", ca=None, cert=None, key=None)
TLS_ARGS = argparse.Namespace(address="127.0.0.1:6000", ca="ca.pem", cert=None, key=None)
MTLS_ARGS = argparse.Namespace(address="127.0.0.1:6000", ca="ca.pem", cert="c.pem", key="k.pem")
REFUSED = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:6000: Failed to connect to "
           "remote host: Connection refused")  # fmt: skip
CLOSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:6000: Socket closed"
WRONG_VERSION = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:6000: Tls handshake "
                 "failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:"
                 "WRONG_VERSION_NUMBER: Invalid certificate verification context: OK")  # fmt: skip
UNTRUSTED = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:6000: Tls handshake failed "
             "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
             "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK")  # fmt: skip


@pytest.mark.parametrize(
    ("code", "details", "args", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, REFUSED, ARGS, "no service is listening at 127.0.0.1:6000. Start one with "
         "`make run` or `mcp-runner serve`"),
        (grpc.StatusCode.UNAVAILABLE, "errors resolving nohost:5: [field:hostname lookup error]", ARGS,
         "cannot resolve the host of"),
        (grpc.StatusCode.UNAVAILABLE, CLOSED, ARGS, "closed the connection: it expects TLS. Pass --ca FILE"),
        (grpc.StatusCode.UNAVAILABLE, CLOSED, TLS_ARGS, "it asks for a client certificate. Pass --cert FILE"),
        (grpc.StatusCode.UNAVAILABLE, CLOSED, MTLS_ARGS, "refused the client certificate: it must be signed by"),
        (grpc.StatusCode.UNAVAILABLE, WRONG_VERSION, TLS_ARGS, "does not speak TLS, but the CLI used it"),
        (grpc.StatusCode.UNAVAILABLE, UNTRUSTED, TLS_ARGS, "is not signed by the CA given with --ca"),
        (grpc.StatusCode.UNAVAILABLE, "the Docker engine cannot be reached", ARGS,
         "the Docker engine cannot be reached"),  # the service's own: as it said it
        (grpc.StatusCode.UNAUTHENTICATED, "authentication required: send a token", ARGS, "pass --token TOKEN"),
        (grpc.StatusCode.UNIMPLEMENTED, "Method not found!", ARGS, "it is older than this CLI"),
        (grpc.StatusCode.NOT_FOUND, "no profile 'x'", ARGS, "no profile 'x'"),
    ],
)  # fmt: skip
def test_failures_say_what_to_do(
    code: grpc.StatusCode, details: str, args: argparse.Namespace, expected: str
) -> None:
    assert explain(code, details, args).startswith(expected) or expected in explain(code, details, args)


def _parsers(parser: argparse.ArgumentParser, path: str = "mcp-runner") -> Iterator[tuple[str, Any]]:
    children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not children:
        yield path, parser
    for action in children:
        for name, child in action.choices.items():
            yield from _parsers(child, f"{path} {name}")


def test_every_command_has_examples_in_its_help() -> None:
    commands = dict(_parsers(cli.build_parser()))
    assert {"mcp-runner session call", "mcp-runner audit list", "mcp-runner shell", "mcp-runner logs"} <= set(commands)
    # `mcp` documents its host configurations instead (runner.door.host_configs)
    missing = [path for path, parser in commands.items() if "example" not in (parser.epilog or "")]
    assert set(missing) <= {"mcp-runner mcp"}
    for action in ("build", "list", "load", "push"):
        assert f"mcp-runner images {action}" in commands[f"mcp-runner images {action}"].format_help()
    for path in ("mcp-runner session call", "mcp-runner audit list"):
        assert "mcp-runner " in commands[path].format_help().split("example", 1)[1]  # kept as written


def test_top_help_lists_exit_codes_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "exit codes:\n  0    ok" in out and "  5    unavailable" in out
    assert "mcp-runner shell memory" in out


@pytest.mark.parametrize(
    "argv", [["session", "call", "s1", "t", "{nope"], ["session", "get", "s1", "p", '{"n": 1}'], ["call", "--profile",
             "p", "t", "[]"]],
)  # fmt: skip
def test_bad_json_arguments_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*argv, "--address", "127.0.0.1:1"]) == Exit.USAGE  # refused before connecting
    assert capsys.readouterr().err.startswith("error: ")
