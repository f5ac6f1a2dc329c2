"""The server talks back, for real: a SessionManager on Docker, the real agent, the conformance fixture server.

Below the doors (which have their own tests): elicitation and sampling answered through a call's Exchange, log
messages to it, the 2026-07-28 era's input-required results and their retry, and the new operations, all through
a real sandbox's agent and the mcp SDK's server. Each test's manager has an instance name of its own, so its
start-up sweep touches no other run's containers.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import mcp_types
import pytest

from runner.sandbox.docker import DockerBackend
from runner.sessions.manager import SessionManager
from runner.sessions.models import Exchange, ServerNotification, ServerRequest
from runner.settings_file import load_settings

pytestmark = [pytest.mark.integration]
PROFILES = Path(__file__).with_name("conformance-profiles.yaml")


@pytest.fixture
async def manager() -> AsyncIterator[SessionManager]:
    settings = load_settings(PROFILES, mcp_listen="")
    settings = replace(settings, instance=f"it-host-{os.getpid()}-{secrets.token_hex(3)}")
    backend = DockerBackend()
    made = SessionManager(backend, settings)
    await made.start()
    try:
        yield made
    finally:
        await made.shutdown()
        await backend.settle()
        backend.close()


def text_of(result: mcp_types.CallToolResult | None) -> str:
    assert result is not None
    block = result.content[0]
    assert isinstance(block, mcp_types.TextContent)
    return block.text


async def test_elicitation_sampling_and_logs_through_the_calls_exchange(manager: SessionManager) -> None:
    opened = await manager.open("conformance", caller="it", door="mcp-http")
    session = opened.info.session_id
    assert opened.protocol == "2025-11-25"
    asked: list[ServerRequest] = []
    notes: list[ServerNotification] = []

    async def on_input(request: ServerRequest) -> dict[str, Any]:
        asked.append(request)
        if request.method == "elicitation/create":
            return {"action": "accept", "content": {"response": "yes"}}
        return {"role": "assistant", "content": {"type": "text", "text": "Paris"}, "model": "it"}

    async def on_notification(note: ServerNotification) -> None:
        notes.append(note)

    exchange = Exchange(on_input=on_input, on_notification=on_notification)
    elicited = await manager.call_tool(session, "test_elicitation", {"message": "Go?"}, caller="it", exchange=exchange)
    assert text_of(elicited.result) == 'User response: action=accept, content={"response":"yes"}'
    sampled = await manager.call_tool(session, "test_sampling", {"prompt": "Capital?"}, caller="it", exchange=exchange)
    assert text_of(sampled.result) == "LLM response: Paris"
    assert [r.method for r in asked] == ["elicitation/create", "sampling/createMessage"]
    await manager.set_logging_level(session, "debug", caller="it")
    await manager.call_tool(session, "test_tool_with_logging", {}, caller="it", exchange=exchange)
    assert [n.params["data"] for n in notes if n.method == "notifications/message"] == [
        "Tool execution started", "Tool processing data", "Tool execution completed",
    ]  # fmt: skip


async def test_an_answer_breaking_the_requested_schema_reaches_the_server_as_invalid_params(
    manager: SessionManager,
) -> None:
    session = (await manager.open("conformance", caller="it")).info.session_id

    async def on_input(request: ServerRequest) -> dict[str, Any]:
        return {"action": "accept", "content": {"response": 42}}

    exchange = Exchange(on_input=on_input)
    outcome = await manager.call_tool(session, "test_elicitation", {"message": "Go?"}, caller="it", exchange=exchange)
    text = text_of(outcome.result)
    assert text.startswith("Elicitation not supported or error:") and "requestedSchema" in text
    without = await manager.call_tool(session, "test_elicitation", {"message": "Go?"}, caller="it")
    assert "cannot answer elicitation/create" in text_of(without.result)


async def test_stateless_era_input_required_and_retry(manager: SessionManager) -> None:
    opened = await manager.open("conformance", caller="it", door="mcp-http", protocol="2026-07-28")
    session = opened.info.session_id
    assert opened.protocol == "2026-07-28"
    exchange = Exchange(client_capabilities={"elicitation": {"form": {}}})
    first = await manager.call_tool(session, "test_input_required_result_request_state", {}, caller="it",
                                    exchange=exchange)  # fmt: skip
    needed = first.input_required
    assert first.result is None and needed is not None
    # The SDK seals its state (``v1.…``, high-entropy text the sanitizer would redact anywhere else): kept verbatim.
    assert needed.request_state and needed.input_requests is not None
    assert set(needed.input_requests) == {"confirm"}
    retry = Exchange(input_responses={"confirm": {"action": "accept", "content": {"ok": True}}},
                     request_state=needed.request_state)  # fmt: skip
    done = await manager.call_tool(session, "test_input_required_result_request_state", {}, caller="it",
                                   exchange=retry)  # fmt: skip
    assert text_of(done.result) == "state-ok: confirmation received"


async def test_templates_completion_subscriptions_and_ping(manager: SessionManager) -> None:
    opened = await manager.open("conformance", caller="it")
    session = opened.info.session_id
    templates = await manager.list_resource_templates(session, caller="it")
    assert "test://template/{id}/data" in [t.uri_template for t in templates.value]
    assert opened.capabilities.completions is not None
    prompts = await manager.list_prompts(session, caller="it")
    with_args = next(p for p in prompts.value if p.arguments)
    assert with_args.arguments is not None
    argument = mcp_types.CompletionArgument(name=with_args.arguments[0].name, value="")
    ref = mcp_types.PromptReference(name=with_args.name)
    done = await manager.complete(session, mcp_types.CompleteRequestParams(ref=ref, argument=argument), caller="it")
    assert isinstance(done.completion.values, list)
    assert opened.capabilities.resources is not None and opened.capabilities.resources.subscribe
    await manager.subscribe(session, "test://watched-resource", caller="it")
    await manager.unsubscribe(session, "test://watched-resource", caller="it")
    await manager.ping(session, caller="it")
