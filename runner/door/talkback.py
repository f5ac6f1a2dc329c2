"""What travels from the sandbox to the door's client while a session runs: server requests and notifications.

On a stateful session the sandboxed server's requests (sampling, elicitation, roots) go to the client natively,
on the stream of the request they belong to (``related_request_id``: the POST's SSE stream) or, between requests,
on the session's standalone stream; the client's answer goes back (the host validates it against the request).
A client that did not declare the capability is not asked: the server gets -32601 naming why. Notifications
(logs, list_changed, resources/updated) go the same ways. Anything stuck on a slow client is given up after
``SEND_TIMEOUT_S`` rather than stall the sandbox's reader.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import mcp_types as types
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError, NoBackChannelError
from mcp.shared.message import ServerMessageMetadata
from pydantic import BaseModel, ValidationError

from runner.errors import JSONRPC_METHOD_NOT_FOUND, ClientDeclined
from runner.sessions.models import InputHandler, NotificationHandler, ServerNotification, ServerRequest

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 300.0
"""How long a server's request may wait for the client's answer (a person may be answering an elicitation)."""

Capabilities = types.ClientCapabilities
_REQUESTS: dict[str, tuple[type[BaseModel], type[BaseModel], types.ClientCapabilities]] = {
    "sampling/createMessage": (
        types.CreateMessageRequest, types.CreateMessageResult, Capabilities(sampling=types.SamplingCapability())
    ),
    "elicitation/create": (
        types.ElicitRequest, types.ElicitResult, Capabilities(elicitation=types.ElicitationCapability())
    ),
    "roots/list": (types.ListRootsRequest, types.ListRootsResult, Capabilities(roots=types.RootsCapability())),
}  # fmt: skip

_NOTIFICATIONS: dict[str, type[BaseModel]] = {
    "notifications/message": types.LoggingMessageNotification,
    "notifications/tools/list_changed": types.ToolListChangedNotification,
    "notifications/resources/list_changed": types.ResourceListChangedNotification,
    "notifications/prompts/list_changed": types.PromptListChangedNotification,
    "notifications/resources/updated": types.ResourceUpdatedNotification,
}


def door_capabilities(server: types.ServerCapabilities, *, stateless: bool) -> dict[str, Any]:
    """What the door declares: the sandboxed server's capabilities, less what the door does not carry.

    Experimental, extension and task capabilities are the server's own business and are not passed on. In the
    stateless era change notifications travel only on ``subscriptions/listen``, which the door does not serve.
    """
    declared = server.model_copy(update={"experimental": None, "extensions": None, "tasks": None})
    if stateless:
        if declared.tools is not None:
            declared.tools = types.ToolsCapability(list_changed=False)
        if declared.prompts is not None:
            declared.prompts = types.PromptsCapability(list_changed=False)
        if declared.resources is not None:
            declared.resources = types.ResourcesCapability(list_changed=False, subscribe=False)
    return declared.model_dump(by_alias=True, mode="json", exclude_none=True)


def input_request(request: ServerRequest) -> types.InputRequest:
    """``request`` as an input request of a 2026-07-28 ``InputRequiredResult`` (the same MCP request type)."""
    request_type = _REQUESTS[request.method][0]
    typed: Any = request_type.model_validate({"method": request.method, "params": request.params}, by_name=False)
    return typed  # type: ignore[no-any-return]


def lacking(declared: types.ClientCapabilities | None, request: ServerRequest) -> str | None:
    """What of ``request``'s needs the client's declared capabilities lack, said for the server; None: nothing.

    As the SDK's own check, and finer where a request's params ask for more: URL elicitation, sampling with tools
    or with context (a client declaring ``elicitation: {}`` can do forms only).
    """
    if request.method not in _REQUESTS:
        return f"the runner does not forward {request.method}"
    have = declared or types.ClientCapabilities()
    params = request.params
    missing: str | None = None
    if request.method == "roots/list":
        missing = "roots" if have.roots is None else None
    elif request.method == "elicitation/create":
        elicitation = have.elicitation
        if elicitation is None:
            missing = "elicitation"
        elif params.get("mode") == "url":
            missing = "elicitation.url" if elicitation.url is None else None
        elif elicitation.form is None and elicitation.url is not None:
            missing = "elicitation.form"
    elif have.sampling is None:
        missing = "sampling"
    elif params.get("tools") and have.sampling.tools is None:
        missing = "sampling.tools"
    elif params.get("includeContext", "none") != "none" and have.sampling.context is None:
        missing = "sampling.context"
    if missing is None:
        return None
    return f"the client of this request did not declare the capability {request.method} needs ({missing})"


def asker(session: ServerSession, related: types.RequestId | None) -> InputHandler:
    """Forwards the server's requests to the client: on ``related``'s stream, else the standalone one."""

    async def ask(request: ServerRequest) -> dict[str, Any]:
        known = _REQUESTS.get(request.method)
        if known is None:
            raise ClientDeclined(JSONRPC_METHOD_NOT_FOUND, f"the runner does not forward {request.method}")
        request_type, result_type, capability = known
        if not session.check_client_capability(capability):
            raise ClientDeclined(
                JSONRPC_METHOD_NOT_FOUND,
                f"the client of this session did not declare the capability {request.method} needs",
            )
        typed: Any = request_type.model_validate({"method": request.method, "params": request.params}, by_name=False)
        if request.method == "sampling/createMessage" and request.params.get("tools"):
            result_type = types.CreateMessageResultWithTools
        metadata = ServerMessageMetadata(related_request_id=related) if related is not None else None
        try:
            answer = await session.send_request(
                typed, result_type, request_read_timeout_seconds=ANSWER_TIMEOUT_S, metadata=metadata
            )
        except MCPError as exc:
            raise ClientDeclined(exc.error.code, exc.error.message) from None
        except NoBackChannelError:
            raise ClientDeclined(
                JSONRPC_METHOD_NOT_FOUND, f"this session's client has no stream to receive {request.method} on"
            ) from None
        except ValidationError as exc:
            raise ClientDeclined(-32602, f"the client's answer to {request.method} is not valid: {exc.error_count()} "
                                         "problem(s)") from None
        return answer.model_dump(by_alias=True, mode="json", exclude_none=True)

    return ask


def notifier(session: ServerSession, related: types.RequestId | None) -> NotificationHandler:
    """Forwards the server's notifications: logs on ``related``'s stream (when given), the rest standalone."""

    async def notify(note: ServerNotification) -> None:
        model = _NOTIFICATIONS.get(note.method)
        if model is None:
            log.debug("dropped %s: not forwarded by the door", note.method)
            return
        try:
            typed: Any = model.model_validate({"method": note.method, "params": note.params}, by_name=False)
        except ValidationError:
            log.warning("dropped %s: its params do not fit the MCP type", note.method)
            return
        with anyio.move_on_after(SEND_TIMEOUT_S) as waited:
            if note.method == "notifications/message":
                params = typed.params
                await session.send_log_message(params.level, params.data, params.logger, related_request_id=related)
            else:
                await session.send_notification(typed)
        if waited.cancelled_caught:
            log.warning("dropped %s: the client did not take it within %g s", note.method, SEND_TIMEOUT_S)

    return notify
