"""An agent loop over mcp-sandbox-runner: a "model" picks tools, the runner runs them in a sandbox.

Start the service (``make run``), then::

    .venv/bin/python examples/agent_loop.py                         # the `time` profile at 127.0.0.1:50051
    .venv/bin/python examples/agent_loop.py --address HOST:PORT --token-file agent.token \\
        --ca certs/ca.pem --cert certs/agent-prod.pem --key certs/agent-prod-key.pem

No LLM is involved: ``scripted_model`` stands in for one. A real agent hands its model the session's tools and
the conversation so far, and gets back a tool call or a final answer; the loop around the model is this one.

What the loop does with each gRPC status the runner answers a call with:

- INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, DEADLINE_EXCEEDED: the model's own request was wrong, refused or
  too slow. The message (it names the argument's path, the session's tools, the policy rule) goes back to the
  model as the call's observation, so it can correct itself.
- RESOURCE_EXHAUSTED with ``retry-after-ms`` (a rate limit): wait that long and send the call again.
- FAILED_PRECONDITION (the session ended: the server crashed, was quarantined, ran out of lifetime), UNAVAILABLE
  (no service, or it cannot record), UNAUTHENTICATED: nothing the model can fix. The loop stops with a message
  and an exit status: 69 unavailable, 77 unauthenticated or denied at open, 75 out of capacity, 1 otherwise.

A tool that needs approval answers with a pending approval instead of a result: the loop tells the model so,
and goes on (``RunnerClient.call_tool_stream`` would instead wait for the approver's decision).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from runner.client import RunnerClient, tls_credentials

MAX_STEPS = 8
OPEN_TIMEOUT_S = 120.0
CALL_TIMEOUT_MS = 30_000
RATE_LIMIT_RETRIES = 3

FOR_THE_MODEL = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
})
"""Refusals of the model's own request: reported back to it as the call's outcome."""

EXIT_STATUS = {
    grpc.StatusCode.UNAVAILABLE: 69,
    grpc.StatusCode.UNAUTHENTICATED: 77,
    grpc.StatusCode.PERMISSION_DENIED: 77,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 75,
}


@dataclass(frozen=True)
class ToolCall:
    tool: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Answer:
    text: str


@dataclass(frozen=True)
class Observation:
    """What one call came to, as the model sees it: ``outcome`` is OK, TOOL_ERROR, APPROVAL_PENDING or a status."""

    call: ToolCall
    outcome: str
    text: str


Model = Callable[[Sequence[str], Sequence[Observation]], ToolCall | Answer]


def scripted_model(tools: Sequence[str], history: Sequence[Observation]) -> ToolCall | Answer:
    """A stand-in for an LLM on the ``time`` server: it slips once, corrects itself from the runner's message,
    converts a time, asks for a tool the server lacks, then answers from what it observed."""
    if "get_current_time" not in tools:
        return Answer(f"this server has no clock (its tools: {', '.join(tools) or 'none'})")
    if not history:
        return ToolCall("get_current_time", {"timezone": 9})  # a typical slip: a UTC offset, not a zone name
    last = history[-1]
    if last.outcome == "INVALID_ARGUMENT" and last.call.tool == "get_current_time":
        return ToolCall("get_current_time", {"timezone": "Asia/Tokyo"})
    if last.call.tool == "get_current_time":
        return ToolCall("convert_time", {"source_timezone": "Asia/Tokyo", "time": "09:30",
                                         "target_timezone": "Europe/Paris"})
    if last.call.tool == "convert_time":
        return ToolCall("get_weather", {"city": "Tokyo"})
    succeeded = [o for o in history if o.outcome == "OK"]
    last_result = " ".join(succeeded[-1].text.split()) if succeeded else "none"
    return Answer(f"{len(succeeded)} of {len(history)} calls succeeded; last result: {last_result}")


def retry_after_s(error: grpc.RpcError) -> float | None:
    """The runner's ``retry-after-ms`` trailing metadata, in seconds, when it sent one."""
    trailing: tuple[tuple[str, str | bytes], ...] = ()
    if isinstance(error, grpc.Call):
        trailing = tuple(error.trailing_metadata() or ())
    for key, value in trailing:
        if key == "retry-after-ms":
            return int(value) / 1000
    return None


