"""SessionManager: opens, serves, reaps and closes sessions; one sandbox each.

It sits between the API (which it never sees as protobuf) and the sandbox
backend (which it never sees as Docker). Every request goes through
``_request``, which applies the call deadline and turns a dead channel into the
one explanation a caller can act on: killed for memory, crashed with its
stderr tail, or broke the protocol. A fault ends only its own session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import mcp_types
from pydantic import BaseModel

from runner.channel import AgentChannel
from runner.config import Limits, Profile, Settings
from runner.errors import (
    DeadlineExceeded,
    InvalidArgument,
    OutOfMemory,
    ProfileNotFound,
    QuotaExceeded,
    ResultRejected,
    RunnerError,
    SandboxCrashed,
    ServerError,
    SessionClosed,
    SessionNotFound,
    ToolNotFound,
    Unimplemented,
)
from runner.guard.validate import (
    CheckedTool,
    check_arguments,
    check_initialize,
    check_tools,
    parse_call_result,
    parse_result,
)
from runner.sandbox.base import SandboxBackend, SandboxHandle, SandboxSpec, SandboxStats
from runner.sessions.models import (
    LimitsRequest,
    OpenedSession,
    ProgressCallback,
    ServerInfo,
    SessionInfo,
    SessionState,
    ToolCallOutcome,
    Usage,
)

log = logging.getLogger(__name__)
P = TypeVar("P", bound=BaseModel)

MAX_PAGES = 100
PING_AFTER_TIMEOUT_S = 3.0
EXIT_WAIT_S = 3.0
CLOSED_RETENTION_S = 600.0
_LABEL_KEY = re.compile(r"^[a-zA-Z0-9_.\-/]{1,63}$")
_MAX_LABELS = 16


@dataclass
class _Session:
    id: str
    profile: Profile
    caller: str
    labels: Mapping[str, str]
    limits: Limits
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
    calls: int = 0
    stats: SandboxStats = SandboxStats()
    concluding: asyncio.Task[RunnerError] | None = None
    watcher: asyncio.Task[None] | None = None


class SessionManager:
    def __init__(self, backend: SandboxBackend, settings: Settings) -> None:
        self._backend = backend
        self._settings = settings
        self._sessions: dict[str, _Session] = {}
        self._reaper: asyncio.Task[None] | None = None

    # -- lifecycle of the manager ------------------------------------------------------------

    async def start(self) -> int:
        """Check the backend, remove this instance's orphans, start reaping; returns orphans removed."""
        await self._backend.check()
        removed = await self._backend.sweep_orphans(self._settings.instance)
        self._reaper = asyncio.create_task(self._reap_forever(), name="session-reaper")
        return removed

    async def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        live = [s for s in self._sessions.values() if s.state in (SessionState.STARTING, SessionState.READY)]
        await asyncio.gather(*(self._end(s, SessionState.CLOSED, "the service shut down") for s in live))

    # -- open / close / inspect ---------------------------------------------------------------

    async def open(
        self,
        profile: str,
        *,
        caller: str,
        labels: Mapping[str, str] | None = None,
        limits: LimitsRequest | None = None,
        timeout: float | None = None,
    ) -> OpenedSession:
        chosen = self._settings.profiles.get(profile)
        if chosen is None:
            known = ", ".join(sorted(self._settings.profiles)) or "none"
            raise ProfileNotFound(f"no profile named {profile!r} (known profiles: {known})")
        session = _Session(
            id=secrets.token_hex(8),
            profile=chosen,
            caller=caller,
            labels=_check_labels(labels or {}),
            limits=_apply_limits(chosen.limits, limits),
        )
        live = sum(s.state in (SessionState.STARTING, SessionState.READY) for s in self._sessions.values())
        if live >= self._settings.max_sessions:
            raise QuotaExceeded(
                f"{live} sessions are open, the service's limit is {self._settings.max_sessions}; "
                "close one or retry later"
            )
        self._sessions[session.id] = session
        budget = min(timeout or self._settings.open_timeout_s, self._settings.open_timeout_s)
        try:
            async with asyncio.timeout(budget):
                await self._boot(session)
        except TimeoutError:
            await self._end(session, SessionState.FAILED, f"did not start within {budget:.1f} s")
            raise DeadlineExceeded(
                f"opening a session on profile {profile!r} took longer than {budget:.1f} s"
            ) from None
        except RunnerError as exc:
            error = await self._explain(session, exc)
            await self._end(session, SessionState.FAILED, error.message)
            raise error from exc
        except BaseException:
            await asyncio.shield(self._end(session, SessionState.FAILED, "opening was cancelled"))
            raise
        session.state = SessionState.READY
        session.watcher = asyncio.create_task(self._watch(session), name=f"watch-{session.id}")
        assert session.server is not None
        tools = tuple(checked.tool for checked in session.tools.values())
        return OpenedSession(info=self._info(session), server=session.server, tools=tools)

    async def _boot(self, session: _Session) -> None:
        spec = SandboxSpec(
            session_id=session.id,
            instance=self._settings.instance,
            image=session.profile.image,
            command=session.profile.command,
            env=session.profile.env,
            mounts=session.profile.mounts,
            limits=session.limits,
            labels={"mcp-runner.profile": session.profile.name},
        )
        session.handle = await self._backend.start(spec)
        session.channel = AgentChannel(session.handle, max_message_bytes=self._settings.max_message_bytes)
        session.channel.start()
        init = check_initialize(await session.channel.ready())
        session.server = ServerInfo(
            name=init.server_info.name,
            version=init.server_info.version,
            protocol_version=init.protocol_version,
            instructions=init.instructions,
        )
        session.capabilities = init.capabilities
        if init.capabilities.tools is not None:
            await self._refresh_tools(session, timeout=None)

    async def close(self, session_id: str, *, caller: str) -> SessionInfo:
        session = self._lookup(session_id)
        if session.state in (SessionState.STARTING, SessionState.READY):
            await self._end(session, SessionState.CLOSED, None)
        return self._info(session)

    def get(self, session_id: str) -> SessionInfo:
        return self._info(self._lookup(session_id))

    def list_sessions(self) -> list[SessionInfo]:
        return [self._info(s) for s in self._sessions.values()]

    # -- MCP operations ------------------------------------------------------------------------

    async def list_tools(self, session_id: str, *, timeout: float | None = None) -> list[mcp_types.Tool]:
        session = self._live(session_id)
        await self._refresh_tools(session, timeout=timeout)
        return [checked.tool for checked in session.tools.values()]

    async def call_tool(
        self,
        session_id: str,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> ToolCallOutcome:
        session = self._live(session_id)
        checked = session.tools.get(tool)
        if checked is None:
            await self._refresh_tools(session, timeout=timeout)
            checked = session.tools.get(tool)
        if checked is None:
            names = ", ".join(sorted(session.tools)) or "none"
            raise ToolNotFound(f"session {session_id} has no tool {tool!r} (its tools: {names})")
        # Validation is CPU work on untrusted input: off the event loop, so other sessions keep moving.
        await asyncio.to_thread(check_arguments, checked, arguments)
        session.calls += 1
        raw = await self._request(
            session, "tools/call", {"name": tool, "arguments": arguments}, timeout, on_progress
        )
        return ToolCallOutcome(result=await asyncio.to_thread(parse_call_result, checked, raw))

    async def list_resources(self, session_id: str, *, timeout: float | None = None) -> list[mcp_types.Resource]:
        session = self._offering(session_id, "resources")
        pages = await self._pages(session, "resources/list", mcp_types.ListResourcesResult, timeout)
        return [r for page in pages for r in page.resources]

    async def read_resource(
        self, session_id: str, uri: str, *, timeout: float | None = None
    ) -> list[mcp_types.TextResourceContents | mcp_types.BlobResourceContents]:
        session = self._offering(session_id, "resources")
        raw = await self._request(session, "resources/read", {"uri": uri}, timeout, None)
        result = await asyncio.to_thread(parse_result, mcp_types.ReadResourceResult, raw, f"contents of {uri!r}")
        return list(result.contents)

    async def list_prompts(self, session_id: str, *, timeout: float | None = None) -> list[mcp_types.Prompt]:
        session = self._offering(session_id, "prompts")
        pages = await self._pages(session, "prompts/list", mcp_types.ListPromptsResult, timeout)
        return [p for page in pages for p in page.prompts]

    async def get_prompt(
        self, session_id: str, name: str, arguments: dict[str, str], *, timeout: float | None = None
    ) -> mcp_types.GetPromptResult:
        session = self._offering(session_id, "prompts")
        raw = await self._request(session, "prompts/get", {"name": name, "arguments": arguments}, timeout, None)
        return await asyncio.to_thread(parse_result, mcp_types.GetPromptResult, raw, f"prompt {name!r}")

    # -- internals -----------------------------------------------------------------------------

    async def _refresh_tools(self, session: _Session, *, timeout: float | None) -> None:
        pages = await self._pages(session, "tools/list", mcp_types.ListToolsResult, timeout)
        session.tools = await asyncio.to_thread(check_tools, [t for page in pages for t in page.tools])

    async def _pages(
        self, session: _Session, method: str, model: type[P], timeout: float | None
    ) -> list[P]:
        pages: list[P] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            raw = await self._request(session, method, {"cursor": cursor} if cursor else {}, timeout, None)
            page = await asyncio.to_thread(parse_result, model, raw, f"{method} result")
            pages.append(page)
            cursor = getattr(page, "next_cursor", None)
            if not cursor:
                return pages
        raise ResultRejected(f"the server's {method} did not end after {MAX_PAGES} pages")

    async def _request(
        self,
        session: _Session,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> dict[str, Any]:
        assert session.channel is not None
        session.last_used = time.monotonic()
        cap = session.limits.call_timeout_s
        budget = min(timeout, cap) if timeout is not None else cap
        try:
            async with asyncio.timeout(budget):
                return await session.channel.request(method, params, on_progress=on_progress)
        except TimeoutError:
            raise await self._after_timeout(session, method, budget) from None
        except ServerError:
            raise
        except RunnerError as exc:
            raise await self._explain(session, exc) from exc
        finally:
            session.last_used = time.monotonic()

    async def _after_timeout(self, session: _Session, method: str, budget: float) -> DeadlineExceeded:
        """A call ran out of time: the session is either still answering, or it is ended now."""
        what = f"{method} did not finish within {budget:.3g} s"
        assert session.channel is not None
        try:
            async with asyncio.timeout(PING_AFTER_TIMEOUT_S):
                await session.channel.request("ping", {})
        except (TimeoutError, RunnerError):
            await self._end(session, SessionState.FAILED, f"{what} and the server stopped answering")
            return DeadlineExceeded(f"{what}; the server stopped answering, so session {session.id} was ended")
        return DeadlineExceeded(f"{what}; the call was cancelled and session {session.id} is still usable")

    async def _explain(self, session: _Session, error: RunnerError) -> RunnerError:
        """Turn a dead channel into the reason a person can act on, once, with the sandbox gone after it."""
        if session.handle is None or session.channel is None or session.channel.terminal_error is None:
            return error
        if session.concluding is None:
            session.concluding = asyncio.create_task(self._conclude(session, session.handle, error))
        # Shielded: a caller giving up must not abort the teardown other callers wait for.
        return await asyncio.shield(session.concluding)

    async def _conclude(self, session: _Session, handle: SandboxHandle, error: RunnerError) -> RunnerError:
        ending = await handle.wait_exit(EXIT_WAIT_S)
        explained: RunnerError
        if ending.oom_killed:
            mib = session.limits.memory_bytes // 1024**2
            explained = OutOfMemory(f"session {session.id} was killed for exceeding its memory limit of {mib} MiB")
        elif isinstance(error, SandboxCrashed):
            status = f" (exit status {ending.exit_code})" if ending.exit_code is not None else ""
            explained = SandboxCrashed(f"session {session.id} ended: {error.message}{status}", handle.stderr_tail())
        else:
            explained = type(error)(f"session {session.id} was ended: {error.message}")
        await self._end(session, SessionState.FAILED, explained.message)
        return explained

    async def _watch(self, session: _Session) -> None:
        """Notice a sandbox dying between calls, so the next caller hears why."""
        assert session.channel is not None
        await session.channel.closed.wait()
        if session.state is SessionState.READY and session.channel.terminal_error is not None:
            await self._explain(session, session.channel.terminal_error)

    async def _end(self, session: _Session, state: SessionState, reason: str | None) -> None:
        if session.state in (SessionState.CLOSED, SessionState.FAILED):
            return
        session.state = state
        session.failure = reason
        session.ended = time.monotonic()
        if session.watcher is not None and session.watcher is not asyncio.current_task():
            session.watcher.cancel()
        if session.handle is not None:
            session.stats = await session.handle.stats()
        if session.channel is not None:
            await session.channel.aclose()
        if session.handle is not None:
            await session.handle.destroy()

    def _lookup(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"no session {session_id!r} (it never existed or was forgotten)")
        return session

    def _live(self, session_id: str) -> _Session:
        session = self._lookup(session_id)
        if session.state is SessionState.READY:
            return session
        reason = f": {session.failure}" if session.failure else ""
        raise SessionClosed(f"session {session_id} is {session.state.value}{reason}")

    def _offering(self, session_id: str, capability: str) -> _Session:
        """The live session, if its server declared ``capability`` at initialize."""
        session = self._live(session_id)
        if session.capabilities is not None and getattr(session.capabilities, capability) is None:
            raise Unimplemented(
                f"session {session_id}'s server ({session.profile.name}) does not offer {capability}"
            )
        return session

    def _info(self, session: _Session) -> SessionInfo:
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
        )

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reap_interval_s)
            await self.reap()

    async def reap(self) -> None:
        """End sessions idle or alive for too long; forget long-ended ones."""
        now = time.monotonic()
        for session in list(self._sessions.values()):
            if session.state is SessionState.READY:
                if now - session.last_used > session.limits.idle_timeout_s:
                    reason = f"idle for more than {session.limits.idle_timeout_s:g} s"
                elif now - session.started > session.limits.max_lifetime_s:
                    reason = f"reached its maximum lifetime of {session.limits.max_lifetime_s:g} s"
                else:
                    continue
                log.info("reaping session %s: %s", session.id, reason)
                await self._end(session, SessionState.CLOSED, reason)
            elif session.ended is not None and now - session.ended > CLOSED_RETENTION_S:
                del self._sessions[session.id]


