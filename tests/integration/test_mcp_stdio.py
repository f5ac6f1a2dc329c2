"""``mcp-runner mcp time`` against the real service: a host that launches a command (here the SDK's stdio client,
as Claude Desktop or Cursor would) gets the sandboxed server through the service's HTTP door, and the sandbox
closes when the host closes the bridge's stdin.

The service is the shared one (tests/integration/conftest.py), its door on a free loopback port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from tests.integration.conftest import Service

pytestmark = pytest.mark.integration


def _wait_for_port(listen: str, service: Service) -> None:
    host, port = listen.rsplit(":", 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((host, int(port))) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the service's MCP door did not listen on {listen}:\n{service.log()}")


@pytest.fixture
def door(service: Service) -> str:
    """The shared service's door URL (start_service gives it a free loopback port)."""
    _wait_for_port(service.mcp_listen, service)
    return f"http://{service.mcp_listen}/mcp"


def _bridge(door: str, profile: str) -> StdioServerParameters:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MCP_RUNNER_")}
    return StdioServerParameters(
        command=sys.executable, args=["-m", "runner.cli", "mcp", "--url", door, profile], env=environment,
        cwd=str(Path(__file__).resolve().parents[2]),
    )


def _open_sessions(service: Service, profile: str) -> set[str]:
    with service.client() as client:
        return {
            s.session_id for s in client.list_sessions()
            if s.profile == profile and s.state in (pb.SESSION_STATE_STARTING, pb.SESSION_STATE_READY)
        }


async def test_a_host_uses_the_time_profile_through_the_bridge_and_eof_closes_the_sandbox(
    service: Service, door: str
) -> None:
    before = _open_sessions(service, "time")
    async with Client(_bridge(door, "time")) as client:
        assert client.protocol_version == "2025-11-25"  # the stateful era: the bridge is one door session
        names = [tool.name for tool in (await client.list_tools()).tools]
        assert "get_current_time" in names
        result = await client.call_tool("get_current_time", {"timezone": "UTC"})
        assert not result.is_error
        text = result.content[0].text  # type: ignore[union-attr]
        assert json.loads(text)["timezone"] == "UTC"
        [opened] = _open_sessions(service, "time") - before  # one sandbox for the bridge's lifetime
    # The client closed the bridge's stdin: the bridge ends its door session, the door closes the sandbox.
    with service.client() as grpc_client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and grpc_client.get_session(opened).state != pb.SESSION_STATE_CLOSED:
            time.sleep(0.2)
        assert grpc_client.get_session(opened).state == pb.SESSION_STATE_CLOSED


def test_a_pipe_gets_its_answers_before_the_bridge_ends_the_session(door: str) -> None:
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "a-pipe", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}},
    ]
    params = _bridge(door, "time")
    done = subprocess.run(
        [params.command, *params.args], input="".join(json.dumps(line) + "\n" for line in lines).encode(),
        capture_output=True, env=params.env, cwd=params.cwd, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    initialized, called = (json.loads(line) for line in done.stdout.splitlines())
    assert initialized["result"]["protocolVersion"] == "2025-11-25"
    assert json.loads(called["result"]["content"][0]["text"])["timezone"] == "Asia/Tokyo"
