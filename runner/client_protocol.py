"""The protocol methods of both clients beyond tools, resources and prompts, side by side, async and sync.

Resource templates, completion, the server's log level, resource subscriptions, ping; ``watch_session``
(what a server sends between calls: ``SessionEvent`` messages, and ``InputRequest`` for its requests to the
caller); ``answer_input`` (the answer to an ``InputRequest``) and ``call_tool_answering`` (a call whose every
request to the caller ``on_input`` answers); ``list_profiles`` and ``get_session_logs``. ``runner.client`` builds
its clients on these classes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.client_messages import (
    InputError,
    InputRequest,
    ToolResult,
    answer_request,
    call_request,
    input_request,
    tool_result,
)

Answer = Mapping[str, Any] | InputError
"""The result's JSON (CreateMessageResult, ElicitResult or ListRootsResult), or a refusal."""


def complete_request(
    session_id: str,
    prompt: str | None,
    resource_template: str | None,
    argument: str,
    value: str,
    context: Mapping[str, str] | None,
) -> pb.CompleteRequest:
    if (prompt is None) == (resource_template is None):
        raise ValueError("complete: give exactly one of prompt= and resource_template=")
    request = pb.CompleteRequest(
        session_id=session_id, argument_name=argument, argument_value=value, context_arguments=dict(context or {})
    )
    if prompt is not None:
        request.prompt = prompt
    else:
        request.resource_template = resource_template or ""
    return request


def watch_item(event: pb.SessionEvent) -> pb.SessionEvent | InputRequest:
    return input_request(event.input_required) if event.WhichOneof("event") == "input_required" else event


def answered(response: pb.AnswerInputResponse) -> ToolResult | None:
    return tool_result(response.call) if response.HasField("call") else None


