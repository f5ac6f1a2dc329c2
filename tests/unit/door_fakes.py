"""A SessionManager-like fake for the door's unit tests: what it was asked, and answers a test can shape."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

import mcp_types as types

from runner.approvals import Approval, ApprovalState
from runner.errors import ProfileNotFound, RateLimited, RunnerError, SessionNotFound
from runner.sessions.models import (
    ApprovalCallback,
    Exchange,
    InputHandler,
    NotificationHandler,
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

TOOL = types.Tool(
    name="get_current_time", input_schema={"type": "object", "properties": {"timezone": {"type": "string"}}}
)


@dataclass
class Opened:
    session_id: str
    profile: str
    caller: str
    door: str
    protocol: str
    state: SessionState = SessionState.READY


@dataclass
class FakeManager:
    opens: list[Opened] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    open_error: RunnerError | None = None
    call_error: RunnerError | None = None
    needs_approval: bool = False
    call_gate: asyncio.Event | None = None
    """Set: a call waits for it (a test can leave mid-call)."""
    cancelled: list[str] = field(default_factory=list)
    input_required: types.InputRequiredResult | None = None
    listeners: dict[str, tuple[NotificationHandler | None, InputHandler | None]] = field(default_factory=dict)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    refusal_limit: int | None = None
    """Set: refusals past this many are RateLimited, as the manager's refusal rate does."""

    async def open(
        self, profile: str, *, caller: str, door: str = "grpc", protocol: str = "2025-11-25"
    ) -> OpenedSession:
        if self.open_error is not None:
            raise self.open_error
        opened = Opened(f"s{len(self.opens) + 1}", profile, caller, door, protocol)
        self.opens.append(opened)
        info = self._info(opened)
        server = ServerInfo(name="mcp-time", version="1.0", protocol_version=protocol, instructions="tell the time")
        capabilities = types.ServerCapabilities(tools=types.ToolsCapability(list_changed=True),
                                                experimental={"x": {}})
        return OpenedSession(info=info, server=server, tools=(TOOL,), protocol=protocol, capabilities=capabilities)

    def _info(self, opened: Opened) -> SessionInfo:
        return SessionInfo(session_id=opened.session_id, profile=opened.profile, caller=opened.caller,
                           state=opened.state, created_at=time.time(), age_seconds=0.0, usage=Usage())

    def _find(self, session_id: str, caller: str) -> Opened:
        for opened in self.opens:
            if opened.session_id == session_id and opened.caller == caller:
                return opened
        raise SessionNotFound(f"no session {session_id}")

    async def close(self, session_id: str, *, caller: str) -> SessionInfo:
        opened = self._find(session_id, caller)
        opened.state = SessionState.CLOSED
        self.closed.append(session_id)
        return self._info(opened)

    async def refuse(self, error: RunnerError, *, caller: str, method: str, door: str, profile: str = ""
                     ) -> NoReturn:
        if self.refusal_limit is not None and len(self.refusals) >= self.refusal_limit:
            raise RateLimited(f"caller {caller} exceeded its refusal rate", 1.5)
        self.refusals.append({"error": error, "caller": caller, "method": method, "door": door, "profile": profile})
        raise error

    def catalog(self) -> FakeCatalog:
        return FakeCatalog()

    def get(self, session_id: str, *, caller: str) -> SessionInfo:
        return self._info(self._find(session_id, caller))

    def listen(self, session_id: str, *, caller: str, on_notification: NotificationHandler | None = None,
               on_input: InputHandler | None = None) -> None:
        self.listeners[session_id] = (on_notification, on_input)

    async def list_tools(self, session_id: str, *, caller: str, timeout: float | None = None
                         ) -> Sanitized[list[types.Tool]]:
        self._find(session_id, caller)
        return Sanitized([TOOL])

    async def call_tool(
        self, session_id: str, tool: str, arguments: dict[str, Any], *, caller: str, approval_id: str = "",
        timeout: float | None = None, on_progress: ProgressCallback | None = None,
        on_approval: ApprovalCallback | None = None, exchange: Exchange | None = None,
    ) -> ToolCallOutcome:
        self._find(session_id, caller)
        self.calls.append({"session": session_id, "tool": tool, "arguments": arguments, "caller": caller,
                           "approval_id": approval_id, "exchange": exchange})
        if self.call_error is not None:
            raise self.call_error
        if self.needs_approval and not approval_id:
            pending = _approval(session_id, caller, tool, arguments)
            if on_approval is None:
                return ToolCallOutcome(result=None, approval=pending)
            await on_approval(pending)
        if self.input_required is not None and (exchange is None or exchange.request_state is None):
            return ToolCallOutcome(result=None, input_required=self.input_required)
        if on_progress is not None:
            await on_progress(ProgressEvent(progress=1, total=2))
        if self.call_gate is not None:
            try:
                await self.call_gate.wait()
            except asyncio.CancelledError:
                self.cancelled.append(tool)
                raise
        text = f"{tool} {arguments} state={exchange.request_state if exchange else None}"
        return ToolCallOutcome(result=types.CallToolResult(content=[types.TextContent(text=text)]))

    async def list_resources(self, session_id: str, *, caller: str, timeout: float | None = None
                             ) -> Sanitized[list[types.Resource]]:
        return Sanitized([])

    async def list_resource_templates(self, session_id: str, *, caller: str, timeout: float | None = None
                                      ) -> Sanitized[list[types.ResourceTemplate]]:
        return Sanitized([])

    async def read_resource_result(self, session_id: str, uri: str, *, caller: str, timeout: float | None = None,
                                   exchange: Exchange | None = None
                                   ) -> Sanitized[types.ReadResourceResult | types.InputRequiredResult]:
        return Sanitized(types.ReadResourceResult(contents=[types.TextResourceContents(uri=uri, text="hello")]))

    async def list_prompts(self, session_id: str, *, caller: str, timeout: float | None = None
                           ) -> Sanitized[list[types.Prompt]]:
        return Sanitized([])

    async def get_prompt(self, session_id: str, name: str, arguments: dict[str, str], *, caller: str,
                         timeout: float | None = None, exchange: Exchange
                         ) -> Sanitized[types.GetPromptResult | types.InputRequiredResult]:
        return Sanitized(types.GetPromptResult(messages=[]))

    async def complete(self, session_id: str, params: types.CompleteRequestParams, *, caller: str,
                       timeout: float | None = None) -> types.CompleteResult:
        return types.CompleteResult(completion=types.Completion(values=["a"]))

    async def set_logging_level(self, session_id: str, level: str, *, caller: str) -> None:
        return None

    async def subscribe(self, session_id: str, uri: str, *, caller: str) -> None:
        return None

    async def unsubscribe(self, session_id: str, uri: str, *, caller: str) -> None:
        return None


def _approval(session_id: str, caller: str, tool: str, arguments: dict[str, Any]) -> Approval:
    now = time.time()
    return Approval(approval_id="apr_0123456789abcdef", session_id=session_id, caller=caller, profile="time",
                    tool=tool, arguments=dict(arguments), rule="tools: approval", state=ApprovalState.PENDING,
                    requested_at=now, expires_at=now + 60)


class FakeCatalog:
    """The manager's catalog as the door uses it: an unknown profile's refusal names the caller's profiles."""

    def unknown_profile(self, name: str, caller: str) -> ProfileNotFound:
        return ProfileNotFound(f"no profile named {name!r} (profiles you may open: time)")
