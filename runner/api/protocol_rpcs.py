"""The protocol RPCs beyond tools, resources and prompts: templates, completion, logging, subscriptions, ping,
WatchSession (what a server sends between calls) and AnswerInput (a caller's answer to a server's request).

Conversion only, like the rest of the servicer (``RunnerServicer`` inherits these). Server requests wait for
their answers in ``runner.sessions.continuations``; a unary CallTool that gets one stays pending there.
"""

from __future__ import annotations

import asyncio
import builtins
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from typing import Any, Protocol

import mcp_types

from runner.api import convert, inputs
from runner.api import protocol_convert as pconvert
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api.auth import Authenticator
from runner.api.statuses import Context, deadline_of, entering, translate_errors
from runner.errors import ClientDeclined, FailedPrecondition, NotFound
from runner.sessions.continuations import Continuations, Conversation, InputRequest, PendingInput
from runner.sessions.models import (
    InputHandler,
    NotificationHandler,
    Sanitized,
    ServerNotification,
    SessionInfo,
    SessionState,
)

MAX_EVENTS_WAITING = 256
"""Watch events a slow watcher may leave unread before the oldest log message, list change or resource update
gives way."""
INLINE_ANSWER_CHARS = 64 * 1024
"""An answer up to this size is parsed on the event loop (as tool arguments are: a thread hop would cost more)."""
WATCH_CHECK_S = 1.0
"""A quiet watch checks this often whether its session has ended (the stream then ends)."""
WATCH_GONE = (-32601, "the caller stopped watching this session")
WATCH_ENDED = "can no longer be answered: the watch it was sent on ended"
"""What a server hears for a request its watcher left unanswered."""


