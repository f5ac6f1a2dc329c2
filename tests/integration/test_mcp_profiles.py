"""Every built-in profile through every MCP door, as a host would use it: the SDK's client over Streamable HTTP in
both protocol eras, and over stdio through ``mcp-runner mcp PROFILE`` (as Claude Desktop or Cursor launch it);
plus a 2025-06-18 client, which negotiates its own revision.

The service is the shared one (tests/integration/conftest.py), its door on a free loopback port. Each profile
lists its tools and answers one call that needs no network (fetch and git have none that do nothing without one
or a repository: they list their tools).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.integration.conftest import Service
from tests.integration.test_mcp_stdio import _wait_for_port

pytestmark = pytest.mark.integration

#: profile -> (a tool it must list, a call that needs no network as (tool, arguments, text the answer holds)).
PROFILES: dict[str, tuple[str, tuple[str, dict[str, Any], str] | None]] = {
    "time": ("get_current_time", ("get_current_time", {"timezone": "Asia/Tokyo"}, "Asia/Tokyo")),
    "fetch": ("fetch", None),
    "git": ("git_status", None),
    "everything": ("echo", ("echo", {"message": "hello through the door"}, "hello through the door")),
    "filesystem": ("list_allowed_directories", ("list_allowed_directories", {}, "/tmp")),
    "memory": ("read_graph", ("read_graph", {}, "entities")),
}
DOORS = ["http-2025-11-25", "http-2026-07-28", "stdio"]


@pytest.fixture
def door(service: Service) -> str:
    _wait_for_port(service.mcp_listen, service)
    return f"http://{service.mcp_listen}/mcp"


def _client(door: str, profile: str, how: str) -> Client:
    if how == "stdio":
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MCP_RUNNER_")}
        bridge = StdioServerParameters(
            command=sys.executable, args=["-m", "runner.cli", "mcp", "--url", door, profile], env=environment,
            cwd=str(Path(__file__).resolve().parents[2]),
        )  # fmt: skip
        return Client(bridge)
    mode = "legacy" if how == "http-2025-11-25" else "2026-07-28"
    http = httpx2.AsyncClient(timeout=60)
    return Client(streamable_http_client(f"{door}/{profile}", http_client=http), mode=mode)  # type: ignore[arg-type]


@pytest.mark.parametrize("how", DOORS)
@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_a_host_uses_every_built_in_profile_through_every_door(door: str, profile: str, how: str) -> None:
    listed, call = PROFILES[profile]
    async with _client(door, profile, how) as client:
        if how != "http-2026-07-28":
            assert client.protocol_version == "2025-11-25"
        names = [tool.name for tool in (await client.list_tools()).tools]
        assert listed in names, names
        if call is not None:
            tool, arguments, expected = call
            result = await client.call_tool(tool, arguments)
            texts = [block.text for block in result.content if block.type == "text"]
            assert not result.is_error, texts
            assert any(expected in text for text in texts), texts


def test_a_2025_06_18_client_gets_its_own_revision(door: str) -> None:
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "old-host", "version": "1"},
        },
    }
    with httpx2.Client(base_url=f"{door}/time", headers=headers, timeout=60) as http:
        opened = http.post("", json=initialize)
        assert opened.status_code == 200, opened.text
        assert _answer(opened)["result"]["protocolVersion"] == "2025-06-18"
        session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
        http.post("", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        called = http.post("", headers=session, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "get_current_time", "arguments": {"timezone": "UTC"}}})  # fmt: skip
        assert json.loads(_answer(called)["result"]["content"][0]["text"])["timezone"] == "UTC"
        assert http.delete("", headers=session).status_code in (200, 204)


def _answer(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC answer of a POST, whether sent as JSON or as the one message of an SSE stream."""
    if response.headers.get("content-type", "").startswith("application/json"):
        answer: dict[str, Any] = response.json()
        return answer
    data = [line[len("data:") :].strip() for line in response.text.splitlines() if line.startswith("data:")]
    messages = [json.loads(item) for item in data if item]
    [answer] = [m for m in messages if "id" in m]
    return answer
