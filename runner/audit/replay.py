"""Replay: a recorded session's tool calls, run again in a fresh sandbox of the same profile and image digest.

Only calls that reached the server are replayed (those the policy refused at
the time never ran). Each is first put to today's policy for the replaying
caller: a denial, or a rule that now asks for approval, is reported as
``refused`` and the call is not run (a replay never creates approvals). The
rest run through the SessionManager like any call (validated, sanitized,
recorded) and what comes back is compared with what the caller got then.
Arguments are replayed as recorded in the call's ``request.intent`` (exactly
what was sent, whole; logs from before intents existed: the request record's
own params). The session's secrets in them were redacted before they were
written, so such calls may differ. A call whose intent has no outcome record
(the service died mid-call) ran, but there is no answer to compare: it is
not replayed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from runner.audit import records
from runner.audit.diff import json_diff
from runner.audit.records import AuditQuery, AuditRecord, ReplayVerdict, capped
from runner.audit.store import AuditStore
from runner.errors import FailedPrecondition, PermissionDenied, RateLimited, RunnerError, SessionNotFound
from runner.policy import ToolDecision
from runner.sessions.journal import as_json
from runner.sessions.models import OpenedSession, SessionInfo, ToolCallOutcome


class ReplayHost(Protocol):
    """What a replay needs from the SessionManager."""

    async def open(
        self,
        profile: str,
        *,
        caller: str,
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
        image: str | None = None,
    ) -> OpenedSession: ...

    async def close(self, session_id: str, *, caller: str) -> SessionInfo: ...

    async def call_tool(
        self, session_id: str, tool: str, arguments: dict[str, Any], *, caller: str, timeout: float | None = None
    ) -> ToolCallOutcome: ...

    def tool_decision(self, caller: str, profile: str, tool: str) -> ToolDecision: ...


def replayable(record: AuditRecord) -> bool:
    """A tools/call the server answered: a result, or an error of the server's own."""
    data = record.data
    if record.kind != records.REQUEST or data.get("method") != "tools/call":
        return False
    error = data.get("error")
    return data.get("outcome") == "ok" or (isinstance(error, Mapping) and error.get("origin") == "server")


def sent_params(record: AuditRecord, intents: Mapping[str, AuditRecord]) -> Mapping[str, Any]:
    """What a recorded tools/call sent: its intent's params, else (an older log) the request record's own."""
    linked = record.data.get("intents")
    for intent_id in linked if isinstance(linked, list) else ():
        intent = intents.get(intent_id) if isinstance(intent_id, str) else None
        if intent is not None and intent.data.get("method") == "tools/call":
            params = intent.data.get("params")
            return params if isinstance(params, Mapping) else {}
    params = record.data.get("params")
    return params if isinstance(params, Mapping) else {}


def answered(data: Mapping[str, Any]) -> dict[str, Any]:
    """What the caller got, in the form both sides of a comparison share."""
    error = data.get("error")
    if isinstance(error, Mapping):
        return {"error": {"status": error.get("status"), "message": error.get("message")}}
    return {"result": data.get("result")}


class Replayer:
    def __init__(self, host: ReplayHost, store: AuditStore) -> None:
        self._host = host
        self._store = store

    async def recorded(self, session_id: str) -> list[AuditRecord]:
        """What a replay reads of a session: how it was opened, its requests, and what they sent."""
        kinds = (records.SESSION_OPEN, records.REQUEST, records.REQUEST_INTENT)
        wanted = AuditQuery(session_id=session_id, kinds=kinds)
        found = await asyncio.to_thread(self._store.query, wanted)
        if not found:
            raise records_missing(session_id)
        return found

    async def replay(
        self, session_id: str, recorded: list[AuditRecord], *, caller: str, timeout: float | None
    ) -> AsyncIterator[ReplayVerdict]:
        opened = next(
            (r for r in recorded if r.kind == records.SESSION_OPEN and r.data.get("outcome") == "ok"), None
        )
        if opened is None:
            raise FailedPrecondition(f"session {session_id} never opened successfully; there is nothing to replay")
        profile = str(opened.data.get("profile", ""))
        image = str(opened.data.get("image_id") or "") or None
        deadline = None if timeout is None else time.monotonic() + timeout
        fresh = await self._host.open(
            profile, caller=caller, labels={"replay-of": session_id}, timeout=_left(deadline), image=image
        )
        replay_id = fresh.info.session_id
        try:
            intents = {r.id: r for r in recorded if r.kind == records.REQUEST_INTENT}
            calls = [r for r in recorded if replayable(r)]
            for index, record in enumerate(calls, 1):
                params = sent_params(record, intents)
                yield await self._one(index, record, params, profile, replay_id, caller, _left(deadline))
        finally:
            await self._host.close(replay_id, caller=caller)

    async def _one(
        self,
        index: int,
        record: AuditRecord,
        params: Mapping[str, Any],
        profile: str,
        replay_id: str,
        caller: str,
        timeout: float | None,
    ) -> ReplayVerdict:
        tool = str(params.get("name", ""))
        arguments = params.get("arguments")
        arguments = dict(arguments) if isinstance(arguments, Mapping) else {}

        def verdict(kind: str, **detail: Any) -> ReplayVerdict:
            return ReplayVerdict(index, tool, kind, record.id, replay_id, **detail)

        try:
            decision = self._host.tool_decision(caller, profile, tool)
        except PermissionDenied as exc:
            return verdict(records.REFUSED, reason=exc.message)
        if decision.verdict == "approval":
            return verdict(records.REFUSED, reason=f"it now needs approval ({decision.rule}); not run again")
        audit_id = ""
        try:
            outcome = await self._host.call_tool(replay_id, tool, arguments, caller=caller, timeout=timeout)
        except (PermissionDenied, RateLimited) as exc:
            return verdict(records.REFUSED, reason=exc.message)
        except RunnerError as exc:
            # Capped as the recorded message was, so a long message compares equal to itself.
            now: dict[str, Any] = {"error": {"status": exc.status.value, "message": capped(exc.message)}}
        else:
            audit_id = outcome.audit_id
            now = {"result": as_json(outcome.result)}
        diff = json_diff(answered(record.data), now)
        if not diff:
            return verdict(records.SAME, replay_audit_id=audit_id)
        return verdict(records.DIFFERENT, replay_audit_id=audit_id, diff=tuple(diff))


def records_missing(session_id: str) -> SessionNotFound:
    return SessionNotFound(f"the audit log holds no records of session {session_id!r}")


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)
