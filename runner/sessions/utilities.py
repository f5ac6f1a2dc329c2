"""The rest of MCP a door passes on: resource templates, completion, logging level, subscriptions, ping, and the
session's listener for what the server sends between requests.

Each goes the way of every operation (``operations.py``), begun by ``Serving._serving``: traced, screened,
recorded, the server's capability checked, the policy asked where the request names a resource or prompt, within
the caller's call rate, under the call deadline with its intent on record, and what comes back validated and
sanitized. A completion is allowed when the prompt or resource it completes an argument of is; a subscription
when reading its resource is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import mcp_types

from runner.errors import InvalidArgument, Unimplemented
from runner.guard import results
from runner.guard.findings import FindingLog
from runner.guard.sanitize import Sanitizer
from runner.guard.validate import parse_result
from runner.sessions import listing, outflow
from runner.sessions.models import Exchange, InputHandler, NotificationHandler, Sanitized
from runner.sessions.serving import Serving
from runner.sessions.session import LiveSession

LOGGING_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def _templates(
    s: Sanitizer, templates: list[mcp_types.ResourceTemplate], log: FindingLog
) -> list[mcp_types.ResourceTemplate]:
    return results.sanitize_value(s, templates, "resource_templates", log)


def _completion(s: Sanitizer, result: mcp_types.CompleteResult, log: FindingLog) -> mcp_types.CompleteResult:
    return results.sanitize_value(s, result, "", log)


class Utilities(Serving):
    async def list_resource_templates(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[list[mcp_types.ResourceTemplate]]:
        method = "resources/templates/list"
        async with self._serving(session_id, caller, method, {}, "resources") as entry:
            session = self._offering(session_id, caller, "resources", entry)
            async with self._guarding(session):
                with self._gate.call_slot(caller, session.id):
                    pages = await listing.pages(
                        self._request,
                        session,
                        method,
                        mcp_types.ListResourceTemplatesResult,
                        timeout,
                        self._settings.max_message_bytes,
                    )
                listed = [t for page in pages for t in page.resource_templates]
                clean = await outflow.sanitize(session, _templates, listed, "the resource template list")
            return self._returning(session, entry, clean)

    async def complete(
        self, session_id: str, params: mcp_types.CompleteRequestParams, *, caller: str, timeout: float | None = None
    ) -> mcp_types.CompleteResult:
        """Completions for an argument of a prompt or resource template, sanitized."""
        method = "completion/complete"
        wire = params.model_dump(mode="json", by_alias=True, exclude_none=True)
        async with self._serving(session_id, caller, method, wire, "completions") as entry:
            session = self._offering(session_id, caller, "completions", entry)
            async with self._guarding(session):
                ref = params.ref
                if isinstance(ref, mcp_types.PromptReference):
                    self._decide(session, caller, "prompts", ref.name, method)
                else:
                    self._decide(session, caller, "resources", ref.uri, method)
                with self._gate.call_slot(caller, session.id):
                    reply = await self._request_sized(session, method, wire, timeout, None)
                small = outflow.small(reply)
                what = "completion"
                model = mcp_types.CompleteResult
                result = await outflow.run_guard_work(small, parse_result, model, reply.result, what)
                clean = await outflow.sanitize(session, _completion, result, what, inline=small)
            return self._returning(session, entry, clean).value

    async def set_logging_level(self, session_id: str, level: str, *, caller: str) -> None:
        """The least severe ``notifications/message`` the server is to send (a level of RFC 5424's)."""
        if level not in LOGGING_LEVELS:
            raise InvalidArgument(f"logging level {level!r} is not one of {', '.join(LOGGING_LEVELS)}")
        await self._simple(session_id, caller, "logging/setLevel", {"level": level}, "logging")

    async def subscribe(self, session_id: str, uri: str, *, caller: str) -> None:
        """``notifications/resources/updated`` for ``uri`` from now on (to the session's listener)."""
        await self._simple(session_id, caller, "resources/subscribe", {"uri": uri}, "resources", uri)

    async def unsubscribe(self, session_id: str, uri: str, *, caller: str) -> None:
        await self._simple(session_id, caller, "resources/unsubscribe", {"uri": uri}, "resources", uri)

    async def ping(self, session_id: str, *, caller: str) -> None:
        """Whether the server answers (ServerError, DeadlineExceeded… if it does not)."""
        await self._simple(session_id, caller, "ping", {}, "")

    def listen(
        self,
        session_id: str,
        *,
        caller: str,
        on_notification: NotificationHandler | None = None,
        on_input: InputHandler | None = None,
    ) -> None:
        """The session's own handlers for what belongs to no request in flight (list changes, resource updates,
        log messages between calls, server requests the agent could not relate); replaces earlier ones, and
        with neither given removes them."""
        session = self._live(session_id, caller)
        listening = on_notification is not None or on_input is not None
        own = Exchange(on_input=on_input, on_notification=on_notification) if listening else None
        covers = self._covers.get(session.id)
        if covers is None:
            session.listener = own
        else:
            covers[0] = own  # under a cover's handlers: in effect once the covers end

    def cover(
        self,
        session_id: str,
        *,
        caller: str,
        on_notification: NotificationHandler | None = None,
        on_input: InputHandler | None = None,
    ) -> Callable[[], None]:
        """Handlers over the session's own (``listen``) until the returned function is called (a gRPC watch of a
        door's session): then what they covered is in effect again. Covers stack: the newest is in effect, and one
        that ends under a newer one only leaves the stack, so an end never brings back handlers that have ended."""
        session = self._live(session_id, caller)
        mine = Exchange(on_input=on_input, on_notification=on_notification)
        stack = self._covers.setdefault(session.id, [session.listener])
        stack.append(mine)
        session.listener = mine

        def uncover() -> None:
            # By identity: two covers with the same handlers are equal Exchanges.
            kept = [e for e in stack if e is not mine]
            if len(kept) == len(stack):
                return
            stack[:] = kept
            session.listener = stack[-1]
            if len(stack) == 1 and self._covers.get(session.id) is stack:
                del self._covers[session.id]

        return uncover

    @functools.cached_property
    def _covers(self) -> dict[str, list[Exchange | None]]:
        """Per session with covers: its own listener (index 0) under its covers, the newest last."""
        return {}

    async def _simple(
        self, session_id: str, caller: str, method: str, params: dict[str, str], capability: str, uri: str = ""
    ) -> None:
        """A request whose answer is empty: sent and checked to be a JSON object, nothing passed on."""
        async with self._serving(session_id, caller, method, params, capability, uri) as entry:
            session = (
                self._offering(session_id, caller, capability, entry)
                if capability
                else self._live(session_id, caller, entry)
            )
            async with self._guarding(session):
                if method == "resources/subscribe":
                    _check_subscribable(session)
                if uri and method != "resources/unsubscribe":
                    self._decide(session, caller, "resources", uri, method)
                with self._gate.call_slot(caller, session.id):
                    reply = await self._request_sized(session, method, dict(params), None, None)
                parse_result(mcp_types.EmptyResult, reply.result, f"{method} result")
            entry.result({})


def _check_subscribable(session: LiveSession) -> None:
    resources = session.capabilities.resources if session.capabilities is not None else None
    if resources is None or not resources.subscribe:
        raise Unimplemented(
            f"session {session.id}'s server ({session.profile.name}) does not offer resource subscriptions"
        )
