"""Python client for the ``mcp_runner.v1.Runner`` gRPC API, async (``AsyncRunnerClient``) and sync (``RunnerClient``).

Deliberately thin: requests are built from plain Python values, replies are the
protobuf messages themselves (``runner.api._proto.mcp_runner.v1.runner_pb2``),
except for the few places where a small result object saves every caller the
same work (open → ``OpenedSession``; call → ``ToolResult`` with parsed
structured content; stream → ``Progress`` events then a ``ToolResult``).
Both clients inherit the rest: approvals and the audit log (``runner.client_audit``: records, export text and
replay verdicts stream as they come), and the protocol's other requests (``runner.client_protocol``: templates,
completion, logging, subscriptions, ping, watching a session, answering a server's requests, profiles, logs).

Errors are not wrapped: every method raises ``grpc.RpcError`` (``grpc.aio.AioRpcError``
for the async client) whose ``.code()`` is the status the runner chose —
INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, RESOURCE_EXHAUSTED,
DEADLINE_EXCEEDED, FAILED_PRECONDITION, UNAVAILABLE, UNAUTHENTICATED — and
``.details()`` says why.

``timeout`` arguments are gRPC deadlines in seconds; ``timeout_ms`` on tool calls
is the runner's own per-call limit (the shorter of the two wins on the server).

Credentials: ``token=`` sends ``authorization: Bearer <token>``; ``credentials=``
takes ``tls_credentials(ca, cert, key)`` for TLS or mutual TLS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from types import TracebackType
from typing import Any

import grpc

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api._proto.mcp_runner.v1 import runner_pb2_grpc
from runner.api.auth import channel_credentials as tls_credentials
from runner.client_audit import AsyncAuditMethods, AuditMethods
from runner.client_channel import ADDRESS_ENV, DEFAULT_ADDRESS, async_channel, blocking_channel, service_address
from runner.client_messages import (
    InputError,
    InputRequest,
    Metadata,
    OpenedSession,
    Progress,
    ToolResult,
    call_metadata,
    call_request,
    open_request,
    opened_session,
    stream_item,
    tool_result,
)
from runner.client_protocol import AsyncProtocolMethods, ProtocolMethods

__all__ = [
    "ADDRESS_ENV",
    "DEFAULT_ADDRESS",
    "AsyncRunnerClient",
    "InputError",
    "InputRequest",
    "OpenedSession",
    "Progress",
    "RunnerClient",
    "ToolResult",
    "service_address",
    "tls_credentials",
]


class AsyncRunnerClient(AsyncProtocolMethods, AsyncAuditMethods):
    """asyncio client. Use ``async with AsyncRunnerClient(addr) as client:`` or call ``close()``.

    ``limits`` keys are the ``Limits`` message fields (memory_bytes, cpus, pids,
    call_timeout_ms, idle_timeout_ms, max_lifetime_ms); ``metadata`` is sent with
    every call, and so is ``token`` as a bearer token.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Metadata | None = None,
        token: str | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._channel = async_channel(address, credentials) if channel is None else channel
        self._stub = runner_pb2_grpc.RunnerStub(self._channel)
        self._metadata = call_metadata(metadata, token)

    async def __aenter__(self) -> AsyncRunnerClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def open_session(
        self,
        profile: str,
        *,
        labels: Mapping[str, str] | None = None,
        limits: Mapping[str, float] | None = None,
        timeout: float | None = None,
    ) -> OpenedSession:
        response = await self._stub.OpenSession(
            open_request(profile, labels, limits), timeout=timeout, metadata=self._metadata
        )
        return opened_session(response)

    async def close_session(self, session_id: str, *, timeout: float | None = None) -> pb.Session:
        """Close a session; the returned ``Session`` carries the final usage."""
        request = pb.CloseSessionRequest(session_id=session_id)
        response = await self._stub.CloseSession(request, timeout=timeout, metadata=self._metadata)
        session: pb.Session = response.session
        return session

    async def get_session(self, session_id: str, *, timeout: float | None = None) -> pb.Session:
        request = pb.GetSessionRequest(session_id=session_id)
        response = await self._stub.GetSession(request, timeout=timeout, metadata=self._metadata)
        session: pb.Session = response.session
        return session

    async def list_sessions(self, *, timeout: float | None = None) -> list[pb.Session]:
        request = pb.ListSessionsRequest()
        response = await self._stub.ListSessions(request, timeout=timeout, metadata=self._metadata)
        return list(response.sessions)

    async def list_tools(self, session_id: str, *, timeout: float | None = None) -> list[pb.Tool]:
        request = pb.ListToolsRequest(session_id=session_id)
        response = await self._stub.ListTools(request, timeout=timeout, metadata=self._metadata)
        return list(response.tools)

    async def call_tool(
        self,
        session_id: str,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout_ms: int = 0,
        timeout: float | None = None,
        approval_id: str = "",
        answers_input: bool = False,
    ) -> ToolResult:
        """Call a tool; with ``approval_id`` run the approved call (``arguments`` None sends the approved ones).

        With ``answers_input`` a server's request to the caller comes back as ``result.input_request`` while the
        call stays pending: ``answer_input`` returns its next result (or see ``call_tool_answering``).
        """
        request = call_request(session_id, tool, arguments, timeout_ms, approval_id, answers_input)
        response = await self._stub.CallTool(request, timeout=timeout, metadata=self._metadata)
        return tool_result(response)

    async def call_tool_stream(
        self,
        session_id: str,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout_ms: int = 0,
        timeout: float | None = None,
        answers_input: bool = False,
    ) -> AsyncIterator[Progress | pb.Approval | InputRequest | ToolResult]:
        """Yield ``Progress`` events as the server reports them, then one ``ToolResult``.

        A tool that needs approval first yields its PENDING ``Approval``, then the decided one, while the
        stream waits (within ``timeout``) for an approver. With ``answers_input`` a server's request to the caller
        is yielded as an ``InputRequest``: answer it with ``answer_input`` and the stream goes on.
        """
        request = call_request(session_id, tool, arguments, timeout_ms, "", answers_input)
        call = self._stub.CallToolStream(request, timeout=timeout, metadata=self._metadata)
        try:
            async for message in call:
                yield stream_item(message)
        finally:
            call.cancel()

    async def list_resources(self, session_id: str, *, timeout: float | None = None) -> list[pb.Resource]:
        request = pb.ListResourcesRequest(session_id=session_id)
        response = await self._stub.ListResources(request, timeout=timeout, metadata=self._metadata)
        return list(response.resources)

    async def read_resource(
        self, session_id: str, uri: str, *, timeout: float | None = None
    ) -> list[pb.ResourceContents]:
        request = pb.ReadResourceRequest(session_id=session_id, uri=uri)
        response = await self._stub.ReadResource(request, timeout=timeout, metadata=self._metadata)
        return list(response.contents)

    async def list_prompts(self, session_id: str, *, timeout: float | None = None) -> list[pb.Prompt]:
        request = pb.ListPromptsRequest(session_id=session_id)
        response = await self._stub.ListPrompts(request, timeout=timeout, metadata=self._metadata)
        return list(response.prompts)

    async def get_prompt(
        self,
        session_id: str,
        name: str,
        arguments: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,
    ) -> pb.GetPromptResponse:
        request = pb.GetPromptRequest(session_id=session_id, name=name, arguments=dict(arguments or {}))
        response: pb.GetPromptResponse = await self._stub.GetPrompt(
            request, timeout=timeout, metadata=self._metadata
        )
        return response

    @asynccontextmanager
    async def session(
        self,
        profile: str,
        *,
        labels: Mapping[str, str] | None = None,
        limits: Mapping[str, float] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[OpenedSession]:
        """Open a session for the block and always close it (a close error never hides the block's)."""
        opened = await self.open_session(profile, labels=labels, limits=limits, timeout=timeout)
        try:
            yield opened
        except BaseException:
            with suppress(grpc.RpcError):
                await self.close_session(opened.session_id)
            raise
        await self.close_session(opened.session_id)


class RunnerClient(ProtocolMethods, AuditMethods):
    """Blocking client with the same methods as ``AsyncRunnerClient``."""

    def __init__(
        self,
        address: str | None = None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Metadata | None = None,
        token: str | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._channel = blocking_channel(address, credentials) if channel is None else channel
        self._stub = runner_pb2_grpc.RunnerStub(self._channel)
        self._metadata = call_metadata(metadata, token)

    def __enter__(self) -> RunnerClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def open_session(
        self,
        profile: str,
        *,
        labels: Mapping[str, str] | None = None,
        limits: Mapping[str, float] | None = None,
        timeout: float | None = None,
    ) -> OpenedSession:
        request = open_request(profile, labels, limits)
        return opened_session(self._stub.OpenSession(request, timeout=timeout, metadata=self._metadata))

    def close_session(self, session_id: str, *, timeout: float | None = None) -> pb.Session:
        request = pb.CloseSessionRequest(session_id=session_id)
        session: pb.Session = self._stub.CloseSession(request, timeout=timeout, metadata=self._metadata).session
        return session

    def get_session(self, session_id: str, *, timeout: float | None = None) -> pb.Session:
        request = pb.GetSessionRequest(session_id=session_id)
        session: pb.Session = self._stub.GetSession(request, timeout=timeout, metadata=self._metadata).session
        return session

    def list_sessions(self, *, timeout: float | None = None) -> list[pb.Session]:
        request = pb.ListSessionsRequest()
        return list(self._stub.ListSessions(request, timeout=timeout, metadata=self._metadata).sessions)

    def list_tools(self, session_id: str, *, timeout: float | None = None) -> list[pb.Tool]:
        request = pb.ListToolsRequest(session_id=session_id)
        return list(self._stub.ListTools(request, timeout=timeout, metadata=self._metadata).tools)

    def call_tool(
        self,
        session_id: str,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout_ms: int = 0,
        timeout: float | None = None,
        approval_id: str = "",
        answers_input: bool = False,
    ) -> ToolResult:
        """Call a tool; with ``approval_id`` run the approved call; ``answers_input`` as on the async client."""
        request = call_request(session_id, tool, arguments, timeout_ms, approval_id, answers_input)
        return tool_result(self._stub.CallTool(request, timeout=timeout, metadata=self._metadata))

    def call_tool_stream(
        self,
        session_id: str,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout_ms: int = 0,
        timeout: float | None = None,
        answers_input: bool = False,
    ) -> Iterator[Progress | pb.Approval | InputRequest | ToolResult]:
        """Yield ``Progress`` events, then one ``ToolResult``; a pending and a decided ``Approval`` first if needed,
        and with ``answers_input`` each ``InputRequest`` (answer it with ``answer_input``)."""
        request = call_request(session_id, tool, arguments, timeout_ms, "", answers_input)
        call = self._stub.CallToolStream(request, timeout=timeout, metadata=self._metadata)
        try:
            for message in call:
                yield stream_item(message)
        finally:
            call.cancel()

    def list_resources(self, session_id: str, *, timeout: float | None = None) -> list[pb.Resource]:
        request = pb.ListResourcesRequest(session_id=session_id)
        return list(self._stub.ListResources(request, timeout=timeout, metadata=self._metadata).resources)

    def read_resource(
        self, session_id: str, uri: str, *, timeout: float | None = None
    ) -> list[pb.ResourceContents]:
        request = pb.ReadResourceRequest(session_id=session_id, uri=uri)
        return list(self._stub.ReadResource(request, timeout=timeout, metadata=self._metadata).contents)

    def list_prompts(self, session_id: str, *, timeout: float | None = None) -> list[pb.Prompt]:
        request = pb.ListPromptsRequest(session_id=session_id)
        return list(self._stub.ListPrompts(request, timeout=timeout, metadata=self._metadata).prompts)

    def get_prompt(
        self,
        session_id: str,
        name: str,
        arguments: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,
    ) -> pb.GetPromptResponse:
        request = pb.GetPromptRequest(session_id=session_id, name=name, arguments=dict(arguments or {}))
        response: pb.GetPromptResponse = self._stub.GetPrompt(request, timeout=timeout, metadata=self._metadata)
        return response

    @contextmanager
    def session(
        self,
        profile: str,
        *,
        labels: Mapping[str, str] | None = None,
        limits: Mapping[str, float] | None = None,
        timeout: float | None = None,
    ) -> Iterator[OpenedSession]:
        """Open a session for the block and always close it (a close error never hides the block's)."""
        opened = self.open_session(profile, labels=labels, limits=limits, timeout=timeout)
        try:
            yield opened
        except BaseException:
            with suppress(grpc.RpcError):
                self.close_session(opened.session_id)
            raise
        self.close_session(opened.session_id)