class ProtocolService(Protocol):
    """What these RPCs need from the SessionManager (door-contract §2)."""

    async def list_resource_templates(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[builtins.list[mcp_types.ResourceTemplate]]: ...

    async def complete(
        self, session_id: str, params: mcp_types.CompleteRequestParams, *, caller: str, timeout: float | None = None
    ) -> mcp_types.CompleteResult: ...

    async def set_logging_level(self, session_id: str, level: str, *, caller: str) -> None: ...

    async def subscribe(self, session_id: str, uri: str, *, caller: str) -> None: ...

    async def unsubscribe(self, session_id: str, uri: str, *, caller: str) -> None: ...

    async def ping(self, session_id: str, *, caller: str) -> None: ...

    def cover(
        self,
        session_id: str,
        *,
        caller: str,
        on_notification: NotificationHandler | None = None,
        on_input: InputHandler | None = None,
    ) -> Callable[[], None]: ...

    def get(self, session_id: str, *, caller: str) -> SessionInfo: ...


_REPLACED = object()


_DROPPABLE = ("log", "list_changed", "resource_updated")
"""Events a later one makes up for: a watcher that missed some re-reads what changed. Input requests are not."""
_COLLAPSED = ("list_changed", "resource_updated")
"""Events that say only *what* changed: one waiting per list or resource URI says it all."""


class _WatchEvents:
    """A watch's events waiting to be sent: bounded, never blocking the session's reader.

    Input requests are never given up (the host holds at most ``runner.channel.MAX_SERVER_REQUESTS`` unanswered
    per session: the agent is untrusted); a list change or resource update already waiting for the same list or
    URI is not queued twice; past ``MAX_EVENTS_WAITING`` the oldest log message, list change or resource update
    gives way and the next event sent counts it in ``dropped``. So a server's notifications, however many, hold
    at most that many events in the host's memory.
    """

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._dropped = 0
        self._added = asyncio.Event()

    def put(self, event: Any) -> None:
        if event is not _REPLACED and _waiting(event, self._items):
            return
        if len(self._items) >= MAX_EVENTS_WAITING:
            for index, item in enumerate(self._items):
                if item is not _REPLACED and item.WhichOneof("event") in _DROPPABLE:
                    del self._items[index]
                    self._dropped += 1
                    break
        self._items.append(event)
        self._added.set()

    async def get(self, timeout: float) -> Any | None:
        """The next event (its ``dropped`` set), or None when none came within ``timeout``."""
        if not self._items:
            self._added.clear()
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._added.wait()
            if not self._items:
                return None
        item = self._items.popleft()
        if item is not _REPLACED and self._dropped:
            item.dropped, self._dropped = self._dropped, 0
        return item


def _waiting(event: Any, items: deque[Any]) -> bool:
    """Whether ``event`` says only what an event already waiting says (the same list or URI changed)."""
    kind = event.WhichOneof("event")
    if kind not in _COLLAPSED:
        return False
    what = getattr(event, kind)
    return any(item is not _REPLACED and item.WhichOneof("event") == kind and getattr(item, kind) == what
               for item in items)  # fmt: skip


class ProtocolRpcs:
    """The RPCs of this module; ``RunnerServicer`` sets the attributes."""

    _manager: Any
    _auth: Authenticator
    _continuations: Continuations
    _watches: dict[str, _WatchEvents]

    @property
    def _protocol(self) -> ProtocolService:
        manager: ProtocolService = self._manager
        return manager

    def _live(self, session_id: str, caller: str) -> bool:
        try:
            state = self._protocol.get(session_id, caller=caller).state
        except NotFound:
            return False
        return state in (SessionState.STARTING, SessionState.READY)

    async def ListResourceTemplates(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "ListResourceTemplates"), entering(context, "ListResourceTemplates"):
            caller = self._auth.identify(context)
            templates = await self._protocol.list_resource_templates(
                convert.require_session_id(request.session_id), caller=caller, timeout=deadline_of(context)
            )
            return pconvert.templates_to_proto(templates.value, templates.findings)

    async def Complete(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "Complete"), entering(context, "Complete"):
            caller = self._auth.identify(context)
            session_id = convert.require_session_id(request.session_id)
            result = await self._protocol.complete(
                session_id, pconvert.complete_params(request), caller=caller, timeout=deadline_of(context)
            )
            return pconvert.completion_to_proto(result)

    async def SetLoggingLevel(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "SetLoggingLevel"), entering(context, "SetLoggingLevel"):
            caller = self._auth.identify(context)
            session_id = convert.require_session_id(request.session_id)
            await self._protocol.set_logging_level(session_id, pconvert.logging_level(request.level), caller=caller)
            return pb.SetLoggingLevelResponse()

    async def Subscribe(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "Subscribe"), entering(context, "Subscribe"):
            caller = self._auth.identify(context)
            session_id = convert.require_session_id(request.session_id)
            await self._protocol.subscribe(session_id, inputs.uri(request.uri), caller=caller)
            return pb.SubscribeResponse()

    async def Unsubscribe(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "Unsubscribe"), entering(context, "Unsubscribe"):
            caller = self._auth.identify(context)
            session_id = convert.require_session_id(request.session_id)
            await self._protocol.unsubscribe(session_id, inputs.uri(request.uri), caller=caller)
            return pb.UnsubscribeResponse()

    async def Ping(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "Ping"), entering(context, "Ping"):
            caller = self._auth.identify(context)
            await self._protocol.ping(convert.require_session_id(request.session_id), caller=caller)
            return pb.PingResponse()

    async def AnswerInput(self, request: Any, context: Context) -> Any:
        async with translate_errors(context, "AnswerInput"), entering(context, "AnswerInput"):
            caller = self._auth.identify(context)
            session_id = convert.require_session_id(request.session_id)
            input_id = inputs.identifier(request.input_id, "input_id")
            # Checking a large answer is CPU work: off the event loop, so other sessions keep moving.
            inline = len(request.result_json) <= INLINE_ANSWER_CHARS
            answer = pconvert.answer_from_proto(request) if inline else await asyncio.to_thread(
                pconvert.answer_from_proto, request
            )
            pending = self._continuations.answer(input_id, answer, caller=caller, session_id=session_id)
            if pending.call is None:
                return pb.AnswerInputResponse()
            step = await pending.call.next_step(deadline_of(context))
            return pb.AnswerInputResponse(call=pconvert.step_to_proto(step))

    async def WatchSession(self, request: Any, context: Context) -> AsyncIterator[Any]:
        async with translate_errors(context, "WatchSession"), entering(context, "WatchSession"):
            caller = self._auth.identify(context)
            session_id = convert.require_session_id(request.session_id)
            events = _WatchEvents()

            def deliver(shown: InputRequest) -> None:
                events.put(pb.SessionEvent(input_required=pconvert.input_to_proto(shown)))

            def unanswered(pending: PendingInput) -> None:
                if not pending.answer.done():
                    late = "the caller did not answer within the runner's time limit"
                    pending.answer.set_exception(ClientDeclined(mcp_types.REQUEST_TIMEOUT, late))

            async def on_notification(notification: ServerNotification) -> None:
                event = pconvert.event_to_proto(notification)
                if event is not None:
                    events.put(event)

            conversation = Conversation(
                self._continuations, caller=caller, session_id=session_id, deliver=deliver, on_expiry=unanswered,
                gone=WATCH_ENDED,
            )  # fmt: skip
            # Over the session's own listener (a door's, set at initialize), which is back when this watch ends.
            uncover = self._protocol.cover(
                session_id, caller=caller, on_notification=on_notification, on_input=conversation.on_input
            )
            replaced = self._watches.get(session_id)
            if replaced is not None:
                replaced.put(_REPLACED)
            self._watches[session_id] = events
            try:
                while True:
                    event = await events.get(WATCH_CHECK_S)
                    if event is _REPLACED:
                        raise FailedPrecondition(f"a newer WatchSession of session {session_id} replaced this one")
                    if event is not None:
                        yield event
                    elif not self._live(session_id, caller):
                        return
            finally:
                uncover()  # first: a server request from now on goes to what this watch covered
                conversation.decline_all(*WATCH_GONE)
                if self._watches.get(session_id) is events:
                    del self._watches[session_id]
