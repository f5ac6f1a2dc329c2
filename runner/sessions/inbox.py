"""What a session's server sends unasked: its requests to the client and its notifications, routed and guarded.

The channel (runner/channel.py) checks each frame's shape and names the request in flight it belongs to; here it
is validated and sanitized (``runner.guard.inbound``), routed, and, for a request, recorded with its outcome:

- to the ``Exchange`` of the request it belongs to, when that request has a handler for it;
- else to the session's listener (``SessionManager.listen``);
- else a request is answered -32601 naming why, and a notification is dropped.

A ``roots/list`` of a profile that sets ``roots`` is answered here with them, whatever handler there is.

A client's answer is checked against the result its request asks for (an elicitation's content against the
server's ``requestedSchema``) before the server gets it; one that does not fit is answered -32602 naming what.
Requests past ``SERVER_REQUESTS_PER_S`` are refused, their first refusal of a run recorded, so a server
cannot flood its caller's user, nor the audit log, however fast its requests are answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from runner.audit import records
from runner.audit.records import capped
from runner.channel import Inbound, JSONObject
from runner.errors import (
    JSONRPC_INTERNAL_ERROR,
    JSONRPC_INVALID_PARAMS,
    JSONRPC_METHOD_NOT_FOUND,
    ClientDeclined,
    InvalidArgument,
    ResultRejected,
)
from runner.guard.findings import FindingLog
from runner.guard.inbound import (
    check_answer,
    check_notification,
    check_server_request,
    sanitize_notification,
    sanitize_server_request,
)
from runner.roots import roots_result
from runner.sessions import outflow
from runner.sessions.journal import Journal, findings_json, kept_input
from runner.sessions.models import Exchange, ServerNotification, ServerRequest
from runner.sessions.session import LiveSession
from runner.text import control_free
from runner.throttle import TokenBucket

log = logging.getLogger(__name__)
H = TypeVar("H")

SERVER_REQUESTS_PER_S = 5.0
SERVER_REQUEST_BURST = 20
"""A session's server may ask its client this often: sampling and elicitation reach a person (or a paid model), and
each request is an audit record. Past it the server is answered ``THROTTLED_CODE``."""
THROTTLED_CODE = -32000
"""The JSON-RPC error (implementation-defined server error range) for a request refused for the rate."""
MAX_QUOTED = 500
"""Characters of a client's or the guard's message quoted in the error the server gets."""
ABANDONED = "abandoned"
"""The outcome of a server request cancelled before it had its answer: its call ended, or its session closed."""
ANSWERED_BY_PROFILE = "answered_by_profile"
"""The outcome of a ``roots/list`` the runner answered with the profile's ``roots`` (the caller was not asked)."""


def _pick(exchange: Exchange | None, listener: Exchange | None, pick: Callable[[Exchange], H | None]) -> H | None:
    """The request's own handler, else the session's listener's, else None."""
    own = pick(exchange) if exchange is not None else None
    return own if own is not None else (pick(listener) if listener is not None else None)


