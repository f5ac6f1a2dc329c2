"""Review findings on the CLI's output: server-derived text cannot forge or overwrite a line, the service's own
UNAVAILABLE is shown as it said it, and ``logs --follow`` stops on the proto's ended states."""

from __future__ import annotations

import argparse

import grpc
import pytest

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.cli_common import field
from runner.cli_exit import explain
from runner.cli_follow import ENDED, stderr_lines
from runner.cli_inspect import indented

HOSTILE = "ok\rtool: forged\x1b[2K\u2028next"
ARGS = argparse.Namespace(address="127.0.0.1:6000", ca=None, cert=None, key=None)


@pytest.mark.parametrize("shown", [field, indented, stderr_lines, lambda t: explain(grpc.StatusCode.INTERNAL, t, ARGS)])
def test_carriage_return_escape_and_line_separator_print_escaped(shown: object) -> None:
    assert callable(shown)
    text = shown(HOSTILE)
    assert not {"\r", "\x1b", "\u2028"} & set(text)
    assert "\\u000d" in text and "\\u001b" in text and "\\u2028" in text


def test_a_multi_line_service_message_keeps_its_later_lines_indented() -> None:
    shown = explain(grpc.StatusCode.FAILED_PRECONDITION, "server failed:\nerror: OK: forged", ARGS)
    assert shown == "server failed:\n    error: OK: forged"


@pytest.mark.parametrize(
    "details",
    [
        "Docker engine unreachable: Error while fetching server API version: ('Connection aborted.', "
        "ConnectionRefusedError(111, 'Connection refused'))",
        "the backend is down: Socket closed",
        "kubernetes API: CERTIFICATE_VERIFY_FAILED",
    ],
)
def test_the_services_own_unavailable_is_shown_as_it_said_it(details: str) -> None:
    assert explain(grpc.StatusCode.UNAVAILABLE, details, ARGS) == details


def test_grpcs_own_connection_refused_still_gets_the_hint() -> None:
    details = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:6000: Failed to connect "
               "to remote host: Connection refused")  # fmt: skip
    assert explain(grpc.StatusCode.UNAVAILABLE, details, ARGS).startswith("no service is listening at 127.0.0.1:6000")


def test_follow_stops_on_the_protos_ended_states() -> None:
    assert set(ENDED) == {pb.SESSION_STATE_CLOSED, pb.SESSION_STATE_FAILED}
    assert pb.SESSION_STATE_READY not in ENDED
