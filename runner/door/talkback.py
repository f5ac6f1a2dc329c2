"""What travels from the sandbox to the door's client while a session runs: server requests and notifications.

On a stateful session the sandboxed server's requests (sampling, elicitation, roots) go to the client natively,
on the stream of the request they belong to (``related_request_id``: the POST's SSE stream) or, between requests,
on the session's standalone stream; the client's answer goes back (the host validates it against the request).
A client that did not declare what a request needs (``lacking``: the one decision, for a stateful client as for a
2026-07-28 client's input-required rounds) is not asked: the server gets -32601 naming why. Notifications (logs,
list_changed, resources/updated) go the same ways, through a small queue per MCP session drained by a task of its
own (``Outbox``): the sandbox's reader hands a notification over and goes on, whatever the client's pace; a queue
full drops its oldest log or list_changed (counted), and a send stuck on a slow client is given up after
``SEND_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from typing import Any

import anyio
import mcp_types as types
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError, NoBackChannelError
from mcp.shared.message import ServerMessageMetadata
from pydantic import BaseModel, ValidationError

from runner.errors import JSONRPC_INTERNAL_ERROR, JSONRPC_METHOD_NOT_FOUND, ClientDeclined, ResultRejected
from runner.guard.inbound import NOTIFICATIONS, SERVER_REQUESTS
from runner.sessions.models import InputHandler, NotificationHandler, ServerNotification, ServerRequest
from runner.text import control_free

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 300.0
"""How long a server's request may wait for the client's answer (a person may be answering an elicitation)."""

_RESULTS: dict[str, type[BaseModel]] = {
    "sampling/createMessage": types.CreateMessageResult,
    "elicitation/create": types.ElicitResult,
    "roots/list": types.ListRootsResult,
}
"""The result model of each forwarded request (``runner.guard.inbound.SERVER_REQUESTS``: what is forwarded)."""
OUTBOX_SIZE = 256
"""Notifications of one MCP session waiting for its client; past it the oldest log or list_changed is dropped."""
_DROPPABLE = frozenset({
    "notifications/message", "notifications/tools/list_changed", "notifications/resources/list_changed",
    "notifications/prompts/list_changed",
})  # fmt: skip
"""What a full queue gives up first: a log line, or a list change a newer one repeats."""


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


def request_model(request: ServerRequest) -> BaseModel:
    """``request`` as its MCP request model, the one the client is sent (natively, or as an input request of a
    2026-07-28 ``InputRequiredResult``); ResultRejected saying why it cannot be (the sanitized params may no longer
    fit the model the original did)."""
    model = SERVER_REQUESTS.get(request.method)
    if model is None:
        raise ResultRejected(f"the runner does not forward {request.method}")
    try:
        return model.model_validate({"method": request.method, "params": request.params}, by_name=False)
    except ValidationError as exc:
        raise ResultRejected(
            f"the {request.method} request, as sanitized, no longer fits its MCP type ({exc.error_count()} problem(s))"
        ) from None


def input_request(request: ServerRequest) -> types.InputRequest:
    """``request`` as an input request of a 2026-07-28 ``InputRequiredResult`` (the same MCP request type)."""
    typed: Any = request_model(request)
    return typed  # type: ignore[no-any-return]


def lacking(declared: types.ClientCapabilities | None, request: ServerRequest) -> str | None:
    """What of ``request``'s needs the client's declared capabilities lack, said for the server; None: nothing.

    As the SDK's own check, and finer where a request's params ask for more: URL elicitation, sampling with tools
    or with context (a client declaring ``elicitation: {}`` can do forms only).
    """
    if request.method not in SERVER_REQUESTS:
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
        missing = lacking(session.client_capabilities, request)
        if missing is not None:
            raise ClientDeclined(JSONRPC_METHOD_NOT_FOUND, missing)
        try:
            typed: Any = request_model(request)
        except ResultRejected as exc:
            raise ClientDeclined(JSONRPC_INTERNAL_ERROR, exc.message) from None
        result_type = _RESULTS[request.method]
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
            raise ClientDeclined(
                -32602, f"the client's answer to {request.method} is not valid: {exc.error_count()} problem(s)"
            ) from None
        return answer.model_dump(by_alias=True, mode="json", exclude_none=True)

    return ask


def notifier(session: ServerSession, related: types.RequestId | None) -> NotificationHandler:
    """Forwards the server's notifications: logs on ``related``'s stream (when given), the rest standalone; each is
    queued in the session's ``Outbox`` and the caller goes on at once."""

    async def notify(note: ServerNotification) -> None:
        model = NOTIFICATIONS.get(note.method)
        if model is None:
            log.debug("dropped %s: not forwarded by the door", note.method)
            return
        try:
            typed: Any = model.model_validate({"method": note.method, "params": note.params}, by_name=False)
        except ValidationError:
            log.warning("dropped %s: its params do not fit the MCP type", note.method)
            return
        outbox_of(session).put(note.method, typed, related)

    return notify


_Queued = tuple[str, Any, "types.RequestId | None"]
"""(method, its MCP notification model, the request whose stream a log goes on)."""


class Outbox:
    """One MCP session's notifications on their way to its client, in order, sent by a task of their own that runs
    while any wait (a slow client delays only them); at most ``size`` wait, the oldest log or list_changed dropped
    first."""

    def __init__(self, session: ServerSession, size: int) -> None:
        self._session = weakref.ref(session)
        """Weak: the outbox lives in a ``WeakKeyDictionary`` keyed by its session, which a strong one keeps alive."""
        self._size = size
        self._queue: deque[_Queued] = deque()
        self._sender: asyncio.Task[None] | None = None
        self.dropped = 0
        """Notifications given up: a full queue, or a send the client did not take within ``SEND_TIMEOUT_S``."""

    def put(self, method: str, typed: Any, related: types.RequestId | None) -> None:
        if len(self._queue) >= self._size:
            self._drop_one()
        self._queue.append((method, typed, related))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_all(), name="door-notifications")

    def _drop_one(self) -> None:
        victim = next((item for item in self._queue if item[0] in _DROPPABLE), self._queue[0])
        self._queue.remove(victim)
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("dropped %s: its client takes notifications slower than they come (%d dropped so far)",
                        victim[0], self.dropped)  # fmt: skip

    async def _send_all(self) -> None:
        while self._queue:
            method, typed, related = self._queue.popleft()
            session = self._session()
            if session is None:
                self._queue.clear()
                return
            try:
                with anyio.move_on_after(SEND_TIMEOUT_S) as waited:
                    if method == "notifications/message":
                        params = typed.params
                        await session.send_log_message(
                            params.level, params.data, params.logger, related_request_id=related
                        )
                    else:
                        await session.send_notification(typed)
            except Exception as exc:  # the client's session or stream closed: nobody is left to tell
                log.debug("dropped %s: %s", method, control_free(str(exc))[:200])
                self.dropped += 1
                continue
            if waited.cancelled_caught:
                self.dropped += 1
                log.warning("dropped %s: the client did not take it within %g s", method, SEND_TIMEOUT_S)


_outboxes: weakref.WeakKeyDictionary[ServerSession, Outbox] = weakref.WeakKeyDictionary()


def outbox_of(session: ServerSession) -> Outbox:
    """The session's ``Outbox``: it lives as long as the session does."""
    box = _outboxes.get(session)
    if box is None:
        box = _outboxes[session] = Outbox(session, OUTBOX_SIZE)
    return box
