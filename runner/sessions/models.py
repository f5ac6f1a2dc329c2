"""Domain values the SessionManager hands to the API layer (never protobuf, never Docker).

MCP payloads stay as the ``mcp_types`` models the guard validated them into;
these frozen records carry everything else a caller may ask about a session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

import mcp_types

from runner.approvals import Approval
from runner.guard.findings import Finding
from runner.sandbox.base import EgressDecision

T = TypeVar("T")


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


@dataclass(frozen=True)
class OpenedSession:
    info: SessionInfo
    server: ServerInfo
    tools: tuple[mcp_types.Tool, ...]
    """Sanitized; tools blocked by pinning or poisoning are left out (and reported in ``findings``)."""
    findings: tuple[Finding, ...] = ()


@dataclass(frozen=True)
class Sanitized(Generic[T]):
    """A sanitized value and what the sanitizer found in it."""

    value: T
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


ProgressCallback = Callable[[ProgressEvent], Awaitable[None]]
ApprovalCallback = Callable[[Approval], Awaitable[None]]
