"""The door's MCP server for one profile: the SDK's low-level ``Server``, each handler one SessionManager call.

The HTTP layer (``runner.door.http``) has already named the caller and, for a stateful session, bound it to its
sandbox (``SCOPE_BINDING`` in the ASGI scope, opened at ``initialize``); a stateless 2026-07-28 request gets the
caller's lease. Errors of the runner become JSON-RPC errors in ``runner.door.errors`` only.

Approvals: a tool whose rule asks for approval is shown to the client as an elicitation naming the approval id
(accept = wait for the approver's decision, decline or cancel = give up) on a stateful session whose client can
elicit; in the stateless era as an input-required result carrying that elicitation, its ``requestState`` sealed
with the approval id; otherwise as a JSON-RPC error naming the approval id. The door remembers a call waiting for
approval, so the same call (tool and arguments) sent again claims the approval once an approver has decided.

A stateless request on a lease whose server speaks only 2025-11-25 (the agent fell back to ``initialize``) has its
call held across the client's requests, the server's requests shown as input-required rounds
(``runner.door.translate``).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.metadata
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from runner.approvals import Approval, ApprovalState
from runner.audit import records
from runner.door.approvals import approval_elicitation, approval_message, given_up
from runner.door.calls import DoorManager
from runner.door.errors import error_code, to_mcp_error
from runner.door.leases import Binding, Leases
from runner.door.seal import Opened, StateRefused, StateSeal, target_of
from runner.door.talkback import asker, door_capabilities, notifier
from runner.door.translate import Paused, Start, Translator
from runner.errors import FailedPrecondition, RunnerError
from runner.observe import tracing
from runner.sessions.models import STATELESS_PROTOCOL, Exchange, ProgressEvent

log = logging.getLogger(__name__)

SCOPE_CALLER = "mcp_runner.caller"
SCOPE_BINDING = "mcp_runner.binding"
SCOPE_LEASE_REFUSED = "mcp_runner.lease_refused"  # why a stateless request's lease did not open (a RunnerError)
REQUEST_SCOPE: contextvars.ContextVar[MutableMapping[str, Any] | None] = contextvars.ContextVar(
    "mcp_runner_door_request_scope", default=None
)
"""The ASGI scope of the stateless request being served, set by the HTTP layer around the SDK's handling: the
SDK's ``Mcp-Param-*`` check asks for a tool's schema by name alone, synchronously in that request's task."""
APPROVAL_INPUT = "mcp-runner/approval"
"""The key of the runner's own elicitation in an input-required result."""
try:
    RUNNER_VERSION = importlib.metadata.version("mcp-sandbox-runner")
except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
    RUNNER_VERSION = "0"

Ctx = ServerRequestContext[Any, Any]
P = TypeVar("P")
R = TypeVar("R")
Note = Callable[[str, str, str, Mapping[str, Any]], None]
"""Records an audit note: (kind, session id, caller, data)."""


def _translated(handler: Callable[[Ctx, P], Awaitable[R]]) -> Callable[[Ctx, P], Awaitable[R]]:
    async def translating(ctx: Ctx, params: P) -> R:
        # The client's trace context (params._meta.traceparent) is the parent of the runner's spans for it.
        meta = getattr(params, "meta", None)
        entry: tracing.Attributes = {"jsonrpc.request.id": tracing.cut(str(ctx.request_id))}
        if ctx.protocol_version:
            entry["mcp.protocol.version"] = tracing.cut(ctx.protocol_version)
        try:
            with tracing.Entering(meta if isinstance(meta, dict) else None, entry):
                return await handler(ctx, params)
        except RunnerError as exc:
            raise to_mcp_error(exc) from None

    return translating


def _stateless(ctx: Ctx) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def _scope(ctx: Ctx) -> MutableMapping[str, Any]:
    request = ctx.request
    return request.scope if request is not None else {}


