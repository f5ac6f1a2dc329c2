"""The door a session's client says it came through (``x-mcp-runner-door``): the stdio bridge's sessions are opened
as ``mcp-stdio``; any other claim than an MCP door's name is the HTTP door's own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx2
import pytest

from runner.door.host_configs import endpoint
from runner.door.http import RunningDoor
from runner.door.stdio_bridge import Door, relay
from tests.unit.door_fakes import FakeManager
from tests.unit.test_door_http import INIT, JSON_SSE, _door
from tests.unit.test_stdio_bridge import INITIALIZE, INITIALIZED, Host, _request


@pytest.fixture
async def manager() -> FakeManager:
    return FakeManager()


@pytest.fixture
async def door(manager: FakeManager) -> AsyncIterator[RunningDoor]:
    running = await _door(manager)
    yield running
    await running.stop()


async def test_a_bridge_session_is_opened_as_the_stdio_door(door: RunningDoor, manager: FakeManager) -> None:
    host = Host()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(relay, Door(endpoint(f"http://127.0.0.1:{door.port}/mcp", "time")), host.lines(), host.write)
        assert (await host.ask(INITIALIZE))["result"]["serverInfo"]["name"] == "mcp-runner/time"
        await host.say(INITIALIZED)
        assert (await host.ask(_request(2, "tools/list")))["result"]["tools"]
        await host.done()
    assert [(o.door, o.profile) for o in manager.opens] == [("mcp-stdio", "time")]
    assert manager.closed == ["s1"]


@pytest.mark.parametrize(
    ("claimed", "door_name"),
    [
        (None, "mcp-http"),
        ("mcp-http", "mcp-http"),
        ("mcp-stdio", "mcp-stdio"),
        ("grpc", "mcp-http"),  # not an MCP door: a client of this one cannot pass for the gRPC API
        ("MCP-STDIO", "mcp-http"),  # exactly the names, nothing like them
        ("mcp-stdio, mcp-stdio", "mcp-http"),  # the header twice
        ("anything", "mcp-http"),
    ],
)
async def test_only_an_mcp_doors_name_is_taken(
    door: RunningDoor, manager: FakeManager, claimed: str | None, door_name: str
) -> None:
    headers = {**JSON_SSE, **({"x-mcp-runner-door": claimed} if claimed is not None else {})}
    async with httpx2.AsyncClient(timeout=30) as http:
        reply = await http.post(f"http://127.0.0.1:{door.port}/mcp/time", json=INIT, headers=headers)
    assert reply.status_code == 200
    assert [o.door for o in manager.opens] == [door_name]
