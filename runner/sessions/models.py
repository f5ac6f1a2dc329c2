"""Domain values the SessionManager hands to the API layer (never protobuf, never Docker).

MCP payloads stay as the ``mcp_types`` models the guard validated them into;
these frozen records carry everything else a caller may ask about a session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

import mcp_types

from runner.approvals import Approval
from runner.guard.findings import Finding
from runner.sandbox.base import EgressDecision

T_co = TypeVar("T_co", covariant=True)

DEFAULT_PROTOCOL = "2025-11-25"
"""The era a sandbox's agent speaks with its server unless an open asks for another: stateful, initialize."""
STATELESS_PROTOCOL = "2026-07-28"
"""The stateless era: ``server/discover``, per-request ``_meta``, input-required results instead of server requests."""
PROTOCOLS = (DEFAULT_PROTOCOL, STATELESS_PROTOCOL)
DOORS = ("grpc", "mcp-http", "mcp-stdio")
"""How a session's caller reached the runner: named in the session's audit records."""


class SessionState(Enum):
    """Lifecycle of one session: STARTING → READY → CLOSED, or → FAILED from any live state."""

    STARTING = "starting"
    READY = "ready"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True)
class LimitsRequest:
    """Limits a caller asks for when opening a session; None keeps the profile's value.

    The manager refuses (INVALID_ARGUMENT) anything above the profile's ceiling.
    """

    memory_bytes: int | None = None
    cpus: float | None = None
    pids: int | None = None
    call_timeout_s: float | None = None
    idle_timeout_s: float | None = None
    max_lifetime_s: float | None = None


@dataclass(frozen=True)
class Usage:
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_memory_bytes: int = 0
    calls: int = 0


@dataclass(frozen=True)
class ServerInfo:
    name: str
    version: str
    protocol_version: str
    instructions: str | None = None


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    profile: str
    caller: str
    state: SessionState
    created_at: float
    """Unix time the session was opened."""
    age_seconds: float
    usage: Usage
    labels: Mapping[str, str] = field(default_factory=dict)
    server: ServerInfo | None = None
    failure: str | None = None
    """Why a FAILED session failed, for people."""
    network: str = "none"
    """``none``, or the egress rules the session's proxy enforces (``host:port`` …)."""
    runtime: str = "runc"
    egress: tuple[EgressDecision, ...] = ()
    """The proxy's most recent decisions, oldest first (at most ``MAX_EGRESS_KEPT``)."""
    mounts: tuple[str, ...] = ()
    """The profile's host paths bound in, each ``source:target:ro`` or ``source:target:rw``."""
    workspace_bytes: int = 0
    """The size of its writable ``/workspace``; 0: none."""


@dataclass(frozen=True)
class OpenedSession:
    info: SessionInfo
    server: ServerInfo
    tools: tuple[mcp_types.Tool, ...]
    """Sanitized; tools blocked by pinning or poisoning are left out (and reported in ``findings``)."""
    findings: tuple[Finding, ...] = ()
    protocol: str = DEFAULT_PROTOCOL
    """The era the sandbox speaks with its server: an open asking for 2026-07-28 gets 2025-11-25 when the server
    does not speak it (the agent fell back to initialize)."""
    capabilities: mcp_types.ServerCapabilities = field(default_factory=mcp_types.ServerCapabilities)
    """What the server declared (sanitized), so a door can declare the same."""


@dataclass(frozen=True)
class Sanitized(Generic[T_co]):
    """A sanitized value and what the sanitizer found in it."""

    value: T_co
    findings: tuple[Finding, ...] = ()


@dataclass(frozen=True)
class ProgressEvent:
    progress: float
    total: float | None = None
    message: str | None = None


@dataclass(frozen=True)
class ToolCallOutcome:
    """A validated, sanitized tool result; or, with ``result`` None, a call waiting for ``approval``."""

    result: mcp_types.CallToolResult | None
    findings: tuple[Finding, ...] = ()
    audit_id: str = ""
    approval: Approval | None = None
    """Set when the tool needs approval: PENDING (no result yet) or APPROVED (the result is the approved call's)."""
    input_required: mcp_types.InputRequiredResult | None = None
    """2026-07-28 era: the server needs the client's input first (sanitized); ``result`` is None. The client
    retries with ``Exchange.input_responses`` and the ``request_state``."""


@dataclass(frozen=True)
class ServerRequest:
    """What the sandboxed server asks of the client, validated and sanitized on the host."""

    method: str
    """``sampling/createMessage``, ``elicitation/create`` or ``roots/list``."""
    params: dict[str, Any]
    """MCP wire JSON of the validated params model (``requestedSchema``, ``maxTokens``…)."""


@dataclass(frozen=True)
class ServerNotification:
    """A notification of the sandboxed server's, validated and sanitized."""

    method: str
    """``notifications/message``, ``notifications/{tools,resources,prompts}/list_changed`` or
    ``notifications/resources/updated``."""
    params: dict[str, Any]


InputHandler = Callable[[ServerRequest], Awaitable[dict[str, Any]]]
"""The client's answer to a server request (wire JSON: a CreateMessageResult, ElicitResult or ListRootsResult);
raise ``runner.errors.ClientDeclined(code, message)`` to answer the server with that JSON-RPC error instead."""
NotificationHandler = Callable[[ServerNotification], Awaitable[None]]
"""Called on the session's reader: it must not block for long (queue, then return)."""


@dataclass(frozen=True)
class Exchange:
    """How one request talks back while it runs (and, given to ``listen``, how a session does between requests)."""

    on_input: InputHandler | None = None
    on_notification: NotificationHandler | None = None
    client_capabilities: dict[str, Any] | None = None
    """2026-07-28 era: the ClientCapabilities JSON sent in the request's ``_meta``."""
    input_responses: dict[str, Any] | None = None
    """2026-07-28 era retry: the client's answers to an input-required result's ``inputRequests``, by key."""
    request_state: str | None = None
    """2026-07-28 era retry: the server's own ``requestState``, exactly as it handed it out."""


ProgressCallback = Callable[[ProgressEvent], Awaitable[None]]
ApprovalCallback = Callable[[Approval], Awaitable[None]]
