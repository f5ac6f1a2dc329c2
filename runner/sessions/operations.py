"""The MCP operations of a live session: tools, resources and prompts, each guarded and recorded.

Policy, approval, rates, the request, validation, sanitization — in that order;
every answer's record durable before the answer is returned (``Journal.request``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, overload

import mcp_types

from runner.approvals import Approval
from runner.errors import (
    FailedPrecondition,
    SessionClosed,
)
from runner.guard import results
from runner.guard.findings import FindingLog
from runner.guard.validate import (
    check_arguments,
    parse_call_result,
    parse_result,
    quick_arguments,
)
from runner.observe import tracing
from runner.sessions import interactive, listing, outflow
from runner.sessions.journal import RequestEntry
from runner.sessions.models import (
    ApprovalCallback,
    Exchange,
    ProgressCallback,
    Sanitized,
    SessionState,
    ToolCallOutcome,
)
from runner.sessions.session import LiveSession
from runner.sessions.utilities import Utilities

log = logging.getLogger(__name__)

MIN_CALL_BUDGET_S = 0.05
"""Less time than this left after an approval wait: the approved call is left for a later CallTool."""


class Operations(Utilities):
    async def list_tools(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[list[mcp_types.Tool]]:
        async with self._serving(session_id, caller, "tools/list", {}) as entry:
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
        exchange: Exchange | None = None,
    ) -> ToolCallOutcome:
        """Policy, approval, rates, the call, validation, sanitization — in that order.

        A tool that needs approval returns a PENDING outcome at once, unless ``on_approval`` is given: then
        the pending approval is reported through it and the call waits (within ``timeout``) for the decision.
        ``exchange``: how the call talks back while it runs (the server's requests and notifications); in the
        2026-07-28 era the server may answer with ``input_required`` instead of a result.
        """
        params = {"name": tool, "arguments": arguments}
        async with self._serving(session_id, caller, "tools/call", params, target=tool) as entry:
            session = self._live(session_id, caller, entry)
            outcome = await self._call_tool(
                session, entry, tool, arguments, caller, approval_id, timeout, on_progress, on_approval, exchange
            )
            if outcome.approval is not None:
                entry.returned["approval_id"] = outcome.approval.approval_id
            if outcome.input_required is not None:
                self._input_required(session, entry, Sanitized(outcome.input_required, outcome.findings))
            elif outcome.result is None:
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
        exchange: Exchange | None,
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
                # Validation is CPU work on untrusted input: unless quick, off the event loop, so other sessions
                # keep moving.
                await outflow.run_guard_work(quick_arguments(checked, arguments), check_arguments, checked, arguments)
                if decision.verdict == "approval":
                    pending = self._gate.request_approval(
                        session_id=session.id,
                        caller=caller,
                        profile=session.profile.name,
                        tool=tool,
                        arguments=arguments,
                        rule=decision.rule,
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
                reply = await self._request_sized(
                    session,
                    "tools/call",
                    {"name": tool, "arguments": arguments},
                    timeout,
                    outflow.sanitizing_progress(session, on_progress, progress),
                    exchange=exchange,
                )
            if interactive.input_required(session, reply):
                if not _takes_input_required(exchange):
                    raise _cannot_give_input(f"tool {tool!r}")
                needed = await interactive.needed_input(session, reply, f"tool {tool!r}")
                return ToolCallOutcome(
                    result=None,
                    findings=progress.findings() + needed.findings,
                    approval=approval,
                    input_required=needed.value,
                )
            small = outflow.small(reply)
            # A small result against a plain outputSchema (or none) is parsed and checked on the loop.
            quick = small and checked.plain_output
            result = await outflow.run_guard_work(quick, parse_call_result, checked, reply.result)
            what = f"the result of tool {tool!r}"
            clean = await outflow.sanitize(session, results.sanitize_call_result, result, what, inline=small)
        return ToolCallOutcome(result=clean.value, findings=progress.findings() + clean.findings, approval=approval)

    async def list_resources(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[list[mcp_types.Resource]]:
        async with self._serving(session_id, caller, "resources/list", {}, "resources") as entry:
            session = self._offering(session_id, caller, "resources", entry)
            async with self._guarding(session):
                with self._gate.call_slot(caller, session.id):
                    pages = await listing.pages(
                        self._request,
                        session,
                        "resources/list",
                        mcp_types.ListResourcesResult,
                        timeout,
                        self._settings.max_message_bytes,
                    )
                listed = [r for page in pages for r in page.resources]
                clean = await outflow.sanitize(session, results.sanitize_resources, listed, "the resource list")
            return self._returning(session, entry, clean)

    async def read_resource(
        self, session_id: str, uri: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[list[mcp_types.TextResourceContents | mcp_types.BlobResourceContents]]:
        """The contents alone (what gRPC returns); a server asking for input is refused (no exchange to give it)."""
        read = await self.read_resource_result(session_id, uri, caller=caller, timeout=timeout)
        return Sanitized(list(read.value.contents), read.findings)

    @overload
    async def read_resource_result(
        self, session_id: str, uri: str, *, caller: str, timeout: float | None = None, exchange: None = None
    ) -> Sanitized[mcp_types.ReadResourceResult]: ...

    @overload
    async def read_resource_result(
        self, session_id: str, uri: str, *, caller: str, timeout: float | None = None, exchange: Exchange
    ) -> Sanitized[mcp_types.ReadResourceResult | mcp_types.InputRequiredResult]: ...

    @overload  # the door's view (runner/door/calls.py): an exchange or not
    async def read_resource_result(
        self, session_id: str, uri: str, *, caller: str, timeout: float | None = None, exchange: Exchange | None = None
    ) -> Sanitized[mcp_types.ReadResourceResult | mcp_types.InputRequiredResult]: ...

    async def read_resource_result(
        self, session_id: str, uri: str, *, caller: str, timeout: float | None = None, exchange: Exchange | None = None
    ) -> (
        Sanitized[mcp_types.ReadResourceResult]
        | Sanitized[mcp_types.ReadResourceResult | mcp_types.InputRequiredResult]
    ):
        """The whole ReadResourceResult, its contents sanitized; or (2026-07-28) the server's input request, when
        the caller can take one (``_takes_input_required``), else it is refused, within the request's record."""
        async with self._serving(session_id, caller, "resources/read", {"uri": uri}, "resources", uri) as entry:
            session = self._offering(session_id, caller, "resources", entry)
            async with self._guarding(session):
                self._decide(session, caller, "resources", uri)
                with self._gate.call_slot(caller, session.id):
                    reply = await self._request_sized(
                        session, "resources/read", {"uri": uri}, timeout, None, exchange=exchange
                    )
                what = f"contents of {uri!r}"
                if interactive.input_required(session, reply):
                    if not _takes_input_required(exchange):
                        raise _cannot_give_input(f"resource {uri!r}")
                    needed = await interactive.needed_input(session, reply, f"resource {uri!r}")
                    return self._input_required(session, entry, needed)
                small = outflow.small(reply)
                read = mcp_types.ReadResourceResult
                result = await outflow.run_guard_work(small, parse_result, read, reply.result, what)
                clean = await outflow.sanitize(
                    session, results.sanitize_resource_contents, list(result.contents), what, inline=small
                )
            answer = Sanitized(result.model_copy(update={"contents": clean.value}), clean.findings)
            # Recorded as before: the contents as returned.
            self._returning(session, entry, clean)
            return answer

    async def list_prompts(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[list[mcp_types.Prompt]]:
        async with self._serving(session_id, caller, "prompts/list", {}, "prompts") as entry:
            session = self._offering(session_id, caller, "prompts", entry)
            async with self._guarding(session):
                with self._gate.call_slot(caller, session.id):
                    pages = await listing.pages(
                        self._request,
                        session,
                        "prompts/list",
                        mcp_types.ListPromptsResult,
                        timeout,
                        self._settings.max_message_bytes,
                    )
                listed = [p for page in pages for p in page.prompts]
                clean = await outflow.sanitize(session, results.sanitize_prompts, listed, "the prompt list")
            return self._returning(session, entry, clean)

    @overload
    async def get_prompt(
        self,
        session_id: str,
        name: str,
        arguments: dict[str, str],
        *,
        caller: str,
        timeout: float | None = None,
        exchange: None = None,
    ) -> Sanitized[mcp_types.GetPromptResult]: ...

    @overload
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

    async def get_prompt(
        self,
        session_id: str,
        name: str,
        arguments: dict[str, str],
        *,
        caller: str,
        timeout: float | None = None,
        exchange: Exchange | None = None,
    ) -> Sanitized[mcp_types.GetPromptResult] | Sanitized[mcp_types.GetPromptResult | mcp_types.InputRequiredResult]:
        """The prompt's messages; with an ``exchange`` (2026-07-28 era), possibly the server's input request
        instead. Without one, a server asking for input is refused: nobody could give it."""
        params = {"name": name, "arguments": arguments}
        async with self._serving(session_id, caller, "prompts/get", params, "prompts", name) as entry:
            session = self._offering(session_id, caller, "prompts", entry)
            async with self._guarding(session):
                self._decide(session, caller, "prompts", name)
                with self._gate.call_slot(caller, session.id):
                    reply = await self._request_sized(
                        session, "prompts/get", dict(params), timeout, None, exchange=exchange
                    )
                tracing.known_target(name)  # the server answered for it: a prompt of the server's
                what = f"prompt {name!r}"
                if interactive.input_required(session, reply):
                    if not _takes_input_required(exchange):
                        raise _cannot_give_input(what)
                    needed = await interactive.needed_input(session, reply, what)
                    return self._input_required(session, entry, needed)
                small = outflow.small(reply)
                prompt = mcp_types.GetPromptResult
                result = await outflow.run_guard_work(small, parse_result, prompt, reply.result, what)
                clean = await outflow.sanitize(session, results.sanitize_prompt_result, result, what, inline=small)
            return self._returning(session, entry, clean)

    def _input_required(
        self, session: LiveSession, entry: RequestEntry, answer: Sanitized[mcp_types.InputRequiredResult]
    ) -> Sanitized[mcp_types.InputRequiredResult]:
        """An input-required answer goes to the caller: recorded with its state as a digest."""
        entry.outcome = "input_required"
        self._returning(session, entry, answer)
        entry.returned["result"] = interactive.recorded(session, answer.value)
        return answer


def _takes_input_required(exchange: Exchange | None) -> bool:
    """Whether the caller can be handed a server's input-required answer: only a 2026-07-28 client can, and it
    answers the server that way alone; a caller with an ``on_input`` handler answers server requests while the
    request runs (gRPC, a stateful door session) and has no way to pass an input-required answer on."""
    return exchange is not None and exchange.on_input is None


def _cannot_give_input(what: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the server asks for the client's input before it answers for {what}, which this caller cannot give "
        "(only a 2026-07-28 MCP client can)"
    )
