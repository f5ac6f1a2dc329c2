"""The gRPC API end to end: a real grpc.aio server on 127.0.0.1:0 over a fake SessionManager, driven by the client."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import mcp_types
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from runner import errors
from runner.api import RUNNER_SERVICE, start_server
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api._proto.mcp_runner.v1 import runner_pb2_grpc
from runner.api.servicer import SessionService
from runner.client import AsyncRunnerClient, Progress, ToolResult
from runner.sessions.models import (
    Finding,
    LimitsRequest,
    OpenedSession,
    ProgressCallback,
    ProgressEvent,
    ServerInfo,
    SessionInfo,
    SessionState,
    ToolCallOutcome,
    Usage,
)

SERVER = ServerInfo(name="fake", version="1.0", protocol_version="2025-06-18", instructions="be nice")
TOOLS = (
    mcp_types.Tool(
        name="echo",
        description="Echo the arguments back.",
        input_schema={"type": "object", "properties": {"x": {"type": "integer"}}},
    ),
    mcp_types.Tool(name="slow", description="Sleeps.", input_schema={"type": "object"}),
)


class FakeManager:
    """Duck-typed SessionManager: records what it was asked, answers from memory."""

    def __init__(self) -> None:
        self.sessions: dict[str, SessionInfo] = {}
        self.error: BaseException | None = None
        self.timeouts: list[float | None] = []
        self.opened_with: dict[str, Any] = {}
        self.call_args: dict[str, Any] = {}
        self._next = 0

    def _check(self, session_id: str | None = None) -> None:
        if self.error is not None:
            raise self.error
        if session_id is not None and session_id not in self.sessions:
            raise errors.SessionNotFound(f"no session {session_id}")

    async def open(
        self,
        profile: str,
        *,
        caller: str,
        labels: Mapping[str, str] | None = None,
        limits: LimitsRequest | None = None,
        timeout: float | None = None,
    ) -> OpenedSession:
        self._check()
        if profile == "missing":
            raise errors.ProfileNotFound(f"no profile {profile!r}")
        self.opened_with = {"caller": caller, "labels": dict(labels or {}), "limits": limits, "timeout": timeout}
        self._next += 1
        info = SessionInfo(
            session_id=f"s{self._next}",
            profile=profile,
            caller=caller,
            state=SessionState.READY,
            created_at=time.time(),
            age_seconds=0.0,
            usage=Usage(),
            labels=dict(labels or {}),
            server=SERVER,
        )
        self.sessions[info.session_id] = info
        return OpenedSession(info=info, server=SERVER, tools=TOOLS)

    async def close(self, session_id: str, *, caller: str) -> SessionInfo:
        self._check(session_id)
        info = self.sessions.pop(session_id)
        usage = Usage(wall_seconds=1.5, cpu_seconds=0.25, peak_memory_bytes=10_000_000, calls=3)
        return SessionInfo(
            session_id=info.session_id,
            profile=info.profile,
            caller=info.caller,
            state=SessionState.CLOSED,
            created_at=info.created_at,
            age_seconds=1.5,
            usage=usage,
            labels=info.labels,
            server=info.server,
        )

    def get(self, session_id: str) -> SessionInfo:
        self._check(session_id)
        return self.sessions[session_id]

    def list_sessions(self) -> builtins.list[SessionInfo]:
        self._check()
        return builtins.list(self.sessions.values())

    async def list_tools(self, session_id: str, *, timeout: float | None = None) -> builtins.list[mcp_types.Tool]:
        self._check(session_id)
        self.timeouts.append(timeout)
        return builtins.list(TOOLS)

    async def call_tool(
        self,
        session_id: str,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> ToolCallOutcome:
        self._check(session_id)
        self.timeouts.append(timeout)
        self.call_args = {"tool": tool, "arguments": arguments}
        if tool == "slow":
            await asyncio.sleep(min(5.0, timeout or 5.0))
            raise errors.DeadlineExceeded(f"{tool} ran past {timeout}s")
        if tool == "boom":
            raise RuntimeError("secret internal detail")
        if tool == "progress" and on_progress is not None:
            for i in range(3):
                await on_progress(ProgressEvent(progress=i + 1, total=3, message=f"step {i + 1}"))
                await asyncio.sleep(0)
        if tool == "fails":
            result = mcp_types.CallToolResult(
                content=[mcp_types.TextContent(type="text", text="it broke")], is_error=True
            )
            return ToolCallOutcome(result=result)
        result = mcp_types.CallToolResult(
            content=[mcp_types.TextContent(type="text", text=f"echo {arguments}")],
            structured_content={"echo": arguments, "big": 2**62},
        )
        findings = (Finding(kind="secret", count=1, action="redacted", where="content[0].text"),)
        return ToolCallOutcome(result=result, findings=findings, audit_id="audit-1")

    async def list_resources(
        self, session_id: str, *, timeout: float | None = None
    ) -> builtins.list[mcp_types.Resource]:
        self._check(session_id)
        return [mcp_types.Resource(name="readme", uri="file:///readme.md", mime_type="text/markdown")]

    async def read_resource(
        self, session_id: str, uri: str, *, timeout: float | None = None
    ) -> builtins.list[mcp_types.TextResourceContents | mcp_types.BlobResourceContents]:
        self._check(session_id)
        if uri == "file:///nope":
            raise errors.ResourceNotFound(uri)
        return [
            mcp_types.TextResourceContents(uri=uri, mime_type="text/markdown", text="# hi"),
            mcp_types.BlobResourceContents(uri=uri, blob="AAEC"),
        ]

    async def list_prompts(self, session_id: str, *, timeout: float | None = None) -> builtins.list[mcp_types.Prompt]:
        self._check(session_id)
        arg = mcp_types.PromptArgument(name="topic", required=True)
        return [mcp_types.Prompt(name="explain", description="Explain a topic", arguments=[arg])]

    async def get_prompt(
        self, session_id: str, name: str, arguments: dict[str, str], *, timeout: float | None = None
    ) -> mcp_types.GetPromptResult:
        self._check(session_id)
        text = mcp_types.TextContent(type="text", text=f"Explain {arguments['topic']}")
        return mcp_types.GetPromptResult(
            description="explained", messages=[mcp_types.PromptMessage(role="user", content=text)]
        )


def _typed(manager: FakeManager) -> SessionService:
    return manager  # mypy: the fake satisfies the Protocol the servicer asks for


@pytest.fixture
def fake() -> FakeManager:
    return FakeManager()


@pytest.fixture
async def address(fake: FakeManager) -> AsyncIterator[str]:
    running = await start_server(_typed(fake), "127.0.0.1:0", grace=0)
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        await running.stop(0)


@pytest.fixture
async def client(address: str) -> AsyncIterator[AsyncRunnerClient]:
    async with AsyncRunnerClient(address) as c:
        yield c


async def test_open_get_list_close(client: AsyncRunnerClient, fake: FakeManager) -> None:
    opened = await client.open_session(
        "time", labels={"team": "a"}, limits={"memory_bytes": 1 << 28, "call_timeout_ms": 1500}, timeout=10
    )
    assert opened.session_id == "s1"
    assert (opened.server.name, opened.server.protocol_version) == ("fake", "2025-06-18")
    assert opened.server.instructions == "be nice"
    assert [t.name for t in opened.tools] == ["echo", "slow"]
    assert fake.opened_with["caller"] == "anonymous"
    assert fake.opened_with["labels"] == {"team": "a"}
    assert fake.opened_with["limits"] == LimitsRequest(memory_bytes=1 << 28, call_timeout_s=1.5)
    assert 0 < fake.opened_with["timeout"] <= 10

    got = await client.get_session("s1")
    assert got.state == pb.SESSION_STATE_READY and got.profile == "time" and dict(got.labels) == {"team": "a"}
    assert [s.session_id for s in await client.list_sessions()] == ["s1"]

    closed = await client.close_session("s1")
    assert closed.state == pb.SESSION_STATE_CLOSED
    assert (closed.usage.wall_ms, closed.usage.cpu_ms, closed.usage.calls) == (1500, 250, 3)
    assert await client.list_sessions() == []


async def test_open_without_limits_passes_none(client: AsyncRunnerClient, fake: FakeManager) -> None:
    await client.open_session("time")
    assert fake.opened_with["limits"] is None
    assert fake.opened_with["timeout"] is None


async def test_session_context_manager_always_closes(client: AsyncRunnerClient, fake: FakeManager) -> None:
    with pytest.raises(ValueError):
        async with client.session("time") as opened:
            assert opened.session_id in fake.sessions
            raise ValueError("boom")
    assert fake.sessions == {}


async def test_list_tools(client: AsyncRunnerClient) -> None:
    opened = await client.open_session("time")
    tools = await client.list_tools(opened.session_id)
    assert tools[0].name == "echo"
    assert '"x":{"type":"integer"}' in tools[0].input_schema_json


async def test_call_tool_round_trip(client: AsyncRunnerClient, fake: FakeManager) -> None:
    opened = await client.open_session("time")
    result = await client.call_tool(opened.session_id, "echo", {"x": 2**60, "nested": {"a": [1]}})
    assert fake.call_args["arguments"] == {"x": 2**60, "nested": {"a": [1]}}
    assert result.structured_content == {"echo": {"x": 2**60, "nested": {"a": [1]}}, "big": 2**62}
    assert result.is_error is False
    assert result.content[0].text.startswith("echo ")
    assert [(f.kind, f.count, f.action, f.where) for f in result.findings] == [
        ("secret", 1, "redacted", "content[0].text")
    ]
    assert result.audit_id == "audit-1"
    assert fake.timeouts[-1] is None  # no deadline, no timeout_ms


async def test_call_tool_is_error(client: AsyncRunnerClient) -> None:
    opened = await client.open_session("time")
    result = await client.call_tool(opened.session_id, "fails", {})
    assert result.is_error and result.text == "it broke" and result.structured_content is None


@pytest.mark.parametrize(
    ("arguments_json", "needle"),
    [("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object"), ('"x"', "must be a JSON object")],
)
async def test_invalid_arguments_json(address: str, fake: FakeManager, arguments_json: str, needle: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        opened = await stub.OpenSession(pb.OpenSessionRequest(profile="time"))
        request = pb.CallToolRequest(session_id=opened.session_id, tool="echo", arguments_json=arguments_json)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CallTool(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (info.value.details() or "")
    assert fake.call_args == {}


async def test_empty_arguments_json_means_no_arguments(address: str, fake: FakeManager) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        opened = await stub.OpenSession(pb.OpenSessionRequest(profile="time"))
        await stub.CallTool(pb.CallToolRequest(session_id=opened.session_id, tool="echo"))
    assert fake.call_args["arguments"] == {}


ERROR_CASES = [
    (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.SchemaViolation("x", "$.a"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
    (errors.ProfileNotFound("x"), grpc.StatusCode.NOT_FOUND),
    (errors.SessionNotFound("x"), grpc.StatusCode.NOT_FOUND),
    (errors.ToolNotFound("x"), grpc.StatusCode.NOT_FOUND),
    (errors.ResourceNotFound("x"), grpc.StatusCode.NOT_FOUND),
    (errors.PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
    (errors.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.QuotaExceeded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.OutOfMemory("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.SessionClosed("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.SandboxCrashed("x", "tail"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ProtocolViolation("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResultRejected("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ServerError(errors.JSONRPC_INVALID_PARAMS, "x"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ServerError(errors.MCP_RESOURCE_NOT_FOUND, "x"), grpc.StatusCode.NOT_FOUND),
    (errors.ServerError(errors.JSONRPC_METHOD_NOT_FOUND, "x"), grpc.StatusCode.UNIMPLEMENTED),
    (errors.ServerError(-1, "x"), grpc.StatusCode.UNKNOWN),
    (errors.Unimplemented("x"), grpc.StatusCode.UNIMPLEMENTED),
    (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.RunnerError("x"), grpc.StatusCode.INTERNAL),
]


def _all_subclasses(cls: type[errors.RunnerError]) -> set[type[errors.RunnerError]]:
    return {cls}.union(*(_all_subclasses(sub) for sub in cls.__subclasses__()))


def test_error_cases_cover_the_whole_tree() -> None:
    covered = {type(exc) for exc, _ in ERROR_CASES}
    tree = {c for c in _all_subclasses(errors.RunnerError) if c.__module__ == "runner.errors"}
    assert tree <= covered


@pytest.mark.parametrize(("error", "code"), ERROR_CASES, ids=lambda v: type(v).__name__)
async def test_runner_errors_map_to_status(
    client: AsyncRunnerClient, fake: FakeManager, error: errors.RunnerError, code: grpc.StatusCode
) -> None:
    opened = await client.open_session("time")
    fake.error = error
    for rpc in (client.get_session(opened.session_id), client.call_tool(opened.session_id, "echo", {})):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rpc
        assert info.value.code() == code
        assert info.value.details() == error.message


async def test_unexpected_exception_is_internal_and_generic(
    client: AsyncRunnerClient, caplog: pytest.LogCaptureFixture
) -> None:
    opened = await client.open_session("time")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.call_tool(opened.session_id, "boom", {})
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (info.value.details() or "")
    assert "secret internal detail" in caplog.text


async def test_deadline_shorter_than_call(client: AsyncRunnerClient, fake: FakeManager) -> None:
    opened = await client.open_session("time")
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.call_tool(opened.session_id, "slow", {}, timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2
    passed = fake.timeouts[-1]
    assert passed is not None and 0 < passed <= 0.3


async def test_timeout_ms_shorter_than_deadline(client: AsyncRunnerClient, fake: FakeManager) -> None:
    opened = await client.open_session("time")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.call_tool(opened.session_id, "slow", {}, timeout_ms=100, timeout=5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert fake.timeouts[-1] == pytest.approx(0.1)


async def test_negative_timeout_ms_is_invalid(client: AsyncRunnerClient) -> None:
    opened = await client.open_session("time")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.call_tool(opened.session_id, "echo", {}, timeout_ms=-1)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_stream_yields_progress_then_result(client: AsyncRunnerClient) -> None:
    opened = await client.open_session("time")
    items = [item async for item in client.call_tool_stream(opened.session_id, "progress", {"x": 1})]
    assert items[:3] == [Progress(progress=float(i), total=3.0, message=f"step {i}") for i in (1, 2, 3)]
    assert len(items) == 4 and isinstance(items[3], ToolResult)
    assert items[3].structured_content["echo"] == {"x": 1}


async def test_stream_error_is_status(client: AsyncRunnerClient) -> None:
    opened = await client.open_session("time")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in client.call_tool_stream(opened.session_id, "slow", {}, timeout_ms=50):
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_unknown_session_is_not_found(client: AsyncRunnerClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.list_tools("nope")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_missing_fields_are_invalid(client: AsyncRunnerClient) -> None:
    for rpc in (client.open_session(""), client.get_session(""), client.call_tool("s1", "", {})):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rpc
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_resources(client: AsyncRunnerClient) -> None:
    opened = await client.open_session("time")
    [resource] = await client.list_resources(opened.session_id)
    assert (resource.uri, resource.name, resource.mime_type) == ("file:///readme.md", "readme", "text/markdown")
    text, blob = await client.read_resource(opened.session_id, "file:///readme.md")
    assert text.text == "# hi" and text.WhichOneof("body") == "text"
    assert blob.blob == b"\x00\x01\x02" and blob.WhichOneof("body") == "blob"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.read_resource(opened.session_id, "file:///nope")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_prompts(client: AsyncRunnerClient) -> None:
    opened = await client.open_session("time")
    [prompt] = await client.list_prompts(opened.session_id)
    assert prompt.name == "explain" and prompt.arguments[0].name == "topic" and prompt.arguments[0].required
    result = await client.get_prompt(opened.session_id, "explain", {"topic": "gRPC"})
    assert result.description == "explained"
    assert [(m.role, m.content.text) for m in result.messages] == [("user", "Explain gRPC")]


async def test_health_serving_then_not_serving(fake: FakeManager) -> None:
    running = await start_server(_typed(fake), "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", RUNNER_SERVICE):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            await running.set_not_serving()
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=RUNNER_SERVICE))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await running.stop(0)


async def test_reflection_lists_the_service(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        replies = [reply async for reply in call]
    names = {s.name for s in replies[0].list_services_response.service}
    assert RUNNER_SERVICE == "mcp_runner.v1.Runner"
    assert {"mcp_runner.v1.Runner", "grpc.health.v1.Health"} <= names
