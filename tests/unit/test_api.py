"""The gRPC API end to end: a real grpc.aio server on 127.0.0.1:0 over a fake SessionManager, driven by the client."""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from types import MappingProxyType
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
from runner.api.auth import ANONYMOUS, Authenticator, hash_token, new_token
from runner.api.inputs import MAX_ARGUMENTS_BYTES
from runner.api.servicer import SessionService
from runner.approvals import Approval, ApprovalState
from runner.client import AsyncRunnerClient, Progress, ToolResult
from runner.config import AuthConfig, TlsConfig
from runner.guard.findings import Finding
from runner.sessions.models import (
    ApprovalCallback,
    LimitsRequest,
    OpenedSession,
    ProgressCallback,
    ProgressEvent,
    Sanitized,
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

APPROVAL_ID = "apr_0123456789abcdef"
REQUESTED_AT = 1_700_000_000.5
EXPIRES_AT = 1_700_000_300.25
# The tool the fake treats as needing approval.
GATED = "deploy"


def make_approval(state: ApprovalState = ApprovalState.PENDING, **overrides: Any) -> Approval:
    """An approval as the manager would hand it out (decided ones with decider, reason and time)."""
    values: dict[str, Any] = {
        "approval_id": APPROVAL_ID,
        "session_id": "s1",
        "caller": "alice",
        "profile": "time",
        "tool": GATED,
        "arguments": MappingProxyType({"env": "prod", "n": 2**60}),
        "rule": "deploys-need-approval",
        "state": state,
        "requested_at": REQUESTED_AT,
        "expires_at": EXPIRES_AT,
    }
    if state is not ApprovalState.PENDING:
        values.update(decided_by="bob", reason="looks fine", decided_at=REQUESTED_AT + 10)
    values.update(overrides)
    return Approval(**values)


class FakeManager:
    """Duck-typed SessionManager: records what it was asked (and by whom), answers from memory."""

    def __init__(self) -> None:
        self.sessions: dict[str, SessionInfo] = {}
        self.error: BaseException | None = None
        self.timeouts: list[float | None] = []
        self.opened_with: dict[str, Any] = {}
        self.call_args: dict[str, Any] = {}
        self.callers: list[tuple[str, str]] = []
        """(method, caller) of every call that reached the manager, in order."""
        self.findings: dict[str, tuple[Finding, ...]] = {}
        """Method name -> the findings its answer carries (none by default)."""
        self.approvals: list[Approval] = []
        """What list_approvals / watch_approvals answer, and what decide_approval decides."""
        self.listed_with: dict[str, Any] = {}
        self.decided: list[tuple[str, bool, str]] = []
        self._next = 0

    def _check(self, method: str, caller: str, session_id: str | None = None) -> None:
        self.callers.append((method, caller))
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
        self._check("open", caller)
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
        return OpenedSession(info=info, server=SERVER, tools=TOOLS, findings=self.findings.get("open", ()))

    async def close(self, session_id: str, *, caller: str) -> SessionInfo:
        self._check("close", caller, session_id)
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

    def get(self, session_id: str, *, caller: str) -> SessionInfo:
        self._check("get", caller, session_id)
        return self.sessions[session_id]

    def list_sessions(self, *, caller: str) -> builtins.list[SessionInfo]:
        self._check("list_sessions", caller)
        return builtins.list(self.sessions.values())

    async def list_tools(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[builtins.list[mcp_types.Tool]]:
        self._check("list_tools", caller, session_id)
        self.timeouts.append(timeout)
        return Sanitized(builtins.list(TOOLS), self.findings.get("list_tools", ()))

    async def call_tool(
        self,
        session_id: str,
        tool: str,
        arguments: dict[str, Any],
        *,
        caller: str,
        approval_id: str = "",
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        on_approval: ApprovalCallback | None = None,
        exchange: Any = None,
    ) -> ToolCallOutcome:
        self._check("call_tool", caller, session_id)
        self.timeouts.append(timeout)
        self.call_args = {
            "tool": tool,
            "arguments": arguments,
            "approval_id": approval_id,
            "streamed": on_progress is not None,
            "on_approval": on_approval is not None,
        }
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
        approval: Approval | None = None
        if tool == GATED:
            pending = make_approval(session_id=session_id, caller=caller, arguments=MappingProxyType(arguments))
            if approval_id:  # the caller comes back with an approved call
                approval = replace(make_approval(ApprovalState.APPROVED), approval_id=approval_id, used=True)
            elif on_approval is not None:  # a streamed call waits for the decision
                await on_approval(pending)
                await asyncio.sleep(0)
                approval = make_approval(ApprovalState.APPROVED, session_id=session_id, caller=caller)
                await on_approval(approval)
            else:  # a unary call returns at once, without a result
                return ToolCallOutcome(result=None, approval=pending, audit_id="audit-pending")
        result = mcp_types.CallToolResult(
            content=[mcp_types.TextContent(type="text", text=f"echo {arguments}")],
            structured_content={"echo": arguments, "big": 2**62},
        )
        findings = (Finding(kind="secret", count=1, action="redacted", where="content[0].text"),)
        return ToolCallOutcome(result=result, findings=findings, audit_id="audit-1", approval=approval)

    async def list_resources(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[builtins.list[mcp_types.Resource]]:
        self._check("list_resources", caller, session_id)
        resources = [mcp_types.Resource(name="readme", uri="file:///readme.md", mime_type="text/markdown")]
        return Sanitized(resources, self.findings.get("list_resources", ()))

    async def read_resource(
        self, session_id: str, uri: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[builtins.list[mcp_types.TextResourceContents | mcp_types.BlobResourceContents]]:
        self._check("read_resource", caller, session_id)
        if uri == "file:///nope":
            raise errors.ResourceNotFound(uri)
        contents: builtins.list[mcp_types.TextResourceContents | mcp_types.BlobResourceContents] = [
            mcp_types.TextResourceContents(uri=uri, mime_type="text/markdown", text="# hi"),
            mcp_types.BlobResourceContents(uri=uri, blob="AAEC"),
        ]
        return Sanitized(contents, self.findings.get("read_resource", ()))

    async def list_prompts(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[builtins.list[mcp_types.Prompt]]:
        self._check("list_prompts", caller, session_id)
        arg = mcp_types.PromptArgument(name="topic", required=True)
        prompts = [mcp_types.Prompt(name="explain", description="Explain a topic", arguments=[arg])]
        return Sanitized(prompts, self.findings.get("list_prompts", ()))

    async def get_prompt(
        self, session_id: str, name: str, arguments: dict[str, str], *, caller: str, timeout: float | None = None
    ) -> Sanitized[mcp_types.GetPromptResult]:
        self._check("get_prompt", caller, session_id)
        text = mcp_types.TextContent(type="text", text=f"Explain {arguments['topic']}")
        result = mcp_types.GetPromptResult(
            description="explained", messages=[mcp_types.PromptMessage(role="user", content=text)]
        )
        return Sanitized(result, self.findings.get("get_prompt", ()))

    def list_approvals(self, *, caller: str, include_decided: bool = False) -> builtins.list[Approval]:
        self._check("list_approvals", caller)
        self.listed_with = {"include_decided": include_decided}
        return [a for a in self.approvals if include_decided or a.state is ApprovalState.PENDING]

    async def watch_approvals(self, *, caller: str) -> AsyncIterator[Approval]:
        self._check("watch_approvals", caller)
        for approval in self.approvals:
            await asyncio.sleep(0)
            yield approval

    def decide_approval(self, approval_id: str, *, caller: str, approve: bool, reason: str) -> Approval:
        self._check("decide_approval", caller)
        self.decided.append((approval_id, approve, reason))
        for approval in self.approvals:
            if approval.approval_id == approval_id:
                break
        else:
            raise errors.NotFound(f"no approval {approval_id!r}")
        if approval.caller == caller:
            raise errors.PermissionDenied(f"{caller!r} may not approve their own call")
        state = ApprovalState.APPROVED if approve else ApprovalState.DENIED
        return replace(approval, state=state, decided_by=caller, reason=reason, decided_at=REQUESTED_AT + 60)


def _typed(manager: FakeManager) -> SessionService:
    return manager  # mypy: the fake satisfies the Protocol the servicer asks for


def anonymous() -> Authenticator:
    """The default configuration: no credentials, everyone is ``anonymous`` (loopback only)."""
    return Authenticator(AuthConfig(), lambda token_hash: None)


@asynccontextmanager
async def serve(
    manager: FakeManager,
    authenticator: Authenticator | None = None,
    *,
    listen: str = "127.0.0.1:0",
    tls: TlsConfig | None = None,
) -> AsyncIterator[int]:
    """A real server over ``manager`` for the block; yields its port."""
    running = await start_server(_typed(manager), listen, authenticator=authenticator or anonymous(), tls=tls, grace=0)
    try:
        yield running.port
    finally:
        await running.stop(0)


@pytest.fixture
def fake() -> FakeManager:
    return FakeManager()


@pytest.fixture
async def address(fake: FakeManager) -> AsyncIterator[str]:
    async with serve(fake) as port:
        yield f"127.0.0.1:{port}"


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
    # The deadline the servicer reads back from the wire may be ~1% long (gRPC rounds the encoded timeout up).
    assert 9 < fake.opened_with["timeout"] <= 10.2

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
    assert result.approval is None and not result.pending
    assert fake.timeouts[-1] is None  # no deadline, no timeout_ms
    assert fake.call_args["approval_id"] == "" and not fake.call_args["on_approval"]


async def test_non_ascii_arguments_are_sent_as_utf8_within_the_door_cap(
    client: AsyncRunnerClient, fake: FakeManager
) -> None:
    """0.6 MB of Cyrillic is 1.8 MB as \\u escapes, past the door's 1 MiB cap: the client sent escapes."""
    opened = await client.open_session("time")
    document = "Съешь же ещё этих мягких французских булок, да выпей чаю 🎉\n" * 5_000
    assert len(json.dumps(document).encode()) > MAX_ARGUMENTS_BYTES > len(document.encode())
    await client.call_tool(opened.session_id, "echo", {"content": document})
    assert fake.call_args["arguments"] == {"content": document}
    # Text that is not UTF-8 still reaches the door, escaped, and is refused there by name.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.call_tool(opened.session_id, "echo", {"text": "x\ud800"})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "lone surrogate" in (info.value.details() or "")


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
    (errors.ResultBlocked("x"), grpc.StatusCode.PERMISSION_DENIED),
    (errors.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.QuotaExceeded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.RateLimited("x", 0.5), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.OutOfMemory("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.MessageTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.SessionClosed("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.SandboxCrashed("x", "tail"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ProtocolViolation("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResultRejected("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ServerError(errors.JSONRPC_INVALID_PARAMS, "x"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ServerError(errors.MCP_RESOURCE_NOT_FOUND, "x"), grpc.StatusCode.NOT_FOUND),
    (errors.ServerError(errors.JSONRPC_METHOD_NOT_FOUND, "x"), grpc.StatusCode.UNIMPLEMENTED),
    (errors.ServerError(errors.JSONRPC_INTERNAL_ERROR, "x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ServerError(-1, "x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ClientDeclined(-1, "x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unimplemented("x"), grpc.StatusCode.UNIMPLEMENTED),
    (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
    (errors.AuditError("x"), grpc.StatusCode.UNAVAILABLE),
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
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.call_tool(opened.session_id, "slow", {}, timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The manager is handed what is left of the caller's deadline, so the call stops there. Fails if the servicer
    # dropped it (None: the fake's call would run its full 5 s) or passed more than the caller allowed.
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


async def test_stream_yields_progress_then_result(client: AsyncRunnerClient, fake: FakeManager) -> None:
    opened = await client.open_session("time")
    items = [item async for item in client.call_tool_stream(opened.session_id, "progress", {"x": 1})]
    assert items[:3] == [Progress(progress=float(i), total=3.0, message=f"step {i}") for i in (1, 2, 3)]
    assert len(items) == 4 and isinstance(items[3], ToolResult)
    assert items[3].structured_content["echo"] == {"x": 1}
    assert fake.call_args["streamed"] and fake.call_args["on_approval"]


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
    running = await start_server(_typed(fake), "127.0.0.1:0", authenticator=anonymous())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", RUNNER_SERVICE):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            await running.set_serving(False)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=RUNNER_SERVICE))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await running.set_serving(True)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=RUNNER_SERVICE))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            running.stopping = True  # a shutdown under way: nothing turns it back to SERVING
            await running.set_serving(True)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
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


# ----------------------------------------------------------------------------------------- identity

ALICE_TOKEN = new_token()


@pytest.fixture
def owners() -> dict[str, str]:
    """The policy file's token hashes; tests may revoke one by deleting it."""
    return {hash_token(ALICE_TOKEN): "alice"}


@pytest.fixture
def lookups() -> list[str]:
    return []


@pytest.fixture
async def token_address(fake: FakeManager, owners: dict[str, str], lookups: list[str]) -> AsyncIterator[str]:
    def token_owner(token_hash: str) -> str | None:
        lookups.append(token_hash)
        return owners.get(token_hash)

    async with serve(fake, Authenticator(AuthConfig(tokens=True), token_owner)) as port:
        yield f"127.0.0.1:{port}"


async def test_token_identifies_the_caller_to_the_manager(
    token_address: str, fake: FakeManager, lookups: list[str]
) -> None:
    fake.approvals = [make_approval(caller="carol")]
    async with AsyncRunnerClient(token_address, token=ALICE_TOKEN) as client:
        opened = await client.open_session("time")
        await client.get_session(opened.session_id)
        await client.list_tools(opened.session_id)
        await client.call_tool(opened.session_id, "echo", {})
        _ = [item async for item in client.call_tool_stream(opened.session_id, "echo", {})]
        await client.list_approvals()
        _ = [a async for a in client.watch_approvals(timeout=5)]
        decided = await client.decide_approval(APPROVAL_ID, approve=True)
        await client.list_sessions()
        await client.close_session(opened.session_id)
    assert opened.session.caller == "alice"
    assert decided.decided_by == "alice"
    assert fake.callers == [
        (method, "alice")
        for method in (
            "open", "get", "list_tools", "call_tool", "call_tool", "list_approvals", "watch_approvals",
            "decide_approval", "list_sessions", "close",
        )
    ]
    assert set(lookups) == {hash_token(ALICE_TOKEN)}  # only the hash is looked up, never the token


def _every_rpc(client: AsyncRunnerClient) -> dict[str, Callable[[], Any]]:
    """One call of every kind; streams are drained."""

    async def drain(stream: AsyncIterator[Any]) -> None:
        async for _ in stream:
            pass

    return {
        "OpenSession": lambda: client.open_session("time"),
        "GetSession": lambda: client.get_session("s1"),
        "ListSessions": lambda: client.list_sessions(),
        "ListTools": lambda: client.list_tools("s1"),
        "CallTool": lambda: client.call_tool("s1", "echo", {}),
        "CallToolStream": lambda: drain(client.call_tool_stream("s1", "echo", {})),
        "ReadResource": lambda: client.read_resource("s1", "file:///readme.md"),
        "GetPrompt": lambda: client.get_prompt("s1", "explain", {"topic": "x"}),
        "ListApprovals": lambda: client.list_approvals(),
        "WatchApprovals": lambda: drain(client.watch_approvals(timeout=5)),
        "DecideApproval": lambda: client.decide_approval(APPROVAL_ID, approve=True),
        "CloseSession": lambda: client.close_session("s1"),
    }


@pytest.mark.parametrize(
    ("credentials", "needle"),
    [
        ({}, "authentication required"),
        ({"token": new_token()}, "not known"),
        ({"metadata": [("authorization", f"Basic {ALICE_TOKEN}")]}, "malformed"),
    ],
    ids=["no-token", "unknown-token", "not-bearer"],
)
async def test_missing_or_wrong_token_is_unauthenticated(
    token_address: str, fake: FakeManager, credentials: dict[str, Any], needle: str
) -> None:
    fake.approvals = [make_approval(caller="carol")]
    await fake.open("time", caller="alice")
    fake.callers.clear()
    async with AsyncRunnerClient(token_address, **credentials) as client:
        for rpc, call in _every_rpc(client).items():
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, rpc
            details = info.value.details() or ""
            assert needle in details, rpc
            assert ALICE_TOKEN not in details and credentials.get("token", ALICE_TOKEN) not in details
    assert fake.callers == []  # the manager never heard of these calls


async def test_revoked_token_is_refused_at_once(token_address: str, fake: FakeManager, owners: dict[str, str]) -> None:
    async with AsyncRunnerClient(token_address, token=ALICE_TOKEN) as client:
        assert await client.list_sessions() == []
        owners.clear()  # the policy file was reloaded without the token
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.list_sessions()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert fake.callers == [("list_sessions", "alice")]


async def test_health_needs_no_credentials(token_address: str) -> None:
    async with grpc.aio.insecure_channel(token_address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=RUNNER_SERVICE))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_anonymous_caller_by_default(client: AsyncRunnerClient, fake: FakeManager) -> None:
    await client.list_sessions()
    assert fake.callers == [("list_sessions", ANONYMOUS)]


# ----------------------------------------------------------------------------------------- rate limits


def _trailing(error: grpc.aio.AioRpcError, key: str) -> list[str | bytes]:
    """The values of ``key`` in the trailing metadata of a failed call."""
    metadata: Any = error.trailing_metadata() or ()  # a grpc.aio.Metadata: iterates (key, value) pairs
    return [value for name, value in metadata if name == key]


@pytest.mark.parametrize(("retry_after_s", "header"), [(1.25, "1250"), (30.0, "30000"), (0.0001, "1"), (0.0, "1")])
async def test_rate_limited_is_resource_exhausted_with_retry_after(
    client: AsyncRunnerClient, fake: FakeManager, retry_after_s: float, header: str
) -> None:
    opened = await client.open_session("time")
    fake.error = errors.RateLimited("tool calls per minute for anonymous", retry_after_s)

    async def drain() -> None:
        async for _ in client.call_tool_stream(opened.session_id, "echo", {}):
            pass

    for rpc in (client.call_tool(opened.session_id, "echo", {}), drain(), client.open_session("time")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rpc
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (info.value.details() or "").startswith("tool calls per minute for anonymous; retry in ")
        assert _trailing(info.value, "retry-after-ms") == [header]


async def test_other_exhaustion_has_no_retry_after(client: AsyncRunnerClient, fake: FakeManager) -> None:
    fake.error = errors.QuotaExceeded("32 sessions are open")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.open_session("time")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _trailing(info.value, "retry-after-ms") == []


# ----------------------------------------------------------------------------------------- approvals


async def test_call_needing_approval_returns_pending_without_result(
    client: AsyncRunnerClient, fake: FakeManager
) -> None:
    opened = await client.open_session("time")
    result = await client.call_tool(opened.session_id, GATED, {"env": "prod", "n": 2**60})
    assert result.pending
    approval = result.approval
    assert approval is not None
    assert (approval.approval_id, approval.tool, approval.rule) == (APPROVAL_ID, GATED, "deploys-need-approval")
    assert (approval.session_id, approval.caller, approval.profile) == (opened.session_id, ANONYMOUS, "time")
    assert json.loads(approval.arguments_json) == {"env": "prod", "n": 2**60}
    assert approval.state == pb.APPROVAL_STATE_PENDING
    assert approval.HasField("expires_at")
    assert (approval.expires_at.seconds, approval.expires_at.nanos) == (1_700_000_300, 250_000_000)
    assert (approval.requested_at.seconds, approval.requested_at.nanos) == (1_700_000_000, 500_000_000)
    assert not approval.HasField("decided_at") and approval.decided_by == "" and not approval.used
    assert result.content == [] and result.structured_content is None and result.is_error is False
    assert result.text == "" and result.findings == [] and result.audit_id == "audit-pending"
    assert fake.call_args["approval_id"] == "" and not fake.call_args["on_approval"]


async def test_call_with_approval_id_reaches_the_manager(client: AsyncRunnerClient, fake: FakeManager) -> None:
    opened = await client.open_session("time")
    result = await client.call_tool(opened.session_id, GATED, None, approval_id="apr_fedcba9876543210")
    assert fake.call_args["approval_id"] == "apr_fedcba9876543210"
    assert fake.call_args["arguments"] == {}  # None sends no arguments: the approved ones run
    assert not result.pending
    assert result.approval is not None
    assert result.approval.state == pb.APPROVAL_STATE_APPROVED and result.approval.used
    assert result.approval.approval_id == "apr_fedcba9876543210"
    assert result.text.startswith("echo ") and result.audit_id == "audit-1"


async def test_stream_yields_approvals_then_result(client: AsyncRunnerClient, fake: FakeManager) -> None:
    opened = await client.open_session("time")
    items = [item async for item in client.call_tool_stream(opened.session_id, GATED, {"env": "prod"}, timeout=5)]
    assert len(items) == 3
    pending, approved, result = items
    assert isinstance(pending, pb.Approval) and isinstance(approved, pb.Approval)
    assert isinstance(result, ToolResult)
    assert pending.state == pb.APPROVAL_STATE_PENDING and pending.approval_id == APPROVAL_ID
    assert json.loads(pending.arguments_json) == {"env": "prod"}
    assert pending.expires_at.seconds == 1_700_000_300
    assert approved.state == pb.APPROVAL_STATE_APPROVED
    assert (approved.decided_by, approved.reason) == ("bob", "looks fine")
    assert approved.decided_at.seconds == 1_700_000_010
    assert not result.pending
    assert result.approval is not None and result.approval.state == pb.APPROVAL_STATE_APPROVED
    assert result.structured_content["echo"] == {"env": "prod"}
    assert fake.call_args["on_approval"] and fake.call_args["approval_id"] == ""


async def test_list_approvals(client: AsyncRunnerClient, fake: FakeManager) -> None:
    fake.approvals = [
        make_approval(),
        make_approval(ApprovalState.DENIED, approval_id="apr_2", reason="not on a Friday"),
    ]
    pending = await client.list_approvals()
    assert [(a.approval_id, a.state) for a in pending] == [(APPROVAL_ID, pb.APPROVAL_STATE_PENDING)]
    assert fake.listed_with == {"include_decided": False}
    everything = await client.list_approvals(include_decided=True)
    assert fake.listed_with == {"include_decided": True}
    assert [(a.approval_id, a.state) for a in everything] == [
        (APPROVAL_ID, pb.APPROVAL_STATE_PENDING),
        ("apr_2", pb.APPROVAL_STATE_DENIED),
    ]
    assert (everything[1].decided_by, everything[1].reason) == ("bob", "not on a Friday")
    assert json.loads(everything[0].arguments_json) == {"env": "prod", "n": 2**60}
    assert fake.callers == [("list_approvals", ANONYMOUS)] * 2


async def test_watch_approvals_streams_until_the_manager_stops(client: AsyncRunnerClient, fake: FakeManager) -> None:
    fake.approvals = [
        make_approval(approval_id="apr_1"),
        make_approval(approval_id="apr_2", tool="drop_table"),
        make_approval(ApprovalState.EXPIRED, approval_id="apr_1", decided_by="", reason="no decision"),
    ]
    seen = [a async for a in client.watch_approvals(timeout=5)]
    assert [(a.approval_id, a.tool, a.state) for a in seen] == [
        ("apr_1", GATED, pb.APPROVAL_STATE_PENDING),
        ("apr_2", "drop_table", pb.APPROVAL_STATE_PENDING),
        ("apr_1", GATED, pb.APPROVAL_STATE_EXPIRED),
    ]
    assert seen[2].reason == "no decision" and seen[2].HasField("decided_at")
    assert fake.callers == [("watch_approvals", ANONYMOUS)]


async def test_watch_approvals_empty(client: AsyncRunnerClient) -> None:
    assert [a async for a in client.watch_approvals(timeout=5)] == []


async def test_decide_approval_round_trip(client: AsyncRunnerClient, fake: FakeManager) -> None:
    fake.approvals = [make_approval()]
    approved = await client.decide_approval(APPROVAL_ID, approve=True, reason="ok")
    assert (approved.approval_id, approved.state) == (APPROVAL_ID, pb.APPROVAL_STATE_APPROVED)
    assert (approved.decided_by, approved.reason, approved.decided_at.seconds) == (ANONYMOUS, "ok", 1_700_000_060)
    denied = await client.decide_approval(APPROVAL_ID, approve=False, reason="too risky")
    assert denied.state == pb.APPROVAL_STATE_DENIED and denied.reason == "too risky"
    assert fake.decided == [(APPROVAL_ID, True, "ok"), (APPROVAL_ID, False, "too risky")]


async def test_decide_approval_errors(client: AsyncRunnerClient, fake: FakeManager) -> None:
    fake.approvals = [make_approval(caller=ANONYMOUS)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.decide_approval(APPROVAL_ID, approve=True)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "own call" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.decide_approval("apr_unknown", approve=True)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    calls = len(fake.callers)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.decide_approval("", approve=True)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(fake.callers) == calls  # refused before the manager


async def test_approval_rpcs_permission_denied(client: AsyncRunnerClient, fake: FakeManager) -> None:
    fake.approvals = [make_approval()]
    fake.error = errors.PermissionDenied("anonymous is not an approver (policy rule: approvers)")

    async def watch() -> None:
        async for _ in client.watch_approvals(timeout=5):
            pass

    for rpc in (client.list_approvals(), watch(), client.decide_approval(APPROVAL_ID, approve=True)):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rpc
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert info.value.details() == "anonymous is not an approver (policy rule: approvers)"
    assert [method for method, _ in fake.callers] == ["list_approvals", "watch_approvals", "decide_approval"]


# ----------------------------------------------------------------------------------------- findings

FINDING_METHODS = ("open", "list_tools", "list_resources", "read_resource", "list_prompts", "get_prompt")


def _findings_for(method: str, n: int) -> tuple[Finding, ...]:
    return tuple(
        Finding(kind=f"{method}-kind", count=n + i, action="flagged", where=f"{method}[{i}]") for i in range(n)
    )


def _rows(findings: Any) -> list[tuple[str, int, str, str]]:
    return [(f.kind, f.count, f.action, f.where) for f in findings]


async def test_findings_reach_every_response(address: str, fake: FakeManager) -> None:
    fake.findings = {method: _findings_for(method, n + 1) for n, method in enumerate(FINDING_METHODS)}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        opened = await stub.OpenSession(pb.OpenSessionRequest(profile="time"))
        sid = opened.session_id
        responses = {
            "open": opened,
            "list_tools": await stub.ListTools(pb.ListToolsRequest(session_id=sid)),
            "list_resources": await stub.ListResources(pb.ListResourcesRequest(session_id=sid)),
            "read_resource": await stub.ReadResource(pb.ReadResourceRequest(session_id=sid, uri="file:///r")),
            "list_prompts": await stub.ListPrompts(pb.ListPromptsRequest(session_id=sid)),
            "get_prompt": await stub.GetPrompt(
                pb.GetPromptRequest(session_id=sid, name="explain", arguments={"topic": "t"})
            ),
        }
    for method, response in responses.items():
        assert _rows(response.findings) == _rows(fake.findings[method]), method
    # the values still arrive next to their findings
    assert [t.name for t in responses["open"].tools] == ["echo", "slow"]
    assert [t.name for t in responses["list_tools"].tools] == ["echo", "slow"]
    assert responses["list_resources"].resources[0].name == "readme"
    assert responses["read_resource"].contents[0].text == "# hi"
    assert responses["list_prompts"].prompts[0].name == "explain"
    assert responses["get_prompt"].messages[0].content.text == "Explain t"


async def test_no_findings_means_empty_lists(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        opened = await stub.OpenSession(pb.OpenSessionRequest(profile="time"))
        tools = await stub.ListTools(pb.ListToolsRequest(session_id=opened.session_id))
    assert list(opened.findings) == [] and list(tools.findings) == []


# ----------------------------------------------------------------------------------------- listen safety


async def test_start_server_refuses_anonymous_beyond_loopback(fake: FakeManager) -> None:
    with pytest.raises(errors.InvalidArgument, match="without authentication"):
        await start_server(_typed(fake), "0.0.0.0:0", authenticator=anonymous())


async def test_start_server_beyond_loopback_with_tokens(fake: FakeManager, caplog: pytest.LogCaptureFixture) -> None:
    authenticator = Authenticator(AuthConfig(tokens=True), {hash_token(ALICE_TOKEN): "alice"}.get)
    with caplog.at_level(logging.WARNING, logger="runner.api.auth"):
        async with serve(fake, authenticator, listen="0.0.0.0:0") as port, AsyncRunnerClient(
            f"127.0.0.1:{port}", token=ALICE_TOKEN
        ) as client:
            assert await client.list_sessions() == []
    assert "clear text" in caplog.text
    assert fake.callers == [("list_sessions", "alice")]


async def test_start_server_refuses_mtls_without_client_ca(fake: FakeManager) -> None:
    authenticator = Authenticator(AuthConfig(mtls=True), lambda token_hash: None)
    with pytest.raises(errors.InvalidArgument, match="client_ca"):
        await start_server(_typed(fake), "127.0.0.1:0", authenticator=authenticator)


async def test_a_watch_ends_when_its_token_is_revoked(
    token_address: str, fake: FakeManager, owners: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    revoked = asyncio.Event()

    async def watch_approvals(*, caller: str) -> AsyncIterator[Approval]:
        yield make_approval(approval_id="apr_1")
        await revoked.wait()
        yield make_approval(approval_id="apr_2")  # must not reach a caller whose token is gone

    monkeypatch.setattr(fake, "watch_approvals", watch_approvals)
    seen: list[str] = []
    async with AsyncRunnerClient(token_address, token=ALICE_TOKEN) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for approval in client.watch_approvals(timeout=5):
                seen.append(approval.approval_id)
                owners.clear()  # the policy file was reloaded without the token
                revoked.set()
    assert seen == ["apr_1"]
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "not known" in (info.value.details() or "")