class AsyncProtocolMethods:
    _stub: Any
    _metadata: tuple[tuple[str, str], ...]

    async def list_profiles(self, name: str = "", *, timeout: float | None = None) -> list[pb.ProfileInfo]:
        """The profiles this caller may open, by name (tools: when one of its sessions showed them); ``name``: one."""
        request = pb.ListProfilesRequest(name=name)
        response = await self._stub.ListProfiles(request, timeout=timeout, metadata=self._metadata)
        return list(response.profiles)

    async def get_session_logs(self, session_id: str, *, timeout: float | None = None) -> pb.GetSessionLogsResponse:
        """The session and its sandbox's stderr tail (sanitized); its events are in ``query_audit``."""
        request = pb.GetSessionLogsRequest(session_id=session_id)
        response: pb.GetSessionLogsResponse = await self._stub.GetSessionLogs(
            request, timeout=timeout, metadata=self._metadata
        )
        return response

    async def list_resource_templates(
        self, session_id: str, *, timeout: float | None = None
    ) -> list[pb.ResourceTemplate]:
        request = pb.ListResourceTemplatesRequest(session_id=session_id)
        response = await self._stub.ListResourceTemplates(request, timeout=timeout, metadata=self._metadata)
        return list(response.resource_templates)

    async def complete(
        self,
        session_id: str,
        *,
        argument: str,
        value: str = "",
        prompt: str | None = None,
        resource_template: str | None = None,
        context: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> pb.CompleteResponse:
        """Completions of ``argument`` (typed so far: ``value``) of a prompt or a resource template."""
        request = complete_request(session_id, prompt, resource_template, argument, value, context)
        response: pb.CompleteResponse = await self._stub.Complete(request, timeout=timeout, metadata=self._metadata)
        return response

    async def set_logging_level(self, session_id: str, level: str, *, timeout: float | None = None) -> None:
        request = pb.SetLoggingLevelRequest(session_id=session_id, level=level)
        await self._stub.SetLoggingLevel(request, timeout=timeout, metadata=self._metadata)

    async def subscribe(self, session_id: str, uri: str, *, timeout: float | None = None) -> None:
        request = pb.SubscribeRequest(session_id=session_id, uri=uri)
        await self._stub.Subscribe(request, timeout=timeout, metadata=self._metadata)

    async def unsubscribe(self, session_id: str, uri: str, *, timeout: float | None = None) -> None:
        request = pb.UnsubscribeRequest(session_id=session_id, uri=uri)
        await self._stub.Unsubscribe(request, timeout=timeout, metadata=self._metadata)

    async def ping(self, session_id: str, *, timeout: float | None = None) -> None:
        await self._stub.Ping(pb.PingRequest(session_id=session_id), timeout=timeout, metadata=self._metadata)

    async def watch_session(
        self, session_id: str, *, timeout: float | None = None
    ) -> AsyncIterator[pb.SessionEvent | InputRequest]:
        """Log messages, resource updates and list changes (``SessionEvent``), and the server's requests to the
        caller outside any call (``InputRequest``), until the session ends."""
        call = self._stub.WatchSession(
            pb.WatchSessionRequest(session_id=session_id), timeout=timeout, metadata=self._metadata
        )
        try:
            async for event in call:
                yield watch_item(event)
        finally:
            call.cancel()

    async def answer_input(
        self, session_id: str, input_id: str, answer: Answer, *, timeout: float | None = None
    ) -> ToolResult | None:
        """Answer an ``InputRequest``; for one of ``call_tool``'s, the call's next result (maybe another request)."""
        request = answer_request(session_id, input_id, answer)
        return answered(await self._stub.AnswerInput(request, timeout=timeout, metadata=self._metadata))

    async def call_tool_answering(
        self,
        session_id: str,
        tool: str,
        arguments: Mapping[str, Any] | None,
        on_input: Callable[[InputRequest], Awaitable[Answer]],
        *,
        timeout_ms: int = 0,
        timeout: float | None = None,
    ) -> ToolResult:
        """Call a tool, answering each of the server's requests with ``on_input``; ``timeout`` is per RPC."""
        request = call_request(session_id, tool, arguments, timeout_ms, "", True)
        result = tool_result(await self._stub.CallTool(request, timeout=timeout, metadata=self._metadata))
        while result.input_request is not None:
            answer = await on_input(result.input_request)
            answer_call = answer_request(session_id, result.input_request.input_id, answer)
            response = await self._stub.AnswerInput(answer_call, timeout=timeout, metadata=self._metadata)
            result = tool_result(response.call)
        return result


class ProtocolMethods:
    _stub: Any
    _metadata: tuple[tuple[str, str], ...]

    def list_profiles(self, name: str = "", *, timeout: float | None = None) -> list[pb.ProfileInfo]:
        """The profiles this caller may open, by name (tools: when one of its sessions showed them); ``name``: one."""
        request = pb.ListProfilesRequest(name=name)
        response = self._stub.ListProfiles(request, timeout=timeout, metadata=self._metadata)
        return list(response.profiles)

    def get_session_logs(self, session_id: str, *, timeout: float | None = None) -> pb.GetSessionLogsResponse:
        """The session and its sandbox's stderr tail (sanitized); its events are in ``query_audit``."""
        request = pb.GetSessionLogsRequest(session_id=session_id)
        response: pb.GetSessionLogsResponse = self._stub.GetSessionLogs(
            request, timeout=timeout, metadata=self._metadata
        )
        return response

    def list_resource_templates(self, session_id: str, *, timeout: float | None = None) -> list[pb.ResourceTemplate]:
        request = pb.ListResourceTemplatesRequest(session_id=session_id)
        response = self._stub.ListResourceTemplates(request, timeout=timeout, metadata=self._metadata)
        return list(response.resource_templates)

    def complete(
        self,
        session_id: str,
        *,
        argument: str,
        value: str = "",
        prompt: str | None = None,
        resource_template: str | None = None,
        context: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> pb.CompleteResponse:
        """Completions of ``argument`` (typed so far: ``value``) of a prompt or a resource template."""
        request = complete_request(session_id, prompt, resource_template, argument, value, context)
        response: pb.CompleteResponse = self._stub.Complete(request, timeout=timeout, metadata=self._metadata)
        return response

    def set_logging_level(self, session_id: str, level: str, *, timeout: float | None = None) -> None:
        request = pb.SetLoggingLevelRequest(session_id=session_id, level=level)
        self._stub.SetLoggingLevel(request, timeout=timeout, metadata=self._metadata)

    def subscribe(self, session_id: str, uri: str, *, timeout: float | None = None) -> None:
        self._stub.Subscribe(pb.SubscribeRequest(session_id=session_id, uri=uri), timeout=timeout,
                             metadata=self._metadata)  # fmt: skip

    def unsubscribe(self, session_id: str, uri: str, *, timeout: float | None = None) -> None:
        self._stub.Unsubscribe(pb.UnsubscribeRequest(session_id=session_id, uri=uri), timeout=timeout,
                               metadata=self._metadata)  # fmt: skip

    def ping(self, session_id: str, *, timeout: float | None = None) -> None:
        self._stub.Ping(pb.PingRequest(session_id=session_id), timeout=timeout, metadata=self._metadata)

    def watch_session(
        self, session_id: str, *, timeout: float | None = None
    ) -> Iterator[pb.SessionEvent | InputRequest]:
        """Log messages, resource updates and list changes, and the server's requests outside any call."""
        call = self._stub.WatchSession(
            pb.WatchSessionRequest(session_id=session_id), timeout=timeout, metadata=self._metadata
        )
        try:
            for event in call:
                yield watch_item(event)
        finally:
            call.cancel()

    def answer_input(
        self, session_id: str, input_id: str, answer: Answer, *, timeout: float | None = None
    ) -> ToolResult | None:
        """Answer an ``InputRequest``; for one of ``call_tool``'s, the call's next result (maybe another request)."""
        request = answer_request(session_id, input_id, answer)
        return answered(self._stub.AnswerInput(request, timeout=timeout, metadata=self._metadata))

    def call_tool_answering(
        self,
        session_id: str,
        tool: str,
        arguments: Mapping[str, Any] | None,
        on_input: Callable[[InputRequest], Answer],
        *,
        timeout_ms: int = 0,
        timeout: float | None = None,
    ) -> ToolResult:
        """Call a tool, answering each of the server's requests with ``on_input``; ``timeout`` is per RPC."""
        request = call_request(session_id, tool, arguments, timeout_ms, "", True)
        result = tool_result(self._stub.CallTool(request, timeout=timeout, metadata=self._metadata))
        while result.input_request is not None:
            answer_call = answer_request(session_id, result.input_request.input_id, on_input(result.input_request))
            result = tool_result(self._stub.AnswerInput(answer_call, timeout=timeout, metadata=self._metadata).call)
        return result