def call_tool(client: RunnerClient, session_id: str, call: ToolCall) -> Observation:
    """One tool call; raises ``grpc.RpcError`` only for what the model cannot fix."""
    for attempt in range(RATE_LIMIT_RETRIES + 1):
        try:
            result = client.call_tool(session_id, call.tool, call.arguments, timeout_ms=CALL_TIMEOUT_MS,
                                      timeout=CALL_TIMEOUT_MS / 1000 + 10)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            wait = retry_after_s(error) if code is grpc.StatusCode.RESOURCE_EXHAUSTED else None
            if wait is not None and attempt < RATE_LIMIT_RETRIES:
                time.sleep(wait)
                continue
            if code in FOR_THE_MODEL:
                return Observation(call, code.name, details or "")
            raise
        if result.pending and result.approval is not None:
            return Observation(call, "APPROVAL_PENDING", f"approval {result.approval.approval_id} awaits an approver")
        return Observation(call, "TOOL_ERROR" if result.is_error else "OK", result.text)
    raise AssertionError("unreachable: the last attempt returns or raises")


def run_agent(client: RunnerClient, profile: str, model: Model, out: Callable[[str], None] = print) -> int:
    """Open a session of ``profile``, let ``model`` drive tool calls until it answers, close it; the exit status."""
    try:
        with client.session(profile, timeout=OPEN_TIMEOUT_S) as opened:
            tools = [tool.name for tool in opened.tools]
            out(f"opened {opened.session_id} ({opened.server.name} {opened.server.version}); "
                f"tools: {', '.join(tools)}")
            history: list[Observation] = []
            for _ in range(MAX_STEPS):
                step = model(tools, history)
                if isinstance(step, Answer):
                    out(f"answer: {step.text}")
                    break
                out(f"-> {step.tool} {json.dumps(step.arguments)}")
                observation = call_tool(client, opened.session_id, step)
                out(f"<- {observation.outcome}: {' '.join(observation.text.split())}")
                history.append(observation)
            else:
                out(f"gave up after {MAX_STEPS} steps without an answer")
                return 1
        out(f"closed {opened.session_id}")
        return 0
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        out(f"error: {code.name}: {details}")
        if code is grpc.StatusCode.UNAVAILABLE:
            out("is the service running? start it with `make run` (or `mcp-runner serve`)")
        return EXIT_STATUS.get(code, 1)


def _client(args: argparse.Namespace) -> RunnerClient:
    token = Path(args.token_file).read_text().strip() if args.token_file else os.environ.get("MCP_RUNNER_TOKEN")
    if args.ca or args.cert:
        files = (Path(f) if f else None for f in (args.ca, args.cert, args.key))
        return RunnerClient(args.address, credentials=tls_credentials(*files), token=token)
    return RunnerClient(args.address, token=token)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An agent loop over mcp-sandbox-runner, with a stand-in model.")
    parser.add_argument("--address", help="the service (default: MCP_RUNNER_ADDRESS, else 127.0.0.1:50051)")
    parser.add_argument("--profile", default="time", help="the profile to open (default: time)")
    parser.add_argument("--token-file", metavar="PATH", help="a file holding the bearer token (else MCP_RUNNER_TOKEN)")
    parser.add_argument("--ca", metavar="PATH", help="TLS: the CA that signed the service's certificate")
    parser.add_argument("--cert", metavar="PATH", help="mutual TLS: this caller's certificate")
    parser.add_argument("--key", metavar="PATH", help="mutual TLS: its key")
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    with _client(args) as client:
        return run_agent(client, args.profile, scripted_model)


if __name__ == "__main__":
    sys.exit(main())
