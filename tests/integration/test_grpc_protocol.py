"""The whole protocol through the gRPC API, against the real service and npm's server-everything (profile
``everything``) in a real sandbox: resource templates, completion, logging level, ping, WatchSession (log
messages, resource updates), and the server's own requests answered by the caller: an elicitation in a unary
CallTool that stays pending between RPCs (a wrong answer refused by name, then a right one), and a sampling
request in CallToolStream, answered while the stream waits.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import yaml

from runner import cli
from runner.cli_exit import Exit
from runner.client import AsyncRunnerClient, InputRequest, ToolResult
from tests.integration.conftest import Service, start_service, stop_service

pytestmark = pytest.mark.integration

ANSWER_TIMEOUT_S = 60.0
"""Each RPC's deadline: generous for a loaded machine (the sandbox's own work is milliseconds)."""


@pytest.fixture(scope="module")
def service(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("protocol")
    config = tmp / "settings.yaml"
    config.write_text(yaml.safe_dump({"pool": {}, "defaults": {"call_timeout_s": 60}}))
    running = start_service(tmp, f"proto-{secrets.token_hex(4)}", config=config)
    yield running
    stop_service(running)


@pytest.fixture
async def everything(service: Service) -> AsyncIterator[tuple[AsyncRunnerClient, str]]:
    async with AsyncRunnerClient(service.address) as client, client.session("everything", timeout=120) as opened:
        yield client, opened.session_id


async def test_templates_completion_logging_and_ping(everything: tuple[AsyncRunnerClient, str]) -> None:
    client, session_id = everything
    templates = await client.list_resource_templates(session_id, timeout=ANSWER_TIMEOUT_S)
    assert templates and all("{" in t.uri_template for t in templates)
    departments = await client.complete(
        session_id, prompt="completable-prompt", argument="department", value="E", timeout=ANSWER_TIMEOUT_S
    )
    assert list(departments.values) == ["Engineering"]
    names = await client.complete(
        session_id, prompt="completable-prompt", argument="name", context={"department": "Sales"},
        timeout=ANSWER_TIMEOUT_S,
    )  # fmt: skip
    assert list(names.values) == ["David", "Eve", "Frank"]
    await client.set_logging_level(session_id, "debug", timeout=ANSWER_TIMEOUT_S)
    await client.ping(session_id, timeout=ANSWER_TIMEOUT_S)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.set_logging_level(session_id, "chatty", timeout=ANSWER_TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_watch_delivers_log_messages_and_resource_updates(everything: tuple[AsyncRunnerClient, str]) -> None:
    client, session_id = everything
    resources = await client.list_resources(session_id, timeout=ANSWER_TIMEOUT_S)
    uri = resources[0].uri
    events = client.watch_session(session_id, timeout=ANSWER_TIMEOUT_S)
    first = asyncio.ensure_future(events.__anext__())
    await client.set_logging_level(session_id, "debug", timeout=ANSWER_TIMEOUT_S)
    await client.subscribe(session_id, uri, timeout=ANSWER_TIMEOUT_S)
    # The server sends a log message now and every 5 s, and an update of each subscribed resource every 5 s.
    await client.call_tool(session_id, "toggle-simulated-logging", {}, timeout=ANSWER_TIMEOUT_S)
    await client.call_tool(session_id, "toggle-subscriber-updates", {}, timeout=ANSWER_TIMEOUT_S)
    seen: set[str] = set()
    event = await first
    while True:
        assert not isinstance(event, InputRequest)
        kind = event.WhichOneof("event")
        seen.add(kind)
        if kind == "log":
            assert event.log.level and event.log.data_json
        if kind == "resource_updated":
            assert event.resource_updated == uri
        if {"log", "resource_updated"} <= seen:
            break
        event = await events.__anext__()
    await client.unsubscribe(session_id, uri, timeout=ANSWER_TIMEOUT_S)
    await events.aclose()


async def test_elicitation_in_a_unary_call_pending_between_rpcs(everything: tuple[AsyncRunnerClient, str]) -> None:
    client, session_id = everything
    first = await client.call_tool(
        session_id, "trigger-elicitation-request", {}, answers_input=True, timeout=ANSWER_TIMEOUT_S
    )
    asked = first.input_request
    assert asked is not None and asked.method == "elicitation/create" and first.content == []
    assert asked.params["requestedSchema"]["required"] == ["name"]
    with pytest.raises(grpc.aio.AioRpcError) as info:  # breaks the requestedSchema: refused, the id not used up
        await client.answer_input(
            session_id, asked.input_id, {"action": "accept", "content": {"name": "Ada", "integer": 500}},
            timeout=ANSWER_TIMEOUT_S,
        )  # fmt: skip
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requestedSchema" in (info.value.details() or "") and "integer" in (info.value.details() or "")
    done = await client.answer_input(
        session_id, asked.input_id, {"action": "accept", "content": {"name": "Ada Lovelace", "integer": 7}},
        timeout=ANSWER_TIMEOUT_S,
    )  # fmt: skip
    assert done is not None and done.input_request is None and not done.is_error
    assert "- Name: Ada Lovelace" in done.text and "- Favorite Integer: 7" in done.text
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.answer_input(session_id, asked.input_id, {"action": "decline"}, timeout=ANSWER_TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "already answered" in (
        info.value.details() or ""
    )


async def test_sampling_in_a_stream_answered_while_it_waits(everything: tuple[AsyncRunnerClient, str]) -> None:
    client, session_id = everything
    result: ToolResult | None = None
    asked: list[InputRequest] = []
    stream = client.call_tool_stream(
        session_id, "trigger-sampling-request", {"prompt": "Say hi"}, answers_input=True, timeout=ANSWER_TIMEOUT_S
    )
    async for item in stream:
        if isinstance(item, InputRequest):
            asked.append(item)
            answer = {"role": "assistant", "content": {"type": "text", "text": "hi from the caller"}, "model": "m-1"}
            assert await client.answer_input(session_id, item.input_id, answer, timeout=ANSWER_TIMEOUT_S) is None
        elif isinstance(item, ToolResult):
            result = item
    assert [a.method for a in asked] == ["sampling/createMessage"]
    assert "Say hi" in asked[0].params["messages"][0]["content"]["text"]
    assert result is not None and not result.is_error and "hi from the caller" in result.text


async def test_without_answers_input_the_server_is_told_the_caller_cannot(
    everything: tuple[AsyncRunnerClient, str],
) -> None:
    client, session_id = everything
    result = await client.call_tool(session_id, "trigger-sampling-request", {"prompt": "x"}, timeout=ANSWER_TIMEOUT_S)
    assert result.input_request is None and result.is_error


async def test_a_pending_call_ends_with_its_session(service: Service) -> None:
    async with AsyncRunnerClient(service.address) as client:
        opened = await client.open_session("everything", timeout=120)
        first = await client.call_tool(
            opened.session_id, "trigger-elicitation-request", {}, answers_input=True, timeout=ANSWER_TIMEOUT_S
        )
        assert first.input_request is not None
        await client.close_session(opened.session_id, timeout=ANSWER_TIMEOUT_S)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.answer_input(
                opened.session_id, first.input_request.input_id, {"action": "decline"}, timeout=ANSWER_TIMEOUT_S
            )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "can no longer be answered" in (info.value.details() or "")


async def test_cli_call_prints_the_request_and_exits_1(service: Service, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--address", service.address, "call", "--profile", "everything", "trigger-elicitation-request"]
    assert await asyncio.to_thread(cli.main, argv) == Exit.FAILURE  # the exit-code table: input the CLI cannot give
    captured = capsys.readouterr()
    assert '"method": "elicitation/create"' in captured.out
    assert "`mcp-runner call` cannot answer it" in captured.err
