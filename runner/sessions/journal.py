"""What the SessionManager writes to the audit log, in the shapes its readers (CLI, replay) expect.

Two ways in: ``note`` queues a record and moves on (policy decisions, egress,
approvals: each is followed by the request record that waits), ``request`` and
``record`` return only once the record is durable, so no response leaves the
service before what it says is on disk. A response whose record could not be
written is withheld (``AuditError``). Nothing here reaches a secret: results are
recorded as sanitized for the caller, and what a caller sent has the session's
own secrets redacted.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel

from runner.approvals import Approval
from runner.audit import records
from runner.audit.records import AuditEvent, AuditRecord, new_audit_id
from runner.audit.store import AuditStore
from runner.errors import (
    AuditError,
    PermissionDenied,
    ProtocolViolation,
    RateLimited,
    ResourceExhausted,
    ResultBlocked,
    ResultRejected,
    RunnerError,
    SchemaViolation,
    ServerError,
)
from runner.guard.findings import Finding
from runner.sandbox.base import EgressDecision

log = logging.getLogger(__name__)

Redact = Callable[[str], str]


def as_json(value: Any) -> Any:
    """A returned value (mcp models, lists of them) as the JSON the caller's answer carries."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list | tuple):
        return [as_json(item) for item in value]
    return value


def redacted(value: Any, redact: Redact) -> Any:
    """``value`` (JSON) with ``redact`` applied to every string in it, keys included."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact(str(k)): redacted(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item, redact) for item in value]
    return value


def findings_json(findings: tuple[Finding, ...]) -> list[dict[str, Any]]:
    return [asdict(f) for f in findings]


def error_json(error: RunnerError, redact: Redact | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": error.status.value, "message": redact(error.message) if redact else error.message}
    if isinstance(error, ServerError):
        out["origin"] = "server"
        out["code"] = error.code
    return out


def _same(text: str) -> str:
    return text


@dataclass
class RequestEntry:
    """One request being served; the operation fills in what it returns before the block ends."""

    method: str
    params: Mapping[str, Any]
    id: str = field(default_factory=new_audit_id)
    redact: Redact = _same
    """The session's own secrets out of what the caller sent; set once the session is known."""
    returned: dict[str, Any] = field(default_factory=dict)
    """What the caller gets: ``result`` (JSON as returned), ``findings``, and for tool calls ``approval_id``."""
    outcome: str = "ok"

    def result(self, value: Any, findings: tuple[Finding, ...] = ()) -> None:
        self.returned["result"] = as_json(value)
        if findings:
            self.returned["findings"] = findings_json(findings)


