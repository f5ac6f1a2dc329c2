"""The agent (a real process) against a real SDK server (mcp 2.3's low-level ``Server.run``, both eras) over pipes:
the SDK accepts the agent's 2026-07-28 envelope and discover, elicits natively in the handshake era (the test
answers as the host would), and returns an InputRequiredResult in the 2026-07-28 era that the agent passes on.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import mcp_types
import pytest

from runner.agent.era import CLIENT_CAPABILITIES, MODERN, PROTOCOL_ENV
from tests.unit.agent_driver import PYTHON, ROOT, AgentProcess

DUAL_ERA_SERVER = ROOT / "tests" / "servers" / "dual_era_server.py"
HANDSHAKE = "2025-11-25"
ERAS = [HANDSHAKE, MODERN]
ADA = {"action": "accept", "content": {"name": "Ada"}}

Start = Callable[[str], Awaitable[AgentProcess]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    agents: list[AgentProcess] = []

    async def _start(era: str) -> AgentProcess:
        agent = await AgentProcess.start(command=[PYTHON, str(DUAL_ERA_SERVER)], env={PROTOCOL_ENV: era})
        agents.append(agent)
        ready = await agent.ready()
        assert ready["protocol"] == era
        return agent

    yield _start
    for agent in agents:
        await agent.aclose()


def text_of(frame: dict[str, Any]) -> str:
    assert frame["type"] == "result", frame
    result = mcp_types.CallToolResult.model_validate(frame["result"])
    content = result.content[0]
    assert isinstance(content, mcp_types.TextContent)
    return content.text


async def call(agent: AgentProcess, rid: int, tool: str, **params: Any) -> None:
    await agent.request(rid, "tools/call", {"name": tool, "arguments": {}, **params})


@pytest.mark.parametrize("era", ERAS)
async def test_the_ready_frame_names_the_era_and_holds_an_initialize_result(era: str) -> None:
    agent = await AgentProcess.start(command=[PYTHON, str(DUAL_ERA_SERVER)], env={PROTOCOL_ENV: era})
    try:
        ready = await agent.ready()
    finally:
        await agent.aclose()
    assert ready["protocol"] == era
    init = mcp_types.InitializeResult.model_validate(ready["initialize"])
    assert (init.protocol_version, init.server_info.name, init.instructions) == (
        era,
        "dual-era",
        "A test server for both eras.",
    )
    assert init.capabilities.tools is not None and init.capabilities.completions is not None


async def test_handshake_era_elicitation_is_relayed_and_answered_by_the_host(start: Start) -> None:
    agent = await start(HANDSHAKE)
    await call(agent, 1, "ask_name")
    asked = await agent.recv()
    assert asked["type"] == "server_request" and asked["method"] == "elicitation/create" and asked["related"] == 1
    mcp_types.ElicitRequestFormParams.model_validate(asked["params"])
    await agent.send({"type": "answer", "id": asked["id"], "result": ADA})
    assert text_of(await agent.recv_for(1)) == "hello Ada"


async def test_two_calls_in_flight_leave_a_server_request_unattributed(start: Start) -> None:
    agent = await start(HANDSHAKE)
    await call(agent, 1, "ask_name")
    first = await agent.recv()
    await call(agent, 2, "ask_name")
    second = await agent.recv()
    assert (first["related"], second["related"]) == (1, None)
    assert first["id"] != second["id"]
    await agent.send({"type": "answer", "id": second["id"], "result": ADA})
    await agent.send({"type": "answer", "id": first["id"], "result": {"action": "decline"}})
    assert {text_of(await agent.recv()) for _ in range(2)} == {"hello Ada", "declined"}


async def test_answers_to_no_waiting_request_are_ignored(start: Start) -> None:
    agent = await start(HANDSHAKE)
    await call(agent, 1, "ask_name")
    asked = await agent.recv()
    await agent.send({"type": "answer", "id": asked["id"] + 100, "result": ADA})
    await agent.send({"type": "answer", "id": asked["id"], "result": ADA})
    await agent.send({"type": "answer", "id": asked["id"], "result": {"action": "decline"}})  # answered already
    assert text_of(await agent.recv_for(1)) == "hello Ada"
    await agent.request(2, "ping")
    assert await agent.recv_for(2) == {"type": "result", "id": 2, "result": {}}
    assert agent.stderr_text.count("no request of the server's is waiting for it") == 2


async def test_a_cancelled_call_leaves_its_server_request_answerable(start: Start) -> None:
    agent = await start(HANDSHAKE)
    await call(agent, 1, "ask_name")
    asked = await agent.recv()
    await agent.send({"type": "cancel", "id": 1})
    await agent.send({"type": "answer", "id": asked["id"], "result": ADA})
    await agent.request(2, "ping")
    assert await agent.recv_for(2) == {"type": "result", "id": 2, "result": {}}  # nothing for 1 came first
    assert agent.proc.returncode is None


async def test_modern_era_input_required_result_passes_through_and_the_retry_completes(start: Start) -> None:
    agent = await start(MODERN)
    await call(agent, 1, "ask_name")
    frame = await agent.recv_for(1)
    assert frame["type"] == "result" and frame["result"]["resultType"] == "input_required"
    needed = mcp_types.InputRequiredResult.model_validate(frame["result"])
    assert needed.input_requests is not None and set(needed.input_requests) == {"name"}
    retry = {"inputResponses": {"name": ADA}, "requestState": needed.request_state}
    await call(agent, 2, "ask_name", **retry)
    assert text_of(await agent.recv_for(2)) == "hello Ada"


async def test_modern_era_declares_the_capabilities_the_request_frame_names(start: Start) -> None:
    agent = await start(MODERN)
    await agent.send(
        {
            "type": "request",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "capabilities", "arguments": {}},
            "capabilities": {"elicitation": {"form": {}}},
        }
    )
    assert json.loads(text_of(await agent.recv_for(1))) == {"elicitation": {"form": {}}}
    await call(agent, 2, "capabilities")
    assert json.loads(text_of(await agent.recv_for(2))) == CLIENT_CAPABILITIES


async def test_handshake_era_declares_the_agents_capabilities(start: Start) -> None:
    agent = await start(HANDSHAKE)
    await call(agent, 1, "capabilities")
    assert json.loads(text_of(await agent.recv_for(1))) == CLIENT_CAPABILITIES


async def test_handshake_era_notifications_are_relayed(start: Start) -> None:
    agent = await start(HANDSHAKE)
    await call(agent, 1, "chatter")
    frames = [await agent.recv() for _ in range(3)]
    assert frames[:2] == [
        {
            "type": "notification",
            "method": "notifications/message",
            "params": {"level": "info", "logger": "dual", "data": "chattering"},
            "related": 1,
        },
        {"type": "notification", "method": "notifications/tools/list_changed", "params": {}, "related": None},
    ]
    assert text_of(frames[2]) == "done"


async def test_modern_era_log_messages_come_when_the_request_opts_in(start: Start) -> None:
    agent = await start(MODERN)
    await call(agent, 1, "chatter", _meta={"io.modelcontextprotocol/logLevel": "info"})
    log = await agent.recv()
    assert log["type"] == "notification" and log["method"] == "notifications/message" and log["related"] == 1
    assert text_of(await agent.recv_for(1)) == "done"


@pytest.mark.parametrize("era", ERAS)
async def test_templates_completion_and_subscriptions_pass_through(start: Start, era: str) -> None:
    agent = await start(era)
    await agent.request(1, "resources/templates/list", {})
    templates = mcp_types.ListResourceTemplatesResult.model_validate((await agent.recv_for(1))["result"])
    assert [t.uri_template for t in templates.resource_templates] == ["note://{id}"]
    ref = {"type": "ref/resource", "uri": "note://{id}"}
    await agent.request(2, "completion/complete", {"ref": ref, "argument": {"name": "id", "value": "al"}})
    completion = mcp_types.CompleteResult.model_validate((await agent.recv_for(2))["result"])
    assert completion.completion.values == ["alpha", "alpine"]
    await agent.request(3, "logging/setLevel", {"level": "info"})
    assert (await agent.recv_for(3))["type"] == "error"  # this server has no logging: its own error, passed on
    if era == HANDSHAKE:
        await agent.request(4, "resources/subscribe", {"uri": "note://1"})
        updated = await agent.recv()
        assert updated == {
            "type": "notification",
            "method": "notifications/resources/updated",
            "params": {"uri": "note://1"},
            "related": None,
        }
        assert await agent.recv_for(4) == {"type": "result", "id": 4, "result": {}}
        await agent.request(5, "resources/unsubscribe", {"uri": "note://1"})
        assert await agent.recv_for(5) == {"type": "result", "id": 5, "result": {}}
