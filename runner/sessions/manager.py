"""SessionManager: opens, serves, reaps and closes sessions; one sandbox each.

It sits between the API (which it never sees as protobuf) and the sandbox
backend (which it never sees as Docker). Every request goes through
``_request``, which applies the call deadline and turns a dead channel into the
one explanation a caller can act on: killed for memory, crashed with its
stderr tail, or broke the protocol. A fault ends only its own session.

Around each request the ``Gate`` decides (policy, limits, rates, approvals,
pins, quarantine), each session's ``Sanitizer`` cleans every text that came
out of its sandbox, and the ``Journal`` records it all in the audit log (the
answer's record durable before the answer is returned); the manager only puts
them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import asdict, replace
from typing import Any, TypeVar

import mcp_types

from runner.approvals import Approval
from runner.audit import records
from runner.audit.records import capped
from runner.channel import AgentChannel, agent_env
from runner.config import Limits, Profile, Settings
from runner.errors import (
    DeadlineExceeded,
    PermissionDenied,
    ProfileNotFound,
    QuotaExceeded,
    ResultRejected,
    RunnerError,
    SchemaViolation,
    ServerError,
    SessionClosed,
    SessionNotFound,
    ToolNotFound,
    Unimplemented,
)
from runner.guard import results
from runner.guard.findings import FindingLog
from runner.guard.memory import GuardMemory
from runner.guard.sanitize import Sanitizer
from runner.guard.screening import screen_tools
from runner.guard.validate import (
    CheckedTool,
    check_arguments,
    check_initialize,
    check_tools,
    parse_call_result,
    parse_result,
)
from runner.policy import Kind, PolicyStore, ToolDecision
from runner.sandbox.base import SandboxBackend, SandboxNetwork, SandboxSpec
from runner.secret_sources import egress_rules, resolve_secrets
from runner.sessions import listing, outflow
from runner.sessions.egress_record import EgressRecord, describe_network
from runner.sessions.ending import Ending
from runner.sessions.gate import Gate
from runner.sessions.journal import Journal, RequestEntry, as_json, error_json, redacted
from runner.sessions.models import (
    ApprovalCallback,
    LimitsRequest,
    OpenedSession,
    ProgressCallback,
    Sanitized,
    ServerInfo,
    SessionInfo,
    SessionState,
    ToolCallOutcome,
)
from runner.sessions.session import LiveSession, check_labels, session_info
from runner.text import control_free, unescaped

log = logging.getLogger(__name__)
V = TypeVar("V")

MIN_CALL_BUDGET_S = 0.05
"""Less time than this left after an approval wait: the approved call is left for a later CallTool."""
CLOSED_RETENTION_S = 600.0
# Errors that count towards the anomaly rule: the policy refused, the sanitizer blocked, input or output was invalid.
_ANOMALIES = (PermissionDenied, SchemaViolation, ResultRejected)
_ACTIONS: dict[Kind, tuple[str, str]] = {
    "tools": ("tools/call", "tool"), "resources": ("resources/read", "uri"), "prompts": ("prompts/get", "prompt"),
}
"""Policy records: the action decided and the detail that names what it was about."""


class SessionManager:
    def __init__(
        self,
        backend: SandboxBackend,
        settings: Settings,
        policy: PolicyStore | None = None,
        journal: Journal | None = None,
        memory: GuardMemory | None = None,
    ) -> None:
        self._backend = backend
        self._settings = settings
        self._journal = journal or Journal(None)
        self._sessions: dict[str, LiveSession] = {}
        self._gate = Gate(policy or PolicyStore(None), settings, on_approval=self._approval_changed, memory=memory)
        self._reaper: asyncio.Task[None] | None = None
        self._ending = Ending(self._journal, self._gate)

    # -- lifecycle of the manager ------------------------------------------------------------

    async def start(self) -> int:
        """Check the backend, remove this instance's orphans, start reaping; returns orphans removed."""
        await self._backend.check()
        removed = await self._backend.sweep_orphans(self._settings.instance)
        self._gate.expire_orphaned_approvals()  # their sessions were the orphans' (recorded: on_approval)
        self._reaper = asyncio.create_task(self._reap_forever(), name="session-reaper")
        return removed

    async def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        live = [s for s in self._sessions.values() if s.state in (SessionState.STARTING, SessionState.READY)]
        await asyncio.gather(*(self._ending.end(s, SessionState.CLOSED, "the service shut down") for s in live))

    # -- open / close / inspect ---------------------------------------------------------------

    async def open(
        self,
        profile: str,
        *,
        caller: str,
        labels: Mapping[str, str] | None = None,
        limits: LimitsRequest | None = None,
        timeout: float | None = None,
        image: str | None = None,
    ) -> OpenedSession:
        """Admit, start, initialize, list tools; ``image`` (a digest) replaces the profile's image for a replay."""
        network = None
        credentials: tuple[str, ...] = ()
        session_id = secrets.token_hex(8)
        try:
            chosen, checked_labels, granted = self._admit(session_id, profile, caller, labels, limits)
            if image is not None:
                chosen = replace(chosen, image=image)
            secret_values = resolve_secrets(chosen.secrets)
            if chosen.network is not None:
                rules, credentials = egress_rules(chosen.network)
                network = SandboxNetwork(rules=rules, upstream=chosen.network.upstream)
        except RunnerError as exc:
            self._refusing(caller, "open")
            self._journal.refusal(caller, profile, exc)
            await self._journal.durable_or_raise(records.SESSION_OPEN, "", caller, {
                "profile": capped(profile), "outcome": "refused", "error": error_json(exc),
            })  # fmt: skip
            raise
        sanitizer = Sanitizer(replace(chosen.sanitize, secrets=(*secret_values.values(), *credentials)))
        session = LiveSession(
            id=session_id,
            profile=chosen,
            caller=caller,
            labels=checked_labels,
            limits=granted,
            sanitizer=sanitizer,
            egress=EgressRecord(session_id, sanitizer, lambda d: self._journal.egress(session_id, caller, d)),
        )
        self._sessions[session.id] = session
        budget = min(timeout or self._settings.open_timeout_s, self._settings.open_timeout_s)
        try:
            async with asyncio.timeout(budget):
                await self._boot(session, secret_values, network)
        except TimeoutError:
            await self._ending.end(session, SessionState.FAILED, f"did not start within {budget:.1f} s")
            late = DeadlineExceeded(f"opening a session on profile {profile!r} took longer than {budget:.1f} s")
            await self._announce(session, late)
            raise late from None
        except RunnerError as exc:
            error = await self._ending.explain(session, exc)
            outflow.sanitize_message(session, error)
            await self._ending.end(session, SessionState.FAILED, error.message)
            await self._announce(session, error)
            raise error from exc
        except BaseException:
            # The caller left (its deadline, a cancel) while its sandbox started: on record all the same, queued
            # since nothing waits for it, and closed by the session.close record that follows.
            abandoned = self._open_record(session, "abandoned")
            self._journal.note(records.SESSION_OPEN, session.id, session.caller, abandoned)
            session.announced = True
            await self._ending.end(session, SessionState.FAILED, "opening was cancelled")
            raise
        try:
            await self._announce(session, None)
        except RunnerError as exc:
            await self._ending.end(session, SessionState.FAILED, exc.message)
            raise
        except BaseException:
            # The caller left while the record was being made durable: the writer records it all the same, but
            # nobody holds the session's id, so it ends now (it stayed STARTING for ever, its sandbox running).
            session.announced = True
            await self._ending.end(session, SessionState.FAILED, "opening was cancelled")
            raise
        session.announced = True
        session.state = SessionState.READY
        session.watcher = asyncio.create_task(self._ending.watch(session), name=f"watch-{session.id}")
        assert session.server is not None
        return OpenedSession(
            info=session_info(session),
            server=session.server,
            tools=session.listing.tools,
            findings=session.instructions_findings + session.listing.findings,
        )

    def _admit(
        self, session_id: str, profile: str, caller: str, labels: Mapping[str, str] | None, limits: LimitsRequest | None
    ) -> tuple[Profile, Mapping[str, str], Limits]:
        chosen = self._settings.profiles.get(profile)
        if chosen is None:
            known = ", ".join(sorted(self._settings.profiles)) or "none"
            raise ProfileNotFound(f"no profile named {profile!r} (known profiles: {known})")
        checked_labels = check_labels(labels or {})
        live = [s for s in self._sessions.values() if s.state in (SessionState.STARTING, SessionState.READY)]
        if len(live) >= self._settings.max_sessions:
            raise QuotaExceeded(
                f"{len(live)} sessions are open, the service's limit is {self._settings.max_sessions}; "
                "close one or retry later"
            )
        granted = self._gate.admit_open(caller, chosen, limits, sum(s.caller == caller for s in live))
        self._journal.policy(session_id, caller, "open", "allow", self._gate.policy.label, profile=profile)
        return chosen, checked_labels, granted

    async def _announce(self, session: LiveSession, error: RunnerError | None) -> None:
        """The session.open record, durable: who opened what, in which image, with which limits and network."""
        outcome = "ok" if error is None else "error"
        await self._journal.durable_or_raise(records.SESSION_OPEN, session.id, session.caller, {
            **self._open_record(session, outcome), **({"error": error_json(error)} if error is not None else {}),
        })  # fmt: skip

    def _open_record(self, session: LiveSession, outcome: str) -> dict[str, Any]:
        profile = session.profile
        return {
            "profile": profile.name,
            "outcome": outcome,
            "image": profile.image,
            "image_id": session.handle.image_id if session.handle is not None else "",
            "command": list(profile.command),
            "remote_url": profile.remote_url,
            "env": sorted(profile.env),
            "secrets": sorted(profile.secrets),
            "limits": asdict(session.limits),
            "network": describe_network(profile),
            "runtime": profile.runtime,
            "labels": redacted(dict(session.labels), session.sanitizer.redact_secrets),
            "server": asdict(session.server) if session.server is not None else None,
            "tools": as_json(list(session.listing.tools)),  # as the caller got them: sanitized, blocked ones left out
            "findings": [asdict(f) for f in session.instructions_findings + session.listing.findings],
        }

    async def _boot(
        self, session: LiveSession, secret_values: Mapping[str, str], network: SandboxNetwork | None
    ) -> None:
        profile = session.profile
        spec = SandboxSpec(
            session_id=session.id,
            instance=self._settings.instance,
            image=profile.image,
            command=("--url", profile.remote_url) if profile.remote_url else profile.command,
            env={**profile.env, **secret_values, **agent_env(self._settings.max_message_bytes)},
            mounts=profile.mounts,
            limits=session.limits,
            labels={"mcp-runner.profile": profile.name},
            network=network,
            runtime=profile.runtime,
        )
        session.handle = await self._backend.start(spec, session.egress.record)
        session.channel = AgentChannel(session.handle, max_message_bytes=self._settings.max_message_bytes)
        session.channel.start()
        raw_init = check_initialize(await session.channel.ready())
        # All of it reaches the caller and the audit log: name, version and instructions are the server's words.
        clean = await outflow.sanitize(session, results.sanitize_initialize, raw_init, "the server's initialize result")
        init = clean.value
        session.instructions_findings = clean.findings
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
        session = self._lookup(session_id, caller)
        if session.state in (SessionState.STARTING, SessionState.READY):
            await self._ending.end(session, SessionState.CLOSED, None)
        return session_info(session)

    def get(self, session_id: str, *, caller: str) -> SessionInfo:
        return session_info(self._lookup(session_id, caller))

    def list_sessions(self, *, caller: str) -> list[SessionInfo]:
        """The caller's own sessions; an admin sees everyone's."""
        return [session_info(s) for s in self._sessions.values() if self._gate.may_see(caller, s.caller)]

    # -- MCP operations ------------------------------------------------------------------------

    async def list_tools(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[list[mcp_types.Tool]]:
        self._screen(session_id, caller, "tools/list")
        async with self._journal.request(session_id, caller, "tools/list", {}) as entry:
            session = self._live(session_id, caller, entry)
            async with self._guarding(session):
                with self._gate.call_slot(caller, session.id):
                    await self._refresh_tools(session, timeout=timeout)
            return self._returning(session, entry, Sanitized(list(session.listing.tools), session.listing.findings))

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
    ) -> ToolCallOutcome:
        """Policy, approval, rates, the call, validation, sanitization — in that order.

        A tool that needs approval returns a PENDING outcome at once, unless ``on_approval`` is given: then
        the pending approval is reported through it and the call waits (within ``timeout``) for the decision.
        """
        self._screen(session_id, caller, "tools/call")
        async with self._journal.request(session_id, caller, "tools/call", {"name": tool, "arguments": arguments}
                                         ) as entry:
            session = self._live(session_id, caller, entry)
            outcome = await self._call_tool(
                session, entry, tool, arguments, caller, approval_id, timeout, on_progress, on_approval
            )
            if outcome.approval is not None:
                entry.returned["approval_id"] = outcome.approval.approval_id
            if outcome.result is None:
                entry.outcome = "approval_pending"
            else:
                self._returning(session, entry, Sanitized(outcome.result, outcome.findings))
            return replace(outcome, audit_id=entry.id)

    async def _call_tool(
        self,
        session: LiveSession,
        entry: RequestEntry,
        tool: str,
        arguments: dict[str, Any],
        caller: str,
        approval_id: str,
        timeout: float | None,
        on_progress: ProgressCallback | None,
        on_approval: ApprovalCallback | None,
    ) -> ToolCallOutcome:
        async with self._guarding(session):
            checked = await self._callable_tool(session, caller, tool, timeout)
            approval: Approval | None = None
            # Claiming uses an approval up, so it happens inside the call slot: a call refused by a rate
            # limit leaves its approval for the retry.
            claim: Callable[[], Approval] | None = None
            if approval_id:
                profile = session.profile.name

                def claim() -> Approval:
                    return self._gate.claim(caller, session.id, profile, approval_id, tool, arguments)
            else:
                decision = self._decide(session, caller, "tools", tool)
                # Validation is CPU work on untrusted input: off the event loop, so other sessions keep moving.
                await asyncio.to_thread(check_arguments, checked, arguments)
                if decision.verdict == "approval":
                    pending = self._gate.request_approval(
                        session_id=session.id, caller=caller, profile=session.profile.name,
                        tool=tool, arguments=arguments, rule=decision.rule,
                    )
                    log.info("call of %s in session %s waits for approval %s", tool, session.id, pending.approval_id)
                    if on_approval is None:
                        return ToolCallOutcome(result=None, approval=pending)
                    await on_approval(pending)
                    started = time.monotonic()
                    decided = await self._gate.approvals.wait(pending.approval_id, timeout)
                    if session.state is not SessionState.READY:
                        raise SessionClosed(f"session {session.id} ended while its call waited for approval")
                    if timeout is not None:
                        timeout -= time.monotonic() - started
                    # With no time left to run the call, the approval stays unclaimed for a later CallTool.
                    time_left = timeout is None or timeout >= MIN_CALL_BUDGET_S

                    def claim() -> Approval:
                        return self._gate.claim_decided(decided, caller, time_left=time_left)
            with self._gate.call_slot(caller, session.id):
                if claim is not None:
                    approval = claim()
                    arguments = dict(approval.arguments)
                    entry.params = {"name": tool, "arguments": arguments}
                    if on_approval is not None:
                        await on_approval(approval)
                session.calls += 1
                progress = FindingLog()
                raw = await self._request(
                    session, "tools/call", {"name": tool, "arguments": arguments}, timeout,
                    outflow.sanitizing_progress(session, on_progress, progress),
                )
            result = await asyncio.to_thread(parse_call_result, checked, raw)
            what = f"the result of tool {tool!r}"
            clean = await outflow.sanitize(session, results.sanitize_call_result, result, what)
        return ToolCallOutcome(result=clean.value, findings=progress.findings() + clean.findings, approval=approval)

    async def list_resources(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[list[mcp_types.Resource]]:
        self._screen(session_id, caller, "resources/list", "resources")
        async with self._journal.request(session_id, caller, "resources/list", {}) as entry:
            session = self._offering(session_id, caller, "resources", entry)
            async with self._guarding(session):
                with self._gate.call_slot(caller, session.id):
                    pages = await listing.pages(
                        self._request, session, "resources/list", mcp_types.ListResourcesResult, timeout,
                        self._settings.max_message_bytes,
                    )
                listed = [r for page in pages for r in page.resources]
                clean = await outflow.sanitize(session, results.sanitize_resources, listed, "the resource list")
            return self._returning(session, entry, clean)

    async def read_resource(
        self, session_id: str, uri: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[list[mcp_types.TextResourceContents | mcp_types.BlobResourceContents]]:
        self._screen(session_id, caller, "resources/read", "resources")
        async with self._journal.request(session_id, caller, "resources/read", {"uri": uri}) as entry:
            session = self._offering(session_id, caller, "resources", entry)
            async with self._guarding(session):
                self._decide(session, caller, "resources", uri)
                with self._gate.call_slot(caller, session.id):
                    raw = await self._request(session, "resources/read", {"uri": uri}, timeout, None)
                what = f"contents of {uri!r}"
                result = await asyncio.to_thread(parse_result, mcp_types.ReadResourceResult, raw, what)
                clean = await outflow.sanitize(session, results.sanitize_resource_contents, list(result.contents), what)
            return self._returning(session, entry, clean)

    async def list_prompts(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[list[mcp_types.Prompt]]:
        self._screen(session_id, caller, "prompts/list", "prompts")
        async with self._journal.request(session_id, caller, "prompts/list", {}) as entry:
            session = self._offering(session_id, caller, "prompts", entry)
            async with self._guarding(session):
                with self._gate.call_slot(caller, session.id):
                    pages = await listing.pages(
                        self._request, session, "prompts/list", mcp_types.ListPromptsResult, timeout,
                        self._settings.max_message_bytes,
                    )
                listed = [p for page in pages for p in page.prompts]
                clean = await outflow.sanitize(session, results.sanitize_prompts, listed, "the prompt list")
            return self._returning(session, entry, clean)

    async def get_prompt(
        self, session_id: str, name: str, arguments: dict[str, str], *, caller: str, timeout: float | None = None
    ) -> Sanitized[mcp_types.GetPromptResult]:
        params = {"name": name, "arguments": arguments}
        self._screen(session_id, caller, "prompts/get", "prompts")
        async with self._journal.request(session_id, caller, "prompts/get", params) as entry:
            session = self._offering(session_id, caller, "prompts", entry)
            async with self._guarding(session):
                self._decide(session, caller, "prompts", name)
                with self._gate.call_slot(caller, session.id):
                    raw = await self._request(session, "prompts/get", dict(params), timeout, None)
                result = await asyncio.to_thread(parse_result, mcp_types.GetPromptResult, raw, f"prompt {name!r}")
                clean = await outflow.sanitize(session, results.sanitize_prompt_result, result, f"prompt {name!r}")
            return self._returning(session, entry, clean)

    # -- approvals -----------------------------------------------------------------------------

    def list_approvals(self, *, caller: str, include_decided: bool = False) -> list[Approval]:
        return self._gate.list_approvals(caller, include_decided=include_decided)

    async def watch_approvals(self, *, caller: str) -> AsyncIterator[Approval]:
        """Pending approvals, then every change; ends if the caller loses the approver role on a reload."""
        self._gate.check_approver(caller)
        async for approval in self._gate.approvals.watch():
            self._gate.check_approver(caller)
            yield approval

    def decide_approval(self, approval_id: str, *, caller: str, approve: bool, reason: str) -> Approval:
        return self._gate.decide(caller, approval_id, approve=approve, reason=reason)

    def tool_decision(self, caller: str, profile: str, tool: str) -> ToolDecision:
        """What the policy says now about ``caller`` calling ``tool`` on ``profile`` (a denial is raised)."""
        return self._gate.decide_tool(caller, profile, tool)

    # -- internals -----------------------------------------------------------------------------

    def _decide(self, session: LiveSession, caller: str, kind: Kind, name: str) -> ToolDecision:
        """The policy's decision on a tool call, resource read or prompt get, recorded; a denial is raised."""
        action, detail = _ACTIONS[kind]
        try:
            decision = self._gate.decide_access(kind, caller, session.profile.name, name)
        except PermissionDenied as exc:
            self._journal.policy(session.id, caller, action, "deny", exc.message, **{detail: name})
            raise
        self._journal.policy(session.id, caller, action, decision.verdict, decision.rule, **{detail: name})
        return decision

    def _screen(self, session_id: str, caller: str, method: str, capability: str = "") -> None:
        """A request that will be refused counts against the refusal rate: its session unknown, another caller's or
        ended, its server without the ``capability`` it needs, or the caller's or session's call rate spent.

        Here, before the request's record is begun: past the rate it is answered RESOURCE_EXHAUSTED with nothing
        of it recorded; within it, it is refused inside the record as before (``_live``, ``_offering``, the call
        slot). A caller held to its call rate cannot write records at the speed it sends requests either.
        """
        session = self._sessions.get(session_id)
        if (
            session is None
            or session.state is not SessionState.READY
            or not self._gate.may_see(caller, session.caller)
            or (capability and session.capabilities is not None and getattr(session.capabilities, capability) is None)
            or self._gate.calls_exhausted(caller, session.id)
        ):
            self._refusing(caller, method)

    def _refusing(self, caller: str, action: str) -> None:
        """Past the caller's refusal rate: raise RESOURCE_EXHAUSTED, with one short throttle note per run."""
        throttled = self._gate.throttle_refusal(caller)
        if throttled is None:
            return
        error, first = throttled
        if first:
            self._journal.note(records.THROTTLE, "", caller, {"action": action, "error": error_json(error)})
        raise error

    def _returning(self, session: LiveSession, entry: RequestEntry, answer: Sanitized[V]) -> Sanitized[V]:
        """``answer`` goes to the caller: into the request's record, its findings into records of their own."""
        entry.result(answer.value, answer.findings)
        self._journal.findings(session.id, session.caller, entry.method, answer.findings)
        return answer

    def _approval_changed(self, approval: Approval) -> None:
        session = self._sessions.get(approval.session_id)
        self._journal.approval(approval, session.sanitizer.redact_secrets if session is not None else str)

    async def _refresh_tools(self, session: LiveSession, *, timeout: float | None) -> None:
        """List, compile schemas, check pins, sanitize; blocked tools stay known but uncallable."""
        pages = await listing.pages(
            self._request, session, "tools/list", mcp_types.ListToolsResult, timeout, self._settings.max_message_bytes
        )
        listed = [t for page in pages for t in page.tools]
        session.tools = await asyncio.to_thread(check_tools, listed)
        violations = self._gate.pins.check(session.profile.name, listed)
        for violation in violations:
            # The message quotes the server's tool name: the service log gets it sanitized, like the caller does,
            # and on one line (a line or paragraph separator the sanitizer keeps in text is shown escaped).
            message = session.sanitizer.text(unescaped(violation.message), "service log", FindingLog())
            log.warning("session %s (profile %s): %s", session.id, session.profile.name, control_free(message))
        session.listing = await asyncio.to_thread(screen_tools, session.sanitizer, listed, violations)

    async def _callable_tool(self, session: LiveSession, caller: str, tool: str, timeout: float | None) -> CheckedTool:
        checked = session.tools.get(tool)
        if checked is None:
            with self._gate.call_slot(caller, session.id):  # a listing the caller's unknown name causes is a call
                await self._refresh_tools(session, timeout=timeout)
            checked = session.tools.get(tool)
        if checked is None:
            names = ", ".join(sorted(t.name for t in session.listing.tools)) or "none"
            raise ToolNotFound(f"session {session.id} has no tool {tool!r} (its tools: {names})")
        blocked = session.listing.blocked.get(tool)
        if blocked is not None:
            raise PermissionDenied(f"tool {tool!r} of session {session.id} is blocked: {blocked}")
        return checked

    @contextlib.asynccontextmanager
    async def _guarding(self, session: LiveSession) -> AsyncIterator[None]:
        """Errors leave sanitized; denied, blocked and invalid events count, and past the limit quarantine.

        Meanwhile the session is busy, never idle: a call, or its wait for an approval, may outlast the idle timeout.
        """
        session.busy += 1
        try:
            yield
        except RunnerError as exc:
            outflow.sanitize_message(session, exc)
            if isinstance(exc, _ANOMALIES):
                await self._count_anomaly(session, exc)
            raise
        finally:
            session.busy -= 1
            session.last_used = time.monotonic()

    async def _count_anomaly(self, session: LiveSession, exc: RunnerError) -> None:
        reason = self._gate.quarantine_reason(session.id, exc)
        if reason is not None and session.state is SessionState.READY:
            log.warning("session %s of caller %s %s", session.id, session.caller, reason)
            self._journal.note(records.QUARANTINE, session.id, session.caller, {"reason": reason})
            await self._ending.end(session, SessionState.FAILED, reason)
            # The caller learns from this very answer that its session is gone, and why.
            exc.message = f"{exc.message}; session {session.id} was {reason}"

    async def _request(
        self,
        session: LiveSession,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        on_progress: ProgressCallback | None,
        recorded: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``recorded``: what the intent record keeps of ``params`` when they carry the server's own text back."""
        assert session.channel is not None
        session.last_used = time.monotonic()
        cap = session.limits.call_timeout_s
        budget = min(timeout, cap) if timeout is not None else cap
        # write-ahead: not sent unless its intent is on record
        await self._journal.sending(method, params if recorded is None else recorded)
        try:
            async with asyncio.timeout(budget):
                return await session.channel.request(method, params, on_progress=on_progress)
        except TimeoutError:
            raise await self._ending.after_timeout(session, method, budget) from None
        except ServerError:
            raise
        except RunnerError as exc:
            raise await self._ending.explain(session, exc) from exc
        finally:
            session.last_used = time.monotonic()

    def _lookup(self, session_id: str, caller: str, entry: RequestEntry | None = None) -> LiveSession:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"no session {session_id!r} (it never existed or was forgotten)")
        if entry is not None:
            # Before the owner check: what another caller sends to this session is recorded without its secrets.
            entry.redact = session.sanitizer.redact_secrets
        self._gate.check_owner(caller, session.caller, session_id)
        return session

    def _live(self, session_id: str, caller: str, entry: RequestEntry | None = None) -> LiveSession:
        session = self._lookup(session_id, caller, entry)
        if session.state is SessionState.READY:
            return session
        reason = f": {session.failure}" if session.failure else ""
        raise SessionClosed(f"session {session_id} is {session.state.value}{reason}")

    def _offering(self, session_id: str, caller: str, capability: str, entry: RequestEntry) -> LiveSession:
        """The live session, if its server declared ``capability`` at initialize."""
        session = self._live(session_id, caller, entry)
        if session.capabilities is not None and getattr(session.capabilities, capability) is None:
            raise Unimplemented(
                f"session {session_id}'s server ({session.profile.name}) does not offer {capability}"
            )
        return session

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reap_interval_s)
            # Not awaited: a teardown that hangs (Docker slow to stop one sandbox) must not hold back the next
            # round's reaping; a session being ended is no longer READY, so no round ends it twice.
            reaping = asyncio.ensure_future(self.reap())
            self._ending.teardowns.add(reaping)
            reaping.add_done_callback(self._ending.teardowns.discard)

    async def reap(self) -> None:
        """End sessions idle or alive for too long; forget long-ended ones."""
        self._gate.approvals.sweep()
        now = time.monotonic()
        due: list[Coroutine[Any, Any, None]] = []
        for session in list(self._sessions.values()):
            if session.state is SessionState.READY:
                if not session.busy and now - session.last_used > session.limits.idle_timeout_s:
                    reason = f"idle for more than {session.limits.idle_timeout_s:g} s"
                elif now - session.started > session.limits.max_lifetime_s:
                    reason = f"reached its maximum lifetime of {session.limits.max_lifetime_s:g} s"
                else:
                    continue
                log.info("reaping session %s: %s", session.id, reason)
                due.append(self._ending.end(session, SessionState.CLOSED, reason))
            elif session.ended is not None and now - session.ended > CLOSED_RETENTION_S:
                del self._sessions[session.id]
        # Side by side: one after another, a sandbox slow to tear down kept every other due session running.
        await asyncio.gather(*due)