def _check_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    if len(labels) > _MAX_LABELS:
        raise InvalidArgument(f"at most {_MAX_LABELS} labels are allowed, got {len(labels)}")
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise InvalidArgument(f"label key {key!r} must be 1-63 characters of letters, digits, _ . - /")
        if len(value) > 256:
            raise InvalidArgument(f"label {key!r} is longer than 256 characters")
    return dict(labels)


def _apply_limits(ceiling: Limits, request: LimitsRequest | None) -> Limits:
    """The profile's limits lowered by the caller's request; asking for more than the profile is refused."""
    if request is None:
        return ceiling
    changes: dict[str, Any] = {}
    pairs = {
        "memory_bytes": request.memory_bytes,
        "cpus": request.cpus,
        "pids": request.pids,
        "call_timeout_s": request.call_timeout_s,
        "idle_timeout_s": request.idle_timeout_s,
        "max_lifetime_s": request.max_lifetime_s,
    }
    for name, wanted in pairs.items():
        if wanted is None:
            continue
        allowed = getattr(ceiling, name)
        if wanted <= 0 or wanted > allowed:
            raise InvalidArgument(
                f"limit {name}={wanted:g} is outside what the profile allows (0 < value ≤ {allowed:g})"
            )
        changes[name] = wanted
    if "memory_bytes" in changes and changes["memory_bytes"] < 16 * 1024**2:
        raise InvalidArgument("limit memory_bytes must be at least 16 MiB")
    return replace(ceiling, **changes)
