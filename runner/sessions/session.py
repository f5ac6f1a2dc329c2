"""A session as the SessionManager keeps it, and what callers are shown of it."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import mcp_types

from runner.channel import AgentChannel, InboundHandler, agent_env
from runner.config import Limits, Profile, Settings
from runner.errors import InvalidArgument, ProtocolViolation, RunnerError
from runner.guard.findings import Finding
from runner.guard.sanitize import Sanitizer
from runner.guard.screening import ToolListing
from runner.guard.validate import CheckedTool, check_initialize
from runner.observe import tracing
from runner.sandbox.base import SandboxBackend, SandboxHandle, SandboxNetwork, SandboxSpec, SandboxStats
from runner.sessions.egress_record import EgressRecord, describe_network
from runner.sessions.models import DEFAULT_PROTOCOL, Exchange, ServerInfo, SessionInfo, SessionState, Usage

INIT_TIMEOUT_ENV = "MCP_AGENT_INIT_TIMEOUT"
"""The agent's start-up budget in seconds (``runner/agent`` reads it): what is left of the open's own budget."""
PROTOCOL_ENV = "MCP_AGENT_PROTOCOL"
"""The era the agent speaks with its server (``runner/agent`` reads it); set only for an era other than the default."""
_LABEL_KEY = re.compile(r"[a-zA-Z0-9_.\-/]{1,63}")  # whole key: "$" would let "team\n" through
_MAX_LABELS = 16


@dataclass
class LiveSession:
    """A session as the manager keeps it: its record, its sandbox, its guard state."""

    id: str
    profile: Profile
    caller: str
    labels: Mapping[str, str]
    limits: Limits
    sanitizer: Sanitizer
    egress: EgressRecord
    created_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    ended: float | None = None
    state: SessionState = SessionState.STARTING
    failure: str | None = None
    server: ServerInfo | None = None
    capabilities: mcp_types.ServerCapabilities | None = None
    handle: SandboxHandle | None = None
    channel: AgentChannel | None = None
    tools: dict[str, CheckedTool] = field(default_factory=dict)
    """Every tool the server lists, with its schemas compiled (for validating calls)."""
    listing: ToolListing = ToolListing()
    """What callers see: sanitized definitions, blocked tools left out, and the findings."""
    instructions_findings: tuple[Finding, ...] = ()
    calls: int = 0
    busy: int = 0
    """Requests under way (running, or waiting for an approval): while any is, the session is not idle."""
    stats: SandboxStats = SandboxStats()
    concluding: asyncio.Task[RunnerError] | None = None
    watcher: asyncio.Task[None] | None = None
    announced: bool = False
    """Its session.open record is written: its end gets a session.close record."""
    start: str = "cold"
    """``cold``: its sandbox was booted for it; ``warm``: it was handed a pooled one, booted ahead and never used."""
    door: str = "grpc"
    """How its caller reaches the runner (``models.DOORS``): named in its audit records."""
    protocol: str = DEFAULT_PROTOCOL
    """The era asked for at open; once started, the era its agent speaks (it may fall back to the default)."""
    listener: Exchange | None = None
    """What takes the server's requests and notifications that belong to no request in flight (``listen``)."""


def session_info(session: LiveSession) -> SessionInfo:
    end = session.ended or time.monotonic()
    return SessionInfo(
        session_id=session.id,
        profile=session.profile.name,
        caller=session.caller,
        state=session.state,
        created_at=session.created_at,
        age_seconds=time.monotonic() - session.started,
        usage=Usage(
            wall_seconds=end - session.started,
            cpu_seconds=session.stats.cpu_seconds,
            peak_memory_bytes=session.stats.peak_memory_bytes,
            calls=session.calls,
        ),
        labels=dict(session.labels),
        server=session.server,
        failure=session.failure,
        network=describe_network(session.profile),
        runtime=session.profile.runtime,
        egress=session.egress.decisions(),
        mounts=tuple(f"{m.source}:{m.target}:{'rw' if m.writable else 'ro'}" for m in session.profile.mounts),
        workspace_bytes=session.limits.workspace_bytes,
    )


def check_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    if len(labels) > _MAX_LABELS:
        raise InvalidArgument(f"at most {_MAX_LABELS} labels are allowed, got {len(labels)}")
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidArgument(f"label key {key!r} must be 1-63 characters of letters, digits, _ . - /")
        if len(value) > 256:
            raise InvalidArgument(f"label {key!r} is longer than 256 characters")
    return dict(labels)



def sandbox_spec(
    session: LiveSession,
    settings: Settings,
    secret_values: Mapping[str, str],
    network: SandboxNetwork | None,
    budget_s: float,
    warm_for_s: float = 0.0,
) -> SandboxSpec:
    """What a session's sandbox is started with, warm or cold alike: the profile, the secrets read for it, the
    host's cap, and the agent's start-up budget (``budget_s``, what the boot may still take). Its lifetime, a
    backstop the backend may enforce without the service (a pod's deadline), covers the boot, up to
    ``warm_for_s`` waiting in a warm pool, and the session's longest life."""
    profile = session.profile
    return SandboxSpec(
        session_id=session.id,
        instance=settings.instance,
        image=profile.image,
        command=("--url", profile.remote_url) if profile.remote_url else profile.command,
        env={
            **profile.env, **secret_values, **agent_env(settings.max_message_bytes),
            INIT_TIMEOUT_ENV: f"{max(budget_s, 0.001):.3f}",
            **({PROTOCOL_ENV: session.protocol} if session.protocol != DEFAULT_PROTOCOL else {}),
        },
        mounts=profile.mounts,
        limits=session.limits,
        labels={"mcp-runner.profile": profile.name},
        network=network,
        runtime=profile.runtime,
        lifetime_s=budget_s + warm_for_s + session.limits.max_lifetime_s,
    )


async def start_agent(backend: SandboxBackend, session: LiveSession, spec: SandboxSpec, max_message_bytes: int,
                      inbound: InboundHandler | None = None) -> mcp_types.InitializeResult:
    """Start the sandbox, open its channel, and wait for the agent's initialize (checked, not yet sanitized).

    ``inbound`` takes what the server sends unasked from the start (a server may ask for roots at once); the
    session's ``protocol`` becomes the era the agent reports: the one asked for, or the default it fell back to.
    """
    with tracing.step("container start"):
        session.handle = await backend.start(spec, session.egress.record)
    session.channel = AgentChannel(session.handle, max_message_bytes=max_message_bytes)
    session.channel.set_inbound(inbound)
    session.channel.start()
    initialize = check_initialize(await session.channel.ready())
    spoken = session.channel.protocol
    if spoken not in (session.protocol, DEFAULT_PROTOCOL):
        raise ProtocolViolation(f"the agent speaks {spoken} with its server, not the {session.protocol} asked for")
    session.protocol = spoken
    return initialize
