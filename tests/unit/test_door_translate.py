"""A 2026-07-28 client on a lease whose server speaks only 2025-11-25 (runner.door.translate): the server's requests
as input-required rounds, through the HTTP door (uvicorn on loopback, the SDK's own client) over a fake manager
whose calls ask what a test scripts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from runner.config import AuthConfig, McpHttpConfig
from runner.door import http as door_http
from runner.door.http import DoorApp, RunningDoor, start_door
from runner.door.identity import HttpAuthenticator
from runner.door.seal import StateSeal
from runner.door.translate import KEY_PREFIX
from runner.errors import ClientDeclined
from runner.sessions.models import (
    DEFAULT_PROTOCOL,
    ApprovalCallback,
    Exchange,
    OpenedSession,
    ProgressCallback,
    Sanitized,
    ServerRequest,
    ToolCallOutcome,
)
from tests.unit.door_fakes import FakeManager
from tests.unit.door_fakes import _approval as approval_of

MODERN = "2026-07-28"
ELICIT = ServerRequest("elicitation/create", {
    "message": "name?", "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}},
                                            "required": ["name"]},
})  # fmt: skip
SAMPLE = ServerRequest("sampling/createMessage", {
    "messages": [{"role": "user", "content": {"type": "text", "text": "say hi"}}], "maxTokens": 10,
})  # fmt: skip
ROOTS = ServerRequest("roots/list", {})


@dataclass
class TalkingManager(FakeManager):
    """Every sandbox speaks 2025-11-25 (the agent fell back); a call asks ``rounds`` of requests, each round's
    requests together, and returns what it was answered."""

    rounds: list[list[ServerRequest]] = field(default_factory=list)
    exchanges: list[Exchange | None] = field(default_factory=list)
    answered: int = 0
    """Calls whose scripted rounds are all answered."""

    async def open(
        self, profile: str, *, caller: str, door: str = "grpc", protocol: str = DEFAULT_PROTOCOL
    ) -> OpenedSession:
        return await super().open(profile, caller=caller, door=door, protocol=DEFAULT_PROTOCOL)

    async def _talk(self, what: str, exchange: Exchange | None) -> str:
        self.exchanges.append(exchange)
        assert exchange is not None and exchange.on_input is not None
        asker = exchange.on_input
        answers: list[Any] = []

        async def ask(request: ServerRequest) -> Any:
            try:
                return await asker(request)
            except ClientDeclined as exc:
                return {"declined": exc.code, "message": exc.message}

        try:
            for asked in self.rounds:
                answers.extend(await asyncio.gather(*map(ask, asked)))
            self.answered += 1
            if self.call_gate is not None:
                await self.call_gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(what)
            raise
        return json.dumps(answers, sort_keys=True)

    async def call_tool(
        self, session_id: str, tool: str, arguments: dict[str, Any], *, caller: str, approval_id: str = "",
        timeout: float | None = None, on_progress: ProgressCallback | None = None,
        on_approval: ApprovalCallback | None = None, exchange: Exchange | None = None,
    ) -> ToolCallOutcome:  # fmt: skip
        self.calls.append({"session": session_id, "tool": tool, "arguments": arguments, "caller": caller,
                           "approval_id": approval_id})  # fmt: skip
        if self.needs_approval and not approval_id:
            return ToolCallOutcome(result=None, approval=approval_of(session_id, caller, tool, arguments))
        text = await self._talk(tool, exchange)
        return ToolCallOutcome(result=types.CallToolResult(content=[types.TextContent(text=text)]))

    async def get_prompt(
        self, session_id: str, name: str, arguments: dict[str, str], *, caller: str, timeout: float | None = None,
        exchange: Exchange,
    ) -> Sanitized[types.GetPromptResult | types.InputRequiredResult]:  # fmt: skip
        text = await self._talk(name, exchange)
        message = types.PromptMessage(role="user", content=types.TextContent(text=text))
        return Sanitized(types.GetPromptResult(messages=[message]))

    async def read_resource_result(
        self, session_id: str, uri: str, *, caller: str, timeout: float | None = None, exchange: Exchange | None = None
    ) -> Sanitized[types.ReadResourceResult | types.InputRequiredResult]:
        text = await self._talk(uri, exchange)
        return Sanitized(types.ReadResourceResult(contents=[types.TextResourceContents(uri=uri, text=text)]))


async def _name(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "Ada"})


async def _hi(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", content=types.TextContent(text="hi"), model="m-1")


async def _roots(context: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri="file:///work", name="work")])  # type: ignore[arg-type]


@pytest.fixture
async def manager() -> TalkingManager:
    return TalkingManager()


@pytest.fixture
async def door(manager: TalkingManager) -> AsyncIterator[RunningDoor]:
    running = await _start(manager)
    yield running
    await running.stop()


async def _start(manager: TalkingManager) -> RunningDoor:
    app = DoorApp(manager, McpHttpConfig(listen="127.0.0.1:0"), ["time"],  # type: ignore[arg-type]
                  HttpAuthenticator(AuthConfig(), lambda _: None), lambda *note: None)  # fmt: skip
    return await start_door(app, "127.0.0.1:0", tls=None, grace=1)


def _client(door: RunningDoor, **callbacks: Any) -> Client:
    http = httpx2.AsyncClient(timeout=30)
    url = f"http://127.0.0.1:{door.port}/mcp/time"
    return Client(streamable_http_client(url, http_client=http), mode=MODERN, **callbacks)


def _text(result: types.CallToolResult) -> Any:
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return json.loads(content.text)


async def test_rounds_of_a_2025_server_are_answered_by_the_clients_callbacks(
    door: RunningDoor, manager: TalkingManager
) -> None:
    manager.rounds = [[ELICIT], [SAMPLE, ROOTS]]
    async with _client(door, elicitation_callback=_name, sampling_callback=_hi, list_roots_callback=_roots) as mcp:
        result = await mcp.call_tool("get_current_time", {"timezone": "UTC"})
    elicited, sampled, rooted = _text(result)
    assert elicited == {"action": "accept", "content": {"name": "Ada"}}
    assert sampled["content"]["text"] == "hi" and rooted["roots"][0]["uri"] == "file:///work"
    assert len(manager.calls) == 1  # one call in the sandbox, held across the client's three requests
    assert manager.opens[0].protocol == DEFAULT_PROTOCOL


async def test_requests_sent_together_are_one_round_and_an_unanswered_one_is_asked_again(
    door: RunningDoor, manager: TalkingManager
) -> None:
    manager.rounds = [[ELICIT, SAMPLE]]
    async with _client(door, elicitation_callback=_name, sampling_callback=_hi) as mcp:
        first = await mcp.session.call_tool("get_current_time", {}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult) and first.input_requests is not None
        keys = sorted(first.input_requests)
        assert keys == [f"{KEY_PREFIX}1", f"{KEY_PREFIX}2"]
        methods = {key: request.method for key, request in first.input_requests.items()}
        elicit_key = next(key for key, method in methods.items() if method == "elicitation/create")
        sample_key = next(key for key, method in methods.items() if method == "sampling/createMessage")
        answered: types.InputResponses = {elicit_key: types.ElicitResult(action="accept", content={"name": "Ada"})}
        again = await mcp.session.call_tool(
            "get_current_time", {}, input_responses=answered, request_state=first.request_state,
            allow_input_required=True,
        )  # fmt: skip
        assert isinstance(again, types.InputRequiredResult) and again.input_requests is not None
        assert list(again.input_requests) == [sample_key] and again.request_state != first.request_state
        hi = types.CreateMessageResult(role="assistant", content=types.TextContent(text="hi"), model="m-1")
        sampled: types.InputResponses = {sample_key: hi}
        done = await mcp.session.call_tool(
            "get_current_time", {}, input_responses=sampled, request_state=again.request_state
        )
    assert [answer.get("action") or answer["model"] for answer in _text(done)] == ["accept", "m-1"]


async def test_an_answer_that_breaks_the_schema_is_refused_and_the_state_stays_good(
    door: RunningDoor, manager: TalkingManager
) -> None:
    manager.rounds = [[ELICIT]]
    async with _client(door, elicitation_callback=_name) as mcp:
        first = await mcp.session.call_tool("get_current_time", {}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult) and first.input_requests is not None
        (key,) = first.input_requests
        wrong: types.InputResponses = {key: types.ElicitResult(action="accept", content={"name": 7})}
        with pytest.raises(MCPError) as refused:
            await mcp.session.call_tool("get_current_time", {}, input_responses=wrong,
                                        request_state=first.request_state)  # fmt: skip
        assert refused.value.error.code == -32602
        assert key in refused.value.error.message and "requestedSchema" in refused.value.error.message
        right: types.InputResponses = {key: types.ElicitResult(action="accept", content={"name": "Ada"})}
        done = await mcp.session.call_tool("get_current_time", {}, input_responses=right,
                                           request_state=first.request_state)  # fmt: skip
    assert _text(done) == [{"action": "accept", "content": {"name": "Ada"}}]


async def test_tampered_replayed_foreign_and_missing_states_are_refused(
    door: RunningDoor, manager: TalkingManager
) -> None:
    manager.rounds = [[ELICIT], [ELICIT]]
    async with _client(door, elicitation_callback=_name) as mcp:
        first = await mcp.session.call_tool("get_current_time", {}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult) and first.input_requests and first.request_state
        (key,) = first.input_requests
        answer: types.InputResponses = {key: types.ElicitResult(action="accept", content={"name": "Ada"})}
        with pytest.raises(MCPError) as tampered:
            await mcp.session.call_tool("get_current_time", {}, input_responses=answer,
                                        request_state=first.request_state[:-2] + "AA")  # fmt: skip
        assert tampered.value.error.code == -32602 and "not issued by this runner" in tampered.value.error.message
        with pytest.raises(MCPError) as stateless:  # answers to no round of this door: never passed on
            await mcp.session.call_tool("get_current_time", {}, input_responses=answer)
        assert stateless.value.error.code == -32602 and "need the requestState" in stateless.value.error.message
        with pytest.raises(MCPError) as other_call:  # the state is bound to the request's arguments
            await mcp.session.call_tool("get_current_time", {"timezone": "UTC"}, input_responses=answer,
                                        request_state=first.request_state)  # fmt: skip
        assert "another request" in other_call.value.error.message
        second = await mcp.session.call_tool("get_current_time", {}, input_responses=answer,
                                             request_state=first.request_state, allow_input_required=True)  # fmt: skip
        assert isinstance(second, types.InputRequiredResult) and second.input_requests
        assert list(second.input_requests) == [f"{KEY_PREFIX}2"]
        with pytest.raises(MCPError) as replayed:
            await mcp.session.call_tool("get_current_time", {}, input_responses=answer,
                                        request_state=first.request_state)  # fmt: skip
        assert replayed.value.error.code == -32602 and "already used" in replayed.value.error.message
        final: types.InputResponses = {f"{KEY_PREFIX}2": types.ElicitResult(action="decline")}
        done = await mcp.session.call_tool("get_current_time", {}, input_responses=final,
                                           request_state=second.request_state)  # fmt: skip
    assert [answer["action"] for answer in _text(done)] == ["accept", "decline"]


async def test_an_approval_round_then_the_servers_rounds(door: RunningDoor, manager: TalkingManager) -> None:
    manager.needs_approval = True
    manager.rounds = [[ELICIT]]
    asked: list[str] = []

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return await _name(context, params)

    async with _client(door, elicitation_callback=answer) as mcp:
        result = await mcp.call_tool("get_current_time", {})
    assert "apr_0123456789abcdef" in asked[0] and asked[1] == "name?"
    assert _text(result) == [{"action": "accept", "content": {"name": "Ada"}}]
    assert [call["approval_id"] for call in manager.calls] == ["", "apr_0123456789abcdef"]


async def test_a_capability_the_client_lacks_is_refused_to_the_server_at_once(
    door: RunningDoor, manager: TalkingManager
) -> None:
    manager.rounds = [[SAMPLE], [ELICIT]]
    async with _client(door, elicitation_callback=_name) as mcp:  # no sampling callback: no sampling declared
        result = await mcp.call_tool("get_current_time", {})
    refused, elicited = _text(result)
    assert refused["declined"] == -32601 and "sampling" in refused["message"]
    assert elicited["action"] == "accept"


async def test_prompts_and_resources_are_translated_too(door: RunningDoor, manager: TalkingManager) -> None:
    manager.rounds = [[ROOTS]]
    async with _client(door, list_roots_callback=_roots) as mcp:
        prompt = await mcp.get_prompt("greeting", {})
        read = await mcp.read_resource("file:///notes")
    assert isinstance(prompt.messages[0].content, types.TextContent)
    assert "file:///work" in prompt.messages[0].content.text
    assert isinstance(read.contents[0], types.TextResourceContents) and "file:///work" in read.contents[0].text


async def test_a_retry_that_never_comes_cancels_the_call(
    manager: TalkingManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(door_http, "StateSeal", lambda: StateSeal(ttl_s=1.0))
    manager.rounds = [[ELICIT]]
    running = await _start(manager)
    try:
        async with _client(running, elicitation_callback=_name) as mcp:
            first = await mcp.session.call_tool("get_current_time", {}, allow_input_required=True)
            assert isinstance(first, types.InputRequiredResult) and first.input_requests
            (lease,) = running.app.leases._leases.values()
            assert lease.held and not lease.idle(10.0**9, 1.0)  # a held call keeps its lease
            async with asyncio.timeout(30):
                while not manager.cancelled or lease.held:
                    await asyncio.sleep(0.02)
            assert manager.cancelled == ["get_current_time"]
            answer: types.InputResponses = {key: types.ElicitResult(action="decline") for key in first.input_requests}
            with pytest.raises(MCPError) as late:
                await mcp.session.call_tool("get_current_time", {}, input_responses=answer,
                                            request_state=first.request_state)  # fmt: skip
        assert late.value.error.code == -32602
        assert "expired" in late.value.error.message or "has ended" in late.value.error.message
    finally:
        await running.stop()


async def test_a_client_leaving_mid_round_cancels_the_call(door: RunningDoor, manager: TalkingManager) -> None:
    manager.rounds = [[ELICIT]]
    manager.call_gate = asyncio.Event()
    async with _client(door, elicitation_callback=_name) as mcp:
        call = asyncio.create_task(mcp.call_tool("get_current_time", {}))
        async with asyncio.timeout(30):  # the answer is given, the call then waits on its gate: leave
            while not manager.answered:
                await asyncio.sleep(0.02)
        call.cancel()
        async with asyncio.timeout(30):
            while not manager.cancelled:
                await asyncio.sleep(0.02)
    assert manager.cancelled == ["get_current_time"]


async def test_a_request_that_cannot_be_shown_cancels_the_call_and_lets_go_of_it(
    door: RunningDoor, manager: TalkingManager
) -> None:
    """Params that do not fit the MCP type (as sanitizing can leave them): the client is told, the call is cancelled
    and nothing is left held (a held call keeps its lease from ever being reaped)."""
    manager.rounds = [[ServerRequest("sampling/createMessage", {"maxTokens": "many"})]]
    async with _client(door, sampling_callback=_hi) as mcp:
        with pytest.raises(MCPError) as refused:
            await mcp.session.call_tool("get_current_time", {}, allow_input_required=True)
        assert "sampling/createMessage request cannot be put to this client" in refused.value.error.message
        (lease,) = door.app.leases._leases.values()
        async with asyncio.timeout(30):
            while not manager.cancelled:
                await asyncio.sleep(0.02)
        assert manager.cancelled == ["get_current_time"] and not lease.held


async def test_a_round_that_gets_no_state_lets_go_of_its_call(
    door: RunningDoor, manager: TalkingManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seal refuses to mint past its limit of pending retries: the held call is cancelled at once, not kept
    (and its lease kept busy) until its TTL."""
    from runner.door import seal as seal_module

    monkeypatch.setattr(seal_module, "MAX_OUTSTANDING", 0)
    manager.rounds = [[ELICIT]]
    async with _client(door, elicitation_callback=_name) as mcp:
        with pytest.raises(MCPError, match="too many pending retries"):
            await mcp.session.call_tool("get_current_time", {}, allow_input_required=True)
    for _ in range(100):
        if manager.cancelled:
            break
        await asyncio.sleep(0.01)
    assert manager.cancelled == ["get_current_time"]
