"""A 2026-07-28 client through the HTTP door on npm's server-everything (profile ``everything``), which speaks only
2025-11-25: the lease's agent falls back to ``initialize``, and the server's elicitation and sampling requests
mid-call reach the client as input-required rounds (runner.door.translate) — answered by the SDK's own client, a
missing response asked again, a tampered and a replayed state refused — against the real service and Docker.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx2
import mcp_types as types
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from runner.audit import records
from runner.audit.reading import query
from runner.audit.records import AuditQuery
from tests.integration.conftest import Service, start_service, stop_service
from tests.integration.test_mcp_http import _wait_for_port

pytestmark = pytest.mark.integration

TOOL_ELICIT = "trigger-elicitation-request"
TOOL_SAMPLE = "trigger-sampling-request"
ADA: dict[str, Any] = {"name": "Ada Lovelace", "integer": 7}


@pytest.fixture(scope="module")
def service(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("mcp-translate")
    config = tmp / "settings.yaml"
    config.write_text(yaml.safe_dump({"pool": {}, "defaults": {"call_timeout_s": 120}}))
    running = start_service(tmp, f"it-translate-{secrets.token_hex(4)}", config=config)
    try:
        _wait_for_port(running.mcp_listen, running)
        yield running
    finally:
        stop_service(running)


async def _ada(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content=ADA)


async def _hi(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    text = types.TextContent(text="hi from the caller")
    return types.CreateMessageResult(role="assistant", content=text, model="m-1")


async def _roots(context: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[])


def _client(service: Service, **callbacks: Any) -> Client:
    http = httpx2.AsyncClient(timeout=180)  # the lease's first request boots its sandbox
    url = f"http://{service.mcp_listen}/mcp/everything"
    callbacks.setdefault("list_roots_callback", _roots)  # the server asks for roots once, soon after it starts
    return Client(streamable_http_client(url, http_client=http), mode="2026-07-28", **callbacks)


def _text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_elicitation_and_sampling_are_answered_through_input_required_rounds(service: Service) -> None:
    async with _client(service, elicitation_callback=_ada, sampling_callback=_hi) as mcp:
        elicited = await mcp.call_tool(TOOL_ELICIT, {})
        sampled = await mcp.call_tool(TOOL_SAMPLE, {"prompt": "Say hi"})
    assert not elicited.is_error, _text(elicited)
    assert "- Name: Ada Lovelace" in _text(elicited) and "- Favorite Integer: 7" in _text(elicited)
    assert not sampled.is_error and "hi from the caller" in _text(sampled)
    asked = query(service.audit_db, AuditQuery(kinds=(records.SERVER_REQUEST,)))
    answered = [r.data["method"] for r in asked if r.data.get("outcome") == "answered"]
    assert "elicitation/create" in answered and "sampling/createMessage" in answered
    assert all(r.data.get("door") == "mcp-http" for r in asked)


async def test_a_missing_response_a_tampered_state_and_a_replay(service: Service) -> None:
    async with _client(service, elicitation_callback=_ada) as mcp:
        first = await mcp.session.call_tool(TOOL_ELICIT, {}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult) and first.input_requests and first.request_state
        keys = [k for k, r in first.input_requests.items() if r.method == "elicitation/create"]
        assert len(keys) == 1
        (key,) = keys
        asked = first.input_requests[key]
        assert isinstance(asked.params, types.ElicitRequestFormParams)
        assert asked.params.requested_schema["required"] == ["name"]
        # No response: the same request again, under the same key, with a new state.
        again = await mcp.session.call_tool(TOOL_ELICIT, {}, request_state=first.request_state,
                                            allow_input_required=True)  # fmt: skip
        assert isinstance(again, types.InputRequiredResult) and again.input_requests and again.request_state
        assert key in again.input_requests and again.request_state != first.request_state
        answer: types.InputResponses = {key: types.ElicitResult(action="accept", content=ADA)}
        with pytest.raises(MCPError) as tampered:
            await mcp.session.call_tool(TOOL_ELICIT, {}, input_responses=answer,
                                        request_state=again.request_state[:-4] + "AAAA")  # fmt: skip
        assert tampered.value.error.code == -32602 and "not issued by this runner" in tampered.value.error.message
        with pytest.raises(MCPError) as replayed:  # the first state was used by the retry without a response
            await mcp.session.call_tool(TOOL_ELICIT, {}, input_responses=answer, request_state=first.request_state)
        assert replayed.value.error.code == -32602 and "already used" in replayed.value.error.message
        too_big: dict[str, Any] = {"name": "Ada", "integer": 500}
        wrong: types.InputResponses = {key: types.ElicitResult(action="accept", content=too_big)}
        with pytest.raises(MCPError) as refused:  # breaks the requestedSchema: refused, the state still good
            await mcp.session.call_tool(TOOL_ELICIT, {}, input_responses=wrong, request_state=again.request_state)
        assert refused.value.error.code == -32602 and "integer" in refused.value.error.message
        done = await mcp.session.call_tool(TOOL_ELICIT, {}, input_responses=answer, request_state=again.request_state)
        assert isinstance(done, types.CallToolResult) and not done.is_error
        assert "- Name: Ada Lovelace" in _text(done)
        with pytest.raises(MCPError) as used:
            await mcp.session.call_tool(TOOL_ELICIT, {}, input_responses=answer, request_state=again.request_state)
        assert used.value.error.code == -32602 and "already used" in used.value.error.message


async def test_a_capability_the_client_did_not_declare_is_refused_to_the_server(service: Service) -> None:
    async with _client(service, elicitation_callback=_ada) as mcp:  # declares no sampling
        result = await mcp.call_tool(TOOL_SAMPLE, {"prompt": "x"})
    assert result.is_error
    refusals = query(service.audit_db, AuditQuery(kinds=(records.SERVER_REQUEST,)))
    declined = [r for r in refusals if r.data["method"] == "sampling/createMessage" and r.data["outcome"] == "declined"]
    assert declined and declined[-1].data["error"]["code"] == -32601