class DoorServer:
    """Builds the profile's ``Server`` and serves its handlers through ``manager``."""

    def __init__(self, profile: str, manager: DoorManager, leases: Leases, seal: StateSeal, note: Note) -> None:
        self._profile = profile
        self._manager = manager
        self._leases = leases
        self._seal = seal
        self._note = note
        self.translator = Translator(seal.ttl_s)
        server: Server[Any] = Server(
            f"mcp-runner/{profile}",
            version=RUNNER_VERSION,
            title=f"profile {profile!r} in an mcp-runner sandbox",
            on_list_tools=_translated(self._list_tools),
            on_call_tool=_translated(self._call_tool),
            on_list_resources=_translated(self._list_resources),
            on_list_resource_templates=_translated(self._list_templates),
            on_read_resource=_translated(self._read_resource),
            on_subscribe_resource=_translated(self._subscribe),
            on_unsubscribe_resource=_translated(self._unsubscribe),
            on_list_prompts=_translated(self._list_prompts),
            on_get_prompt=_translated(self._get_prompt),
            on_completion=_translated(self._complete),
        )
        # Registered apart: the constructor warns that logging is deprecated at 2026-07-28, which it is; the
        # handshake era still has it, and servers still use it.
        server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, _translated(self._set_level))
        server.add_request_handler("server/discover", types.RequestParams, _translated(self._discover))
        server.middleware.append(self._initialize)
        # The 2026-07-28 transport checks Mcp-Param-* headers against the tool's schema; without this it would ask
        # the sandbox for tools/list before every call.
        server.get_tool_input_schema = self._tool_schema
        self.server = server

    def _tool_schema(self, name: str) -> Mapping[str, Any] | None:
        """The tool's schema in the last listing of the requesting caller's own lease (None: not checked, as for a
        caller with no lease yet): one sandbox's listing never judges another caller's request."""
        scope = REQUEST_SCOPE.get()
        caller = scope.get(SCOPE_CALLER) if scope is not None else None
        lease = self._leases.find(caller, self._profile) if isinstance(caller, str) else None
        return lease.tool_schemas.get(name) if lease is not None else None

    # -- binding a request to its sandbox ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _bound(self, ctx: Ctx) -> AsyncIterator[Binding]:
        scope = _scope(ctx)
        binding = scope.get(SCOPE_BINDING)
        if isinstance(binding, Binding):
            with binding.busy():
                yield binding
            return
        if not _stateless(ctx) or SCOPE_CALLER not in scope:
            raise MCPError(code=types.INVALID_REQUEST, message="this request belongs to no session: initialize first")
        try:
            leased = await self._leases.acquire(scope[SCOPE_CALLER], self._profile)
        except RunnerError as exc:
            scope[SCOPE_LEASE_REFUSED] = exc  # the HTTP layer answers it with its status, as an initialize's refusal
            raise
        with leased.busy():  # no await since the acquire: a reap cannot end it in between
            yield leased

    async def _initialize(self, ctx: Ctx, call_next: CallNext) -> HandlerResult:
        """Declares the sandboxed server (opened by the HTTP layer) and routes its session-level traffic."""
        result = await call_next(ctx)
        binding = _scope(ctx).get(SCOPE_BINDING)
        if ctx.method != "initialize" or not isinstance(binding, Binding) or not isinstance(result, dict):
            return result
        opened = binding.opened
        result["capabilities"] = door_capabilities(opened.capabilities, stateless=False)
        result["serverInfo"] = {
            "name": f"mcp-runner/{self._profile}",
            "title": f"{opened.server.name} {opened.server.version} in an mcp-runner sandbox",
            "version": RUNNER_VERSION,
        }
        if opened.server.instructions:
            result["instructions"] = opened.server.instructions
        self._manager.listen(
            binding.session_id, caller=binding.caller,
            on_notification=notifier(ctx.session, None), on_input=asker(ctx.session, None),
        )  # fmt: skip
        return result

    async def _discover(self, ctx: Ctx, params: types.RequestParams) -> types.DiscoverResult:
        async with self._bound(ctx) as binding:
            opened = binding.opened
            capabilities = types.ServerCapabilities.model_validate(
                door_capabilities(opened.capabilities, stateless=True)
            )
            return types.DiscoverResult(
                supported_versions=list(MODERN_PROTOCOL_VERSIONS),
                capabilities=capabilities,
                instructions=opened.server.instructions,
            )

    def _exchange(self, ctx: Ctx, server_state: str | None, responses: Any) -> Exchange:
        if _stateless(ctx):
            capabilities = ctx.session.client_capabilities
            return Exchange(
                on_notification=notifier(ctx.session, ctx.request_id),
                client_capabilities=capabilities.model_dump(by_alias=True, mode="json", exclude_none=True)
                if capabilities is not None else None,
                input_responses={
                    key: answer.model_dump(by_alias=True, mode="json", exclude_none=True)
                    for key, answer in (responses or {}).items()
                } or None,
                request_state=server_state,
            )  # fmt: skip
        related = ctx.request_id
        return Exchange(on_input=asker(ctx.session, related), on_notification=notifier(ctx.session, related))

    def _translating(self, ctx: Ctx, binding: Binding) -> bool:
        """A 2026 client on a lease whose server speaks 2025: its server's requests become input-required rounds."""
        return _stateless(ctx) and binding.opened.protocol != STATELESS_PROTOCOL

    def _unseal(self, ctx: Ctx, binding: Binding, params: Mapping[str, Any]) -> Opened | None:
        """What the request's sealed state holds (None: no state). Every input-required result of this door carries
        a sealed state, so ``inputResponses`` without one answer no round of it: refused, not passed on."""
        state = params.get("requestState")
        if not _stateless(ctx):
            return None
        try:
            if state is None:
                if params.get("inputResponses") is not None:
                    raise StateRefused("missing", "inputResponses need the requestState of the input-required result "
                                       "they answer: send it with them, or the request again without inputResponses")
                return None
            check = self.translator.checker(binding, params) if self._translating(ctx, binding) else None
            return self._seal.open(
                state, caller=binding.caller, lease=binding.session_id, method=ctx.method, params=params, check=check
            )
        except StateRefused as exc:
            log.warning("refused a requestState of %r on %s: %s", binding.caller, ctx.method, exc.reason)
            self._note(records.VALIDATION, binding.session_id, binding.caller, {
                "door": binding.door, "method": ctx.method, "what": "requestState", "reason": exc.reason,
                "error": {"status": exc.status.value, "message": exc.message},
            })  # fmt: skip
            raise

    def _sealed(
        self, ctx: Ctx, binding: Binding, result: types.InputRequiredResult, approval_id: str = "", held_call: str = ""
    ) -> types.InputRequiredResult:
        token = self._seal.seal(
            caller=binding.caller, lease=binding.session_id, method=ctx.method, params=ctx.params or {},
            server_state=result.request_state, approval_id=approval_id, held_call=held_call,
        )  # fmt: skip
        return result.model_copy(update={"request_state": token})

    async def _held(
        self, ctx: Ctx, binding: Binding, opened: Opened | None, start: Start[R]
    ) -> R | types.InputRequiredResult:
        """The translated call's next step: its result, or its server's requests as a sealed input-required one."""
        step = await self.translator.run(ctx.session, ctx.request_id, binding, opened, start)
        if not isinstance(step, Paused):
            return step
        try:
            return self._sealed(ctx, binding, step.result, held_call=step.held_call)
        except BaseException:  # no state to retry with: nothing could ever resume the call
            self.translator.abandon(step.held_call)
            raise

    async def _cancellable(self, ctx: Ctx, binding: Binding, call: Callable[[], Awaitable[R]]) -> R:
        """Runs ``call``; the HTTP layer cancels it (and so the request in the sandbox) if its session's client
        leaves. A stateless request is the SDK's to cancel, and its id is unique only to its own HTTP request."""
        if _stateless(ctx):
            return await call()
        key = str(ctx.request_id)
        with anyio.CancelScope() as scope:
            binding.running[key] = scope
            try:
                return await call()
            finally:
                binding.running.pop(key, None)
        raise MCPError(code=-32800, message="the client left before the request ended; it was cancelled")

    # -- tools ---------------------------------------------------------------------------------------

    async def _list_tools(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        async with self._bound(ctx) as binding:
            tools = await self._manager.list_tools(binding.session_id, caller=binding.caller)
            binding.remember(tools.value)
            return types.ListToolsResult(tools=tools.value)

    async def _call_tool(
        self, ctx: Ctx, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        async with self._bound(ctx) as binding:
            wire = ctx.params or {}
            opened = self._unseal(ctx, binding, wire)
            key = "\0".join(target_of("tools/call", {"name": params.name, "arguments": params.arguments}))
            approval_id = binding.pending_approvals.get(key)
            responses = params.input_responses
            if opened is not None and opened.approval_id:  # the answer to the runner's own elicitation
                approval_id, responses = opened.approval_id, None
                answer = (params.input_responses or {}).get(APPROVAL_INPUT)
                if not isinstance(answer, types.ElicitResult) or answer.action != "accept":
                    binding.pending_approvals.pop(key)
                    raise given_up(params.name, approval_id)
            exchange = self._exchange(ctx, opened.server_state if opened else None, responses)

            async def progress(event: ProgressEvent) -> None:
                await ctx.session.report_progress(event.progress, event.total, event.message)

            elicits = not _stateless(ctx) and ctx.session.check_client_capability(
                types.ClientCapabilities(elicitation=types.ElicitationCapability())
            )

            async def on_approval(approval: Approval) -> None:
                if approval.state is not ApprovalState.PENDING:
                    return
                answer = await ctx.session.elicit_form(
                    approval_message(approval), {"type": "object", "properties": {}}, ctx.request_id
                )
                if answer.action != "accept":
                    raise given_up(approval.tool, approval.approval_id)

            if self._translating(ctx, binding):
                step = await self._held(ctx, binding, opened, lambda held, held_progress: self._manager.call_tool(
                    binding.session_id, params.name, dict(params.arguments or {}), caller=binding.caller,
                    approval_id=approval_id, on_progress=held_progress, exchange=held,
                ))  # fmt: skip
                if isinstance(step, types.InputRequiredResult):
                    return step
                outcome = step
            else:
                outcome = await self._cancellable(ctx, binding, lambda: self._manager.call_tool(
                    binding.session_id, params.name, dict(params.arguments or {}), caller=binding.caller,
                    approval_id=approval_id, on_progress=progress, on_approval=on_approval if elicits else None,
                    exchange=exchange,
                ))  # fmt: skip
            if approval_id:
                binding.pending_approvals.pop(key)
            if outcome.input_required is not None:
                return self._sealed(ctx, binding, outcome.input_required)
            if outcome.result is not None:
                return outcome.result
            pending = outcome.approval
            assert pending is not None  # no result: the call waits for this approval
            binding.pending_approvals.add(key, pending.approval_id)
            if _stateless(ctx):
                asking = types.InputRequiredResult(input_requests={APPROVAL_INPUT: approval_elicitation(pending)})
                return self._sealed(ctx, binding, asking, pending.approval_id)
            waiting = FailedPrecondition(
                f"tool {params.name!r} needs approval {pending.approval_id} (rule: {pending.rule}): an approver "
                f"decides with `mcp-runner approvals approve {pending.approval_id}`; then call it again with the same "
                "arguments"
            )
            raise MCPError(code=error_code(waiting), message=waiting.message, data={
                "status": waiting.status.value, "approvalId": pending.approval_id,
            })  # fmt: skip

    # -- resources -----------------------------------------------------------------------------------

    async def _list_resources(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        async with self._bound(ctx) as binding:
            listed = await self._manager.list_resources(binding.session_id, caller=binding.caller)
            return types.ListResourcesResult(resources=listed.value)

    async def _list_templates(
        self, ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        async with self._bound(ctx) as binding:
            listed = await self._manager.list_resource_templates(binding.session_id, caller=binding.caller)
            return types.ListResourceTemplatesResult(resource_templates=listed.value)

    async def _read_resource(
        self, ctx: Ctx, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        async with self._bound(ctx) as binding:
            opened = self._unseal(ctx, binding, ctx.params or {})
            if self._translating(ctx, binding):
                step = await self._held(ctx, binding, opened, lambda held, _: self._manager.read_resource_result(
                    binding.session_id, str(params.uri), caller=binding.caller, exchange=held
                ))  # fmt: skip
                return step if isinstance(step, types.InputRequiredResult) else step.value
            exchange = self._exchange(ctx, opened.server_state if opened else None, params.input_responses)
            read = await self._cancellable(ctx, binding, lambda: self._manager.read_resource_result(
                binding.session_id, str(params.uri), caller=binding.caller, exchange=exchange
            ))  # fmt: skip
            value = read.value
            return self._sealed(ctx, binding, value) if isinstance(value, types.InputRequiredResult) else value

    async def _subscribe(self, ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        async with self._bound(ctx) as binding:
            await self._manager.subscribe(binding.session_id, str(params.uri), caller=binding.caller)
            return types.EmptyResult()

    async def _unsubscribe(self, ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        async with self._bound(ctx) as binding:
            await self._manager.unsubscribe(binding.session_id, str(params.uri), caller=binding.caller)
            return types.EmptyResult()

    # -- prompts, completion, logging ----------------------------------------------------------------

    async def _list_prompts(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        async with self._bound(ctx) as binding:
            listed = await self._manager.list_prompts(binding.session_id, caller=binding.caller)
            return types.ListPromptsResult(prompts=listed.value)

    async def _get_prompt(
        self, ctx: Ctx, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        async with self._bound(ctx) as binding:
            opened = self._unseal(ctx, binding, ctx.params or {})
            if self._translating(ctx, binding):
                step = await self._held(ctx, binding, opened, lambda held, _: self._manager.get_prompt(
                    binding.session_id, params.name, dict(params.arguments or {}), caller=binding.caller, exchange=held
                ))  # fmt: skip
                return step if isinstance(step, types.InputRequiredResult) else step.value
            exchange = self._exchange(ctx, opened.server_state if opened else None, params.input_responses)
            got = await self._cancellable(ctx, binding, lambda: self._manager.get_prompt(
                binding.session_id, params.name, dict(params.arguments or {}), caller=binding.caller, exchange=exchange
            ))  # fmt: skip
            value = got.value
            return self._sealed(ctx, binding, value) if isinstance(value, types.InputRequiredResult) else value

    async def _complete(self, ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        async with self._bound(ctx) as binding:
            return await self._manager.complete(binding.session_id, params, caller=binding.caller)

    async def _set_level(self, ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        async with self._bound(ctx) as binding:
            await self._manager.set_logging_level(binding.session_id, params.level, caller=binding.caller)
            return types.EmptyResult()
