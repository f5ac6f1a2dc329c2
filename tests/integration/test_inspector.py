"""A real host's MCP client drives the HTTP door: the MCP Inspector CLI (`@modelcontextprotocol/inspector-cli`,
pinned by `make mcp-tools`) lists the built-in `time` profile's tools and calls one, as a user would from a shell.
Each run of the CLI is one MCP session (initialize, the request, close) and so one sandbox behind the door.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 120  # a hung CLI fails the test instead of the CI job


def inspect(tools: Path, url: str, *args: str) -> Any:
    """Run the Inspector CLI against ``url`` with ``args``; its JSON answer (stdout)."""
    done = subprocess.run(
        [str(tools / "mcp-inspector-cli"), "--cli", url, "--transport", "http", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert done.returncode == 0, f"the Inspector CLI exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def test_inspector_lists_and_calls_the_time_servers_tools(mcp_door: str, mcp_tools: Path) -> None:
    url = f"{mcp_door}/time"

    listed = inspect(mcp_tools, url, "--method", "tools/list")
    tools = {tool["name"]: tool for tool in listed["tools"]}
    assert {"get_current_time", "convert_time"} <= tools.keys()
    assert "timezone" in tools["get_current_time"]["inputSchema"]["properties"]

    called = inspect(
        mcp_tools, url, "--method", "tools/call", "--tool-name", "get_current_time", "--tool-arg", "timezone=UTC"
    )
    assert called.get("isError") is not True, called
    [content] = called["content"]
    assert content["type"] == "text"
    answer = json.loads(content["text"])
    assert answer["timezone"] == "UTC"
    assert answer["datetime"].endswith("+00:00")
