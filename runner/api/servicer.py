"""The ``mcp_runner.v1.Runner`` servicer: protobuf in, domain calls, protobuf out.

Conversion only — every decision belongs to the ``SessionService`` below it.
Every caller-controlled field passes the door's checks (``runner.api.inputs``)
on its way in, so what the layers below see is already sized, shaped and
recordable; undecodable request bytes never get here (``runner.api.decoding``).
Each RPC first learns who is calling from the ``Authenticator`` (client
certificate or bearer token), inside the error translation, so a missing or
wrong credential is UNAUTHENTICATED like any other domain error.
``RunnerError`` becomes a gRPC status in exactly one place (``statuses.translate_errors``)
through the ``Status`` table; anything else is a bug, logged with its traceback
and reported as INTERNAL without details (they may carry sandbox output).

The audit RPCs go to an ``AuditAccess`` instead, which decides who may read
what; without one (the audit log disabled) they answer FAILED_PRECONDITION.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import mcp_types

from runner.api import convert, inputs
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api.auth import Authenticator
from runner.api.catalog_rpcs import CatalogRpcs, CatalogService
from runner.api.protocol_convert import input_to_proto, step_to_proto
from runner.api.protocol_rpcs import ProtocolRpcs, ProtocolService
from runner.api.statuses import Context, deadline_of, entering, translate_errors
from runner.approvals import Approval
from runner.audit.records import AuditQuery, AuditRecord, ReplayVerdict, Verification
from runner.errors import FailedPrecondition, RunnerError, Unauthenticated
from runner.sessions.continuations import (
    Continuations,
    Conversation,
    InputRequest,
    PendingCall,
    PendingInput,
    unanswered,
)
from runner.sessions.models import (
    ApprovalCallback,
    Exchange,
    LimitsRequest,
    OpenedSession,
    ProgressCallback,
    ProgressEvent,
    Sanitized,
    SessionInfo,
    ToolCallOutcome,
)

log = logging.getLogger(__name__)

AUDIT_DISABLED = "this service runs with the audit log disabled (settings: audit.enabled: false)"
INLINE_ARGUMENTS_CHARS = 64 * 1024
"""Tool arguments up to this size are checked on the event loop (a thread hop would cost more)."""
EXPORT_CHUNK_BYTES = 64 * 1024
"""ExportSession packs whole lines into messages of about this size: few messages, none near the size limit."""


class SessionService(ProtocolService, CatalogService, Protocol):
    """What the servicer needs from the layer below (the SessionManager satisfies it structurally)."""

    async def open(
        self,
        profile: str,
        *,
        caller: str,
        labels: Mapping[str, str] | None = None,
        limits: LimitsRequest | None = None,
        timeout: float | None = None,
    ) -> OpenedSession: ...

    async def close(self, session_id: str, *, caller: str) -> SessionInfo: ...

    def list_sessions(self, *, caller: str) -> builtins.list[SessionInfo]: ...

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

    async def read_resource(
        self, session_id: str, uri: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[builtins.list[mcp_types.TextResourceContents | mcp_types.BlobResourceContents]]: ...

    async def list_prompts(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[builtins.list[mcp_types.Prompt]]: ...

    async def get_prompt(
        self, session_id: str, name: str, arguments: dict[str, str], *, caller: str, timeout: float | None = None
    ) -> Sanitized[mcp_types.GetPromptResult]: ...

    def list_approvals(self, *, caller: str, include_decided: bool = False) -> builtins.list[Approval]: ...

    def watch_approvals(self, *, caller: str) -> AsyncIterator[Approval]: ...

    def decide_approval(self, approval_id: str, *, caller: str, approve: bool, reason: str) -> Approval: ...


class AuditAccess(Protocol):
    """What the audit RPCs need: reading, exporting, verifying and replaying, each deciding what ``caller`` may do."""

    def query(self, query: AuditQuery, *, caller: str) -> AsyncIterator[AuditRecord]: ...

    def export_session(self, session_id: str, *, caller: str) -> AsyncIterator[str]:
        """Whole JSON lines, oldest record first."""

    async def verify(self, *, caller: str) -> Verification: ...

    def replay(self, session_id: str, *, caller: str, timeout: float | None) -> AsyncIterator[ReplayVerdict]: ...


_DONE = object()
MAX_PROGRESS_WAITING = 64


def _answered_to_nobody(task: asyncio.Task[Any]) -> None:
    """A stream's call that ended as its caller left: its refusal is on record and heard by nobody, so it is
    retrieved here (asyncio logged each as an ERROR with a traceback); only a bug is worth the service log."""
    error = None if task.cancelled() else task.exception()
    if error is not None and not isinstance(error, RunnerError):
        log.error("CallToolStream failed unexpectedly after its caller left", exc_info=error)


class _StreamUpdates:
    """What one CallToolStream has yet to send, in order; bounded whatever the server sends, never blocking it.

    A server may send progress far faster than its caller reads (50 000 frames once took the service from 87 to
    319 MiB). Progress is a level, not a log: past ``MAX_PROGRESS_WAITING`` waiting frames the oldest waiting
    one gives way, so a slow caller still sees the latest. Approvals and the end are never dropped (a call has
    a few at most), and the channel that delivers progress never waits for the caller.
    """

    def __init__(self) -> None:
        self._items: deque[tuple[bool, Any]] = deque()  # (is progress, item)
        self._progress = 0
        self._added = asyncio.Event()

    def put(self, item: Any, *, progress: bool = False) -> None:
        if progress and self._progress >= MAX_PROGRESS_WAITING:
            oldest = next(i for i, (is_progress, _) in enumerate(self._items) if is_progress)
            del self._items[oldest]
        elif progress:
            self._progress += 1
        self._items.append((progress, item))
        self._added.set()

    async def get(self) -> Any:
        while not self._items:
            self._added.clear()
            await self._added.wait()
        is_progress, item = self._items.popleft()
        self._progress -= is_progress
        return item


class RunnerServicer(ProtocolRpcs, CatalogRpcs):
    """Implements every RPC of ``mcp_runner.v1.Runner`` (registered with ``add_RunnerServicer_to_server``)."""

    _manager: SessionService

    def __init__(
        self,
        manager: SessionService,
        authenticator: Authenticator,
        audit: AuditAccess | None = None,
        continuations: Continuations | None = None,
    ) -> None:
        self._manager = manager
        self._auth = authenticator
        self._audit = audit
        self._continuations = Continuations() if continuations is None else continuations
        self._watches = {}

    async def OpenSession(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "OpenSession"), entering(context, "OpenSession"):
            caller = self._auth.identify(context)
            opened = await self._manager.open(
                inputs.name(request.profile, "profile"),
                caller=caller,
                labels=inputs.labels(request.labels),
                limits=convert.limits_from_proto(request),
                timeout=deadline_of(context),
            )
            return convert.opened_to_proto(opened)

    async def CloseSession(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "CloseSession"):
            caller = self._auth.identify(context)
            info = await self._manager.close(convert.require_session_id(request.session_id), caller=caller)
            return pb.CloseSessionResponse(session=convert.session_to_proto(info))

    async def GetSession(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "GetSession"):
            caller = self._auth.identify(context)
            info = self._manager.get(convert.require_session_id(request.session_id), caller=caller)
            return pb.GetSessionResponse(session=convert.session_to_proto(info))

    async def ListSessions(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "ListSessions"):
            sessions = self._manager.list_sessions(caller=self._auth.identify(context))
            return pb.ListSessionsResponse(sessions=[convert.session_to_proto(s) for s in sessions])

    async def ListTools(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "ListTools"), entering(context, "ListTools"):
            caller = self._auth.identify(context)
            tools = await self._manager.list_tools(
                convert.require_session_id(request.session_id), caller=caller, timeout=deadline_of(context)
            )
            return pb.ListToolsResponse(
                tools=[convert.tool_to_proto(t) for t in tools.value],
                findings=convert.findings_to_proto(tools.findings),
            )

    async def CallTool(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "CallTool"), entering(context, "CallTool"):
            caller = self._auth.identify(context)
            session_id, tool, arguments, timeout = await self._call_args(request, context)
            if request.answers_input:
                # The call outlives this RPC when it waits for an answer: only timeout_ms bounds it as a whole.
                pending = PendingCall(self._continuations, caller=caller, session_id=session_id)
                pending.start(self._manager.call_tool(
                    session_id, tool, arguments, caller=caller, approval_id=request.approval_id,
                    timeout=request.timeout_ms / 1000 or None, exchange=pending.exchange,
                ))  # fmt: skip
                return step_to_proto(await pending.next_step(deadline_of(context)))
            outcome = await self._manager.call_tool(
                session_id, tool, arguments, caller=caller, approval_id=request.approval_id, timeout=timeout
            )
            return convert.outcome_to_proto(outcome)

    async def CallToolStream(self, request: Any, context: Context) -> AsyncIterator[Any]:
        async with translate_errors(context, "CallToolStream"):
            caller = self._auth.identify(context)
            session_id, tool, arguments, timeout = await self._call_args(request, context)
            queue = _StreamUpdates()

            async def on_progress(event: ProgressEvent) -> None:
                queue.put(convert.progress_to_proto(event), progress=True)

            async def on_approval(approval: Approval) -> None:
                queue.put(pb.CallToolStreamResponse(approval=convert.approval_to_proto(approval)))

            expired: list[InputRequest] = []

            def on_expiry(pending: PendingInput) -> None:
                expired.append(pending.request)
                task.cancel()

            def deliver(shown: InputRequest) -> None:
                queue.put(pb.CallToolStreamResponse(input_required=input_to_proto(shown)))

            conversation = Conversation(
                self._continuations, caller=caller, session_id=session_id, deliver=deliver, on_expiry=on_expiry,
                gone="can no longer be answered: the stream it was sent on ended",
            )  # fmt: skip
            exchange = Exchange(on_input=conversation.on_input) if request.answers_input else None

            async def run() -> ToolCallOutcome:
                try:
                    return await self._manager.call_tool(
                        session_id, tool, arguments, caller=caller, approval_id=request.approval_id,
                        timeout=timeout, on_progress=on_progress, on_approval=on_approval,
                        exchange=exchange,
                    )
                finally:
                    queue.put(_DONE)

            with entering(context, "CallToolStream"):
                task = asyncio.create_task(run())
            try:
                while (item := await queue.get()) is not _DONE:
                    yield item
            except BaseException:
                # The caller went away mid-call, or in the very turn the call ended: nobody hears how it ends.
                task.cancel()
                task.add_done_callback(_answered_to_nobody)
                raise
            finally:
                conversation.end()
            if task.cancelled() and expired:
                raise unanswered(expired[0], self._continuations.ttl_s)
            outcome = await task  # done: run() puts _DONE as it ends
            yield pb.CallToolStreamResponse(result=convert.outcome_to_proto(outcome))

    async def ListResources(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "ListResources"), entering(context, "ListResources"):
            caller = self._auth.identify(context)
            resources = await self._manager.list_resources(
                convert.require_session_id(request.session_id), caller=caller, timeout=deadline_of(context)
            )
            return pb.ListResourcesResponse(
                resources=[convert.resource_to_proto(r) for r in resources.value],
                findings=convert.findings_to_proto(resources.findings),
            )

    async def ReadResource(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "ReadResource"), entering(context, "ReadResource"):
            caller = self._auth.identify(context)
            contents = await self._manager.read_resource(
                convert.require_session_id(request.session_id), inputs.uri(request.uri), caller=caller,
                timeout=deadline_of(context),
            )
            return convert.read_result_to_proto(contents.value, contents.findings)

    async def ListPrompts(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "ListPrompts"), entering(context, "ListPrompts"):
            caller = self._auth.identify(context)
            prompts = await self._manager.list_prompts(
                convert.require_session_id(request.session_id), caller=caller, timeout=deadline_of(context)
            )
            return pb.ListPromptsResponse(
                prompts=[convert.prompt_to_proto(p) for p in prompts.value],
                findings=convert.findings_to_proto(prompts.findings),
            )

    async def GetPrompt(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "GetPrompt"), entering(context, "GetPrompt"):
            caller = self._auth.identify(context)
            result = await self._manager.get_prompt(
                convert.require_session_id(request.session_id),
                inputs.name(request.name, "name"),
                inputs.prompt_arguments(request.arguments),
                caller=caller,
                timeout=deadline_of(context),
            )
            return convert.prompt_result_to_proto(result.value, result.findings)

    async def ListApprovals(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "ListApprovals"):
            approvals = self._manager.list_approvals(
                caller=self._auth.identify(context), include_decided=request.include_decided
            )
            return pb.ListApprovalsResponse(approvals=[convert.approval_to_proto(a) for a in approvals])

    async def WatchApprovals(self, request: Any, context: Context) -> AsyncIterator[Any]:
        async with translate_errors(context, "WatchApprovals"):
            caller = self._auth.identify(context)
            async for approval in self._manager.watch_approvals(caller=caller):
                # A watch outlives any one call: a token revoked (or given to another caller) by a policy reload
                # ends it before the next approval, as it would refuse any new call.
                if self._auth.identify(context) != caller:
                    raise Unauthenticated("the credential this watch was opened with now names another caller")
                yield pb.WatchApprovalsResponse(approval=convert.approval_to_proto(approval))

    async def DecideApproval(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "DecideApproval"):
            caller = self._auth.identify(context)
            decided = self._manager.decide_approval(
                inputs.identifier(request.approval_id, "approval_id"), caller=caller, approve=request.approve,
                reason=inputs.reason(request.reason),
            )
            return pb.DecideApprovalResponse(approval=convert.approval_to_proto(decided))

    async def QueryAudit(self, request: Any, context: Context) -> AsyncIterator[Any]:
        async with translate_errors(context, "QueryAudit"):
            caller = self._auth.identify(context)
            audit = self._audit_access()
            async for record in audit.query(convert.audit_query_from_proto(request), caller=caller):
                yield convert.audit_record_to_proto(record)

    async def ExportSession(self, request: Any, context: Context) -> AsyncIterator[Any]:
        async with translate_errors(context, "ExportSession"):
            caller = self._auth.identify(context)
            audit = self._audit_access()
            session_id = convert.require_session_id(request.session_id)
            batch: list[str] = []
            size = 0
            async for line in audit.export_session(session_id, caller=caller):
                whole = line if line.endswith("\n") else line + "\n"
                length = len(whole.encode("utf-8"))
                if batch and size + length > EXPORT_CHUNK_BYTES:
                    yield pb.ExportSessionResponse(lines="".join(batch))
                    batch, size = [], 0
                batch.append(whole)
                size += length
            if batch:
                yield pb.ExportSessionResponse(lines="".join(batch))

    async def VerifyAudit(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "VerifyAudit"):
            caller = self._auth.identify(context)
            verification = await self._audit_access().verify(caller=caller)
            return convert.verification_to_proto(verification)

    async def ReplaySession(self, request: Any, context: Context) -> AsyncIterator[Any]:
        async with translate_errors(context, "ReplaySession"):
            caller = self._auth.identify(context)
            audit = self._audit_access()
            session_id = convert.require_session_id(request.session_id)
            timeout = deadline_of(context, request.timeout_ms)
            async for verdict in audit.replay(session_id, caller=caller, timeout=timeout):
                yield convert.verdict_to_proto(verdict)

    def _audit_access(self) -> AuditAccess:
        if self._audit is None:
            raise FailedPrecondition(AUDIT_DISABLED)
        return self._audit

    @staticmethod
    async def _call_args(request: Any, context: Context) -> tuple[str, str, dict[str, Any], float | None]:
        """The door's checks of a CallToolRequest (``approval_id`` included), before any of it goes further."""
        session_id = convert.require_session_id(request.session_id)
        tool = inputs.name(request.tool, "tool")
        inputs.identifier(request.approval_id, "approval_id", required=False)
        text: str = request.arguments_json
        # Checking a large text is ~0.1 s of CPU: off the event loop, so other sessions keep moving.
        arguments = (
            convert.parse_arguments(text) if len(text) <= INLINE_ARGUMENTS_CHARS
            else await asyncio.to_thread(convert.parse_arguments, text)
        )
        return session_id, tool, arguments, deadline_of(context, request.timeout_ms)
