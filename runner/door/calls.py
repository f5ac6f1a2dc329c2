"""What the door needs of the SessionManager: the operations an MCP host can ask for, each guarded and audited there.

A Protocol, so unit tests drive the door with a fake and the real ``SessionManager`` satisfies it structurally.
"""

from __future__ import annotations

import builtins
from typing import Any, NoReturn, Protocol

import mcp_types

from runner.approvals import Approval
from runner.errors import RunnerError
from runner.sessions.catalog import Catalog
from runner.sessions.models import (
    DEFAULT_PROTOCOL,
    ApprovalCallback,
    Exchange,
    InputHandler,
    NotificationHandler,
    OpenedSession,
    ProgressCallback,
    Sanitized,
    SessionInfo,
    ToolCallOutcome,
)

DOOR = "mcp-http"
"""How the door's sessions are named in their audit records."""


class DoorManager(Protocol):
    async def open(
        self, profile: str, *, caller: str, door: str = "grpc", protocol: str = DEFAULT_PROTOCOL
    ) -> OpenedSession: ...

    async def close(self, session_id: str, *, caller: str) -> SessionInfo: ...

    async def refuse(
        self, error: RunnerError, *, caller: str, method: str, door: str, profile: str = ""
    ) -> NoReturn: ...

    def get(self, session_id: str, *, caller: str) -> SessionInfo: ...

    def catalog(self) -> Catalog: ...

    def listen(
        self,
        session_id: str,
        *,
        caller: str,
        on_notification: NotificationHandler | None = None,
        on_input: InputHandler | None = None,
    ) -> None: ...

    async def list_tools(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[builtins.list[mcp_types.Tool]]: ...

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
        exchange: Exchange | None = None,
    ) -> ToolCallOutcome: ...

    async def list_resources(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[builtins.list[mcp_types.Resource]]: ...

    async def list_resource_templates(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[builtins.list[mcp_types.ResourceTemplate]]: ...

    async def read_resource_result(
        self, session_id: str, uri: str, *, caller: str, timeout: float | None = None, exchange: Exchange | None = None
    ) -> Sanitized[mcp_types.ReadResourceResult | mcp_types.InputRequiredResult]: ...

    async def list_prompts(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[builtins.list[mcp_types.Prompt]]: ...

    async def get_prompt(
        self,
        session_id: str,
        name: str,
        arguments: dict[str, str],
        *,
        caller: str,
        timeout: float | None = None,
        exchange: Exchange,
    ) -> Sanitized[mcp_types.GetPromptResult | mcp_types.InputRequiredResult]: ...

    async def complete(
        self, session_id: str, params: mcp_types.CompleteRequestParams, *, caller: str, timeout: float | None = None
    ) -> mcp_types.CompleteResult: ...

    async def set_logging_level(self, session_id: str, level: str, *, caller: str) -> None: ...

    async def subscribe(self, session_id: str, uri: str, *, caller: str) -> None: ...

    async def unsubscribe(self, session_id: str, uri: str, *, caller: str) -> None: ...

    def list_approvals(self, *, caller: str, include_decided: bool = False) -> builtins.list[Approval]: ...