class Inbox:
    """One session's ``InboundHandler``: set on its channel at boot or at a warm claim."""

    def __init__(self, session: LiveSession, journal: Journal) -> None:
        self._session = session
        self._journal = journal
        self._bucket = TokenBucket(SERVER_REQUESTS_PER_S, SERVER_REQUEST_BURST, time.monotonic())
        self._throttled = False

    async def server_request(self, request: Inbound) -> JSONObject:
        started = time.monotonic()
        data: dict[str, Any] = {"method": request.method, "door": self._session.door}
        if request.tag:
            data["related"] = request.tag
        try:
            return await self._answer(request, data, started)
        except asyncio.CancelledError:
            # The request it belonged to ended, or its session closed, while it waited (for the caller, mostly): no
            # answer comes, but that it was asked is on record all the same, and the cancellation goes on.
            self._record(data, started, ABANDONED)
            raise

    async def _answer(self, request: Inbound, data: dict[str, Any], started: float) -> JSONObject:
        """The answer; every way out but cancellation records how it ended (once) before it leaves."""
        session = self._session

        def refuse(outcome: str, code: int, message: str) -> ClientDeclined:
            message = _quoted(session, message)
            self._record(data, started, outcome, error={"code": code, "message": message})
            return ClientDeclined(code, message)

        if self._bucket.take(time.monotonic()) > 0:
            message = f"the server asks its client more than {SERVER_REQUESTS_PER_S:g} times a second"
            if not self._throttled:
                self._throttled = True
                raise refuse("throttled", THROTTLED_CODE, message)
            raise ClientDeclined(THROTTLED_CODE, message)
        self._throttled = False
        small = outflow.small_line(request.size, request.values)
        try:
            checked = await outflow.run_guard_work(small, check_server_request, request.method, request.params)
        except ResultRejected as exc:
            raise refuse("invalid_request", JSONRPC_INVALID_PARAMS, exc.message) from None
        found = FindingLog()
        shown = await outflow.run_guard_work(small, sanitize_server_request, session.sanitizer, checked, found)
        data["params"] = capped(shown)
        if found.findings():
            data["findings"] = findings_json(found.findings())
        if found.blocked:
            raise refuse("blocked", JSONRPC_INTERNAL_ERROR, f"the runner's sanitizer blocked the {request.method} "
                         f"request (profile {session.profile.name!r})")  # fmt: skip
        roots = session.profile.roots
        if request.method == "roots/list" and roots is not None:
            # The profile knows the sandbox's directories; a caller's client knows its own machine's, which a server
            # would take in place of the ones it can reach (runner/roots.py). The caller is never asked.
            answer = roots_result(roots)
            data["answer"] = answer
            self._record(data, started, ANSWERED_BY_PROFILE)
            return answer
        handler = _pick(request.exchange, session.listener, lambda e: e.on_input)
        if handler is None:
            raise refuse("unhandled", JSONRPC_METHOD_NOT_FOUND, f"the caller of this session cannot answer "
                         f"{request.method}")  # fmt: skip
        try:
            answer = await handler(ServerRequest(request.method, shown))
        except ClientDeclined as exc:
            raise refuse("declined", exc.code, exc.message) from None
        except Exception as exc:
            log.warning("session %s: the client's handler of %s failed: %s", session.id, request.method,
                        control_free(str(exc))[:200])  # fmt: skip
            raise refuse("failed", JSONRPC_INTERNAL_ERROR, "the client failed to answer") from None
        try:
            checked_answer = await outflow.run_guard_work(False, check_answer, checked, answer)
        except InvalidArgument as exc:
            raise refuse("invalid_answer", JSONRPC_INVALID_PARAMS, exc.message) from None
        data["answer"] = kept_input(checked_answer, session.sanitizer.redact_secrets)
        self._record(data, started, "answered")
        return checked_answer

    async def notification(self, note: Inbound) -> None:
        session = self._session
        handler = _pick(note.exchange, session.listener, lambda e: e.on_notification)
        if handler is None:
            return  # before any work: nobody listens
        small = outflow.small_line(note.size, note.values)
        try:
            params = await outflow.run_guard_work(small, check_notification, note.method, note.params)
        except ResultRejected as exc:
            log.info("session %s: dropped a notification: %s", session.id, control_free(exc.message)[:300])
            return
        found = FindingLog()
        clean = await outflow.run_guard_work(small, sanitize_notification, session.sanitizer, params, found)
        if found.blocked:
            log.info("session %s: dropped %s: the sanitizer's policy blocks it", session.id, note.method)
            return
        await handler(ServerNotification(note.method, clean))

    def _record(self, data: dict[str, Any], started: float, outcome: str, **extra: Any) -> None:
        session = self._session
        self._journal.note(records.SERVER_REQUEST, session.id, session.caller, {
            **data, "outcome": outcome, "duration_ms": round((time.monotonic() - started) * 1000, 3), **extra,
        })  # fmt: skip


def _quoted(session: LiveSession, message: str) -> str:
    """A message for the server's error answer and the record: it quotes the server's or the client's words, so
    it is cut and sanitized like any error message."""
    cut = message if len(message) <= MAX_QUOTED else message[:MAX_QUOTED] + " … (cut)"
    return session.sanitizer.text(cut, "error message", FindingLog())