class Journal:
    def __init__(self, store: AuditStore | None) -> None:
        self._store = store  # None: the audit log is turned off (benchmarks), and nothing is recorded

    def note(self, kind: str, session_id: str, caller: str, data: Mapping[str, Any]) -> None:
        """Queue a record; if it cannot be written it is logged, and the next durable record fails too."""
        if self._store is None:
            return
        self._store.submit(AuditEvent(kind, session_id, caller, data)).add_done_callback(_log_failure)

    async def record(self, event: AuditEvent) -> None:
        """Write ``event`` and wait until it is durable; AuditError if it cannot be."""
        if self._store is not None:
            await self._store.append(event)

    async def durable_or_raise(self, kind: str, session_id: str, caller: str, data: Mapping[str, Any]) -> None:
        """Write and wait; what depends on it (an answer) is withheld with AuditError if it cannot be written."""
        await self._durable(AuditEvent(kind, session_id, caller, data), None)

    @contextlib.asynccontextmanager
    async def request(self, session_id: str, caller: str, method: str, params: Mapping[str, Any]
                      ) -> AsyncIterator[RequestEntry]:
        """Records the request and its answer (result or error) once it is known; durable before it leaves."""
        entry = RequestEntry(method, params)
        started = time.monotonic()
        try:
            yield entry
        except RunnerError as exc:
            self._classify(session_id, caller, method, exc, entry.redact)
            data = self._request_data(entry, started, "error", error=error_json(exc, entry.redact))
            await self._durable(AuditEvent(records.REQUEST, session_id, caller, data, id=entry.id), exc)
            raise
        except BaseException:
            # Cancelled (the caller left) or a bug: nothing was answered, so nothing waits for the record.
            self.note(records.REQUEST, session_id, caller, self._request_data(entry, started, "abandoned"))
            raise
        data = self._request_data(entry, started, entry.outcome)
        await self._durable(AuditEvent(records.REQUEST, session_id, caller, data, id=entry.id), None)

    def _request_data(self, entry: RequestEntry, started: float, outcome: str, **extra: Any) -> dict[str, Any]:
        return {
            "method": entry.method,
            "params": redacted(dict(entry.params), entry.redact),
            "outcome": outcome,
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
            **entry.returned,
            **extra,
        }

    async def _durable(self, event: AuditEvent, answering: RunnerError | None) -> None:
        try:
            await self.record(event)
        except AuditError as exc:
            what = event.data.get("method") or event.kind
            log.error("withholding the answer to %s of session %s: %s", what, event.session_id or "-", exc.message)
            raise AuditError(f"{exc.message}; the answer was withheld because it could not be recorded") from (
                answering or exc
            )

    def _classify(self, session_id: str, caller: str, method: str, error: RunnerError, redact: Redact) -> None:
        """A refusal gets a record of its kind too, so ``--kind`` finds every throttle or validation failure."""
        kind = None
        if isinstance(error, ResultBlocked):
            kind = records.FINDING
        elif isinstance(error, RateLimited):
            kind = records.THROTTLE
        elif isinstance(error, SchemaViolation | ResultRejected | ProtocolViolation):
            kind = records.VALIDATION
        if kind is not None:
            self.note(kind, session_id, caller, {"method": method, "error": error_json(error, redact)})

    # -- the other kinds, one shape each -------------------------------------------------------------------

    def refusal(self, caller: str, profile: str, error: RunnerError) -> None:
        """An open refused before any sandbox: by policy (a policy record) or by a limit (a throttle record)."""
        if isinstance(error, PermissionDenied):
            self.policy("", caller, "open", "deny", error.message, profile=profile)
        elif isinstance(error, ResourceExhausted):
            self.note(records.THROTTLE, "", caller, {"action": "open", "profile": profile, "error": error_json(error)})

    def policy(self, session_id: str, caller: str, action: str, verdict: str, rule: str, **detail: Any) -> None:
        self.note(records.POLICY, session_id, caller, {"action": action, "verdict": verdict, "rule": rule, **detail})

    def findings(self, session_id: str, caller: str, where: str, found: tuple[Finding, ...]) -> None:
        if found:
            self.note(records.FINDING, session_id, caller, {"where": where, "findings": findings_json(found)})

    def egress(self, session_id: str, caller: str, decision: EgressDecision) -> None:
        self.note(records.EGRESS, session_id, caller, asdict(decision))

    def approval(self, approval: Approval, redact: Redact) -> None:
        self.note(records.APPROVAL, approval.session_id, approval.caller, {
            "approval_id": approval.approval_id, "state": approval.state.value, "tool": approval.tool,
            "arguments": redacted(dict(approval.arguments), redact), "rule": approval.rule,
            "decided_by": approval.decided_by, "reason": approval.reason, "used": approval.used,
            "expires_at": records.iso_time(approval.expires_at),
        })  # fmt: skip


def _log_failure(future: concurrent.futures.Future[AuditRecord]) -> None:
    error = future.exception()
    if error is not None:
        log.error("an audit record could not be written: %s", error)


async def durable(journal: Journal, kind: str, session_id: str, caller: str, data: Mapping[str, Any]) -> None:
    """Write and wait, logging instead of raising: for records of things that happen whether or not they land."""
    try:
        await journal.record(AuditEvent(kind, session_id, caller, data))
    except AuditError as exc:
        log.error("audit record %s of session %s: %s", kind, session_id, exc.message)
