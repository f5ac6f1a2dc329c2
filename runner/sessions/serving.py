"""What every request to a live session goes through: lookup, screening, policy, the guard's accounting, the call.

``Serving`` holds the plumbing the MCP operations (``operations.py``, ``utilities.py``)
and the manager's open path share: begin each request (``_serving``: its span, the
screening, its record), find the caller's live session, refuse early what will be
refused (and count it), record the policy's decision, send one request under the
call deadline with its write-ahead intent, and turn what went wrong into the one
explanation a caller can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn, TypeVar

import mcp_types

from runner.approvals import Approval
from runner.audit import records
from runner.audit.records import capped
from runner.channel import Reply
from runner.config import Settings
from runner.errors import (
    PermissionDenied,
    ResultRejected,
    RunnerError,
    SchemaViolation,
    ServerError,
    SessionClosed,
    SessionNotFound,
    ToolNotFound,
    Unimplemented,
)
from runner.guard.findings import FindingLog
from runner.guard.screening import screen_tools
from runner.guard.validate import (
    CheckedTool,
    check_tools,
)
from runner.observe import tracing
from runner.observe.tracing import Tracing
from runner.policy import Kind, ToolDecision
from runner.sessions import listing, outflow
from runner.sessions.ending import Ending
from runner.sessions.gate import Gate
from runner.sessions.interactive import prepare
from runner.sessions.journal import Journal, RequestEntry, error_json
from runner.sessions.models import (
    Exchange,
    ProgressCallback,
    Sanitized,
    SessionState,
)
from runner.sessions.session import LiveSession
from runner.text import control_free, unescaped, whole_words

log = logging.getLogger(__name__)
V = TypeVar("V")

_ANOMALIES = (PermissionDenied, SchemaViolation, ResultRejected)
"""Errors that count towards the anomaly rule: the policy refused, the sanitizer blocked, input or output invalid."""
_ACTIONS: dict[Kind, tuple[str, str]] = {
    "tools": ("tools/call", "tool"),
    "resources": ("resources/read", "uri"),
    "prompts": ("prompts/get", "prompt"),
}
"""Policy records: the action decided and the detail that names what it was about."""


class Serving:
    """The state the manager owns and the request plumbing over it; the manager sets the attributes."""

    _settings: Settings
    _journal: Journal
    _sessions: dict[str, LiveSession]
    _gate: Gate
    _ending: Ending
    _tracing: Tracing

    @contextlib.asynccontextmanager
    async def _serving(
        self,
        session_id: str,
        caller: str,
        method: str,
        params: dict[str, Any],
        capability: str = "",
        target: str = "",
    ) -> AsyncIterator[RequestEntry]:
        """How each MCP request begins: its span (``runner.observe.tracing``), the screening (``_screen``), its
        record. ``target``: the tool, prompt or resource URI the caller named, on the span as the conventions say."""
        known = self._sessions.get(session_id)
        protocol = known.protocol if known is not None else ""
        with self._tracing.request(method, session_id, target=target, protocol=protocol):
            self._screen(session_id, caller, method, capability)
            async with self._journal.request(session_id, caller, method, params) as entry:
                yield entry

    def _decide(self, session: LiveSession, caller: str, kind: Kind, name: str, action: str = "") -> ToolDecision:
        """The policy's decision on a tool call, resource read or prompt get, recorded; a denial is raised.

        ``action`` names what was decided when it is another request about the same thing (a completion of a
        prompt's argument, a subscription to a resource): the rule for the prompt or resource decides it."""
        default, detail = _ACTIONS[kind]
        action = action or default
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
        self._journal.throttled(caller, action, error, recorded=first)
        raise error

    async def refuse(self, error: RunnerError, *, caller: str, method: str, door: str, profile: str = "") -> NoReturn:
        """Another door's refusal of what reached no session: an id naming no live session of the caller (the MCP
        door's ``Mcp-Session-Id``), or a ``profile`` that does not exist. Counted against the caller's refusal rate
        as gRPC's are (past it: RESOURCE_EXHAUSTED is raised, nothing recorded), then recorded as gRPC records them
        (a refused open of ``profile``, else a request of ``method`` answered with ``error``) and ``error`` raised."""
        self._refusing(caller, "open" if profile else method)
        if profile:
            log.warning("open of profile %r by caller %r refused: %s", whole_words(profile, 100), caller,
                        control_free(error.message))  # fmt: skip
            await self._journal.durable_or_raise(records.SESSION_OPEN, "", caller, {
                "profile": capped(profile), "outcome": "refused", "error": error_json(error), "door": door,
            })  # fmt: skip
            raise error
        async with self._journal.request("", caller, method, {}) as entry:
            entry.door = door
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
        await self._show_tools(session, listed)

    async def _show_tools(self, session: LiveSession, listed: list[mcp_types.Tool]) -> None:
        """Pins checked (a first sight pins), changes logged, tools sanitized and screened: what the caller gets.

        A warm sandbox's tools were listed and compiled ahead; this part runs at its claim, for its session.
        """
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
        tracing.known_target(tool)  # the server listed it: a name of the server's, fit for the span's name
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
        """The result of ``_request_sized`` alone: the shape ``listing.pages`` asks of a request."""
        return (await self._request_sized(session, method, params, timeout, on_progress, recorded)).result

    async def _request_sized(
        self,
        session: LiveSession,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        on_progress: ProgressCallback | None,
        recorded: dict[str, Any] | None = None,
        exchange: Exchange | None = None,
    ) -> Reply:
        """``recorded``: what the intent record keeps of ``params`` when they carry the server's own text back.

        ``exchange``: how the request talks back while it runs; in the 2026-07-28 era also what its params and
        ``_meta`` carry (the client's capabilities, its input responses, the server's request state).
        """
        assert session.channel is not None
        capabilities = None
        if exchange is not None:
            params, recorded, capabilities = prepare(session, params, recorded, exchange)
        session.last_used = time.monotonic()
        cap = session.limits.call_timeout_s
        budget = min(timeout, cap) if timeout is not None else cap
        # write-ahead: not sent unless its intent is on record
        await self._journal.sending(method, params if recorded is None else recorded)
        try:
            async with asyncio.timeout(budget):
                return await session.channel.request_sized(
                    method,
                    params,
                    on_progress=on_progress,
                    capabilities=capabilities,
                    exchange=exchange,
                    tag=self._journal.serving_id(),
                )
        except TimeoutError:
            raise await self._ending.after_timeout(session, method, budget) from None
        except ServerError as exc:
            # The server's words: they may echo a secret of the session's env. Redacted as its results are, here
            # where they leave the channel, so no caller, record or log sees them raw (``str`` of it neither); the
            # code is kept.
            outflow.sanitize_message(session, exc)
            exc.args = (exc.message,)
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
            entry.door = session.door
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
            raise Unimplemented(f"session {session_id}'s server ({session.profile.name}) does not offer {capability}")
        return session
