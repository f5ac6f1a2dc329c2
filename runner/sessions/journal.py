"""What the SessionManager writes to the audit log, in the shapes its readers (CLI, replay) expect.

Two ways in: ``note`` queues a record and moves on (policy decisions, egress,
approvals: each is followed by the request record that waits), ``request`` and
``record`` return only once the record is durable, so no response leaves the
service before what it says is on disk. A response whose record could not be
written is withheld (``AuditError``). Nothing here reaches a secret: results are
recorded as sanitized for the caller, and what a caller sent has the session's
own secrets redacted.

Write-ahead: inside a ``request`` block, ``sending`` commits a ``request.intent``
record of each message before it goes to the server; if it cannot be written,
the message is not sent. The ``request`` record (the outcome) follows and names
its intents. So a call that ran is on record even when its outcome cannot be
written (a crash, a value the log refuses).

One fsync per request (``fsync_intents`` False, the default): intents and notes
are committed without one of their own (in the WAL, they survive a crash of the
service), and the fsync of the outcome that follows (before the answer leaves)
makes them durable with it; the store syncs on its own soon after when no
outcome comes (``runner.audit.store.IDLE_SYNC_S``). With ``fsync_intents`` every
record is fsync'd before it is reported, the intent before its message is sent.

What a caller sent is kept capped (``records.capped``): refused requests cost
a few hundred bytes whatever their size; only the arguments of a tool call that
is sent are kept whole, in its intent, because replay runs them again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel

from runner.approvals import Approval
from runner.audit import records
from runner.audit.records import AuditEvent, AuditRecord, canonical_json, capped, capped_fields, new_audit_id
from runner.audit.store import AuditStore
from runner.errors import (
    AuditError,
    InvalidArgument,
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
from runner.observe import tracing
from runner.sandbox.base import EgressDecision

log = logging.getLogger(__name__)

Redact = Callable[[str], str]
Observer = Callable[[AuditEvent], None]
"""Told of every event as it is made, before it is written, whether or not the audit log is on (metrics, logs)."""


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


def kept_input(value: Any, redact: Redact, *, whole: bool = False) -> Any:
    """What a caller sent, as records keep it: the session's secrets redacted, capped unless kept ``whole``."""
    try:
        value = redacted(value, redact)
    except RecursionError as exc:
        return {"unrecordable": records.why_unrecordable(exc)}
    return value if whole else capped(value)


def findings_json(findings: tuple[Finding, ...]) -> list[dict[str, Any]]:
    return [asdict(f) for f in findings]


def error_json(error: RunnerError, redact: Redact | None = None) -> dict[str, Any]:
    # Capped: a refusal's message may quote what the caller sent (a 3 MiB profile name, say).
    message = capped(redact(error.message) if redact else error.message)
    out: dict[str, Any] = {"status": error.status.value, "message": message}
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
    session_id: str = ""
    caller: str = ""
    id: str = field(default_factory=new_audit_id)
    redact: Redact = _same
    """The session's own secrets out of what the caller sent; set once the session is known."""
    returned: dict[str, Any] = field(default_factory=dict)
    """What the caller gets: ``result`` (JSON as returned), ``findings``, and for tool calls ``approval_id``."""
    outcome: str = "ok"
    intents: list[str] = field(default_factory=list)
    """The ``request.intent`` records of what this request sent to the server, in order."""
    serving: bool = True
    """The request block has not ended: notes of ``HELD_KINDS`` made for it wait in ``held``."""
    held: list[AuditEvent] = field(default_factory=list)
    """Notes queued with the request's next record (its intent or outcome), in one transaction with it."""
    door: str = ""
    """How the session's caller reached the runner (``grpc``, ``mcp-http``…); set once the session is known."""

    def result(self, value: Any, findings: tuple[Finding, ...] = ()) -> None:
        self.returned["result"] = as_json(value)
        if findings:
            self.returned["findings"] = findings_json(findings)


HELD_KINDS = frozenset({records.POLICY, records.FINDING})
"""Notes a request makes just before its intent or its outcome (the policy's decision, what the sanitizer found):
written in one transaction with that record, not one of their own. Any other note written meanwhile goes with
them, so the order of a request's records stays the order they were made in."""

_serving: contextvars.ContextVar[RequestEntry | None] = contextvars.ContextVar("serving", default=None)
"""The request the current task serves: what the manager sends on its behalf, however deep, is recorded under it."""


class Journal:
    def __init__(
        self, store: AuditStore | None, *, fsync_intents: bool = False, observers: Iterable[Observer] = ()
    ) -> None:
        self._store = store  # None: the audit log is turned off (benchmarks), and nothing is recorded
        self._fsync_each = fsync_intents
        """Intents and notes fsync'd on their own too, not only by the outcome that follows them."""
        self._observers = tuple(observers)
        self._failed_observers: set[Observer] = set()

    def observe(self, event: AuditEvent) -> None:
        """Tell every observer of ``event``; one that raises is logged (once) and never fails the request."""
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                if observer not in self._failed_observers:
                    self._failed_observers.add(observer)
                    log.exception("an observer of audit events (%r) failed; its later failures are not logged",
                                  observer)  # fmt: skip

    def note(self, kind: str, session_id: str, caller: str, data: Mapping[str, Any]) -> None:
        """Queue a record; if it cannot be written it is logged, and the next durable record fails too."""
        self._queue(AuditEvent(kind, session_id, caller, data))

    def _durable_note(self, kind: str, session_id: str, caller: str, data: Mapping[str, Any]) -> None:
        event = AuditEvent(kind, session_id, caller, data)
        self.observe(event)
        if self._store is not None:
            self._submit(event, True, _serving.get()).add_done_callback(_log_failure)

    def _queue(self, event: AuditEvent, entry: RequestEntry | None = None) -> None:
        """Queue ``event`` (after the notes ``entry``, or the request this task serves, holds); a note of
        ``HELD_KINDS`` made for a request is held for its next record instead."""
        self.observe(event)
        if self._store is None:
            return
        entry = entry or _serving.get()
        if entry is not None and entry.serving and event.kind in HELD_KINDS:
            entry.held.append(event)
            return
        self._submit(event, self._fsync_each, entry).add_done_callback(_log_failure)

    def _submit(
        self, event: AuditEvent, durable: bool, entry: RequestEntry | None
    ) -> concurrent.futures.Future[AuditRecord]:
        """``event`` to the store, in one transaction with the notes ``entry`` holds, after them."""
        assert self._store is not None
        if entry is None or not entry.held:
            return self._store.submit(event, durable=durable)
        held, entry.held = entry.held, []
        with self._store.batch():
            for note in held:
                self._store.submit(note, durable=self._fsync_each).add_done_callback(_log_failure)
            return self._store.submit(event, durable=durable)

    async def record(self, event: AuditEvent, *, durable: bool = True, entry: RequestEntry | None = None) -> None:
        """Write ``event`` (after the notes ``entry`` holds) and wait until it is committed, and with ``durable``
        fsync'd; AuditError if it cannot be."""
        if self._store is not None:
            attributes: tracing.Attributes = {"mcp_runner.audit.kind": event.kind, "mcp_runner.audit.durable": durable}
            with tracing.step("audit write", attributes):
                await asyncio.wrap_future(self._submit(event, durable, entry))

    async def durable_or_raise(self, kind: str, session_id: str, caller: str, data: Mapping[str, Any]) -> None:
        """Write and wait; what depends on it (an answer) is withheld with AuditError if it cannot be written."""
        await self._durable(AuditEvent(kind, session_id, caller, data), None)

    @contextlib.asynccontextmanager
    async def request(self, session_id: str, caller: str, method: str, params: Mapping[str, Any]
                      ) -> AsyncIterator[RequestEntry]:
        """Records the request and its answer (result or error) once it is known; durable before it leaves."""
        # A session id is caller input too: one the log cannot hold as a column is kept, capped, in the data.
        column = session_id if isinstance(capped(session_id), str) else ""
        entry = RequestEntry(method, params, column, caller)
        started = time.monotonic()
        token = _serving.set(entry)
        try:
            yield entry
        except AuditError as exc:
            # The log failed already (an intent, say); its message says what was and was not sent.
            data = self._request_data(entry, started, "error", session_id, error=error_json(exc, entry.redact))
            entry.serving = False
            self._queue(AuditEvent(records.REQUEST, column, caller, data, id=entry.id), entry)
            raise
        except RunnerError as exc:
            self._classify(column, caller, method, exc, entry.redact)
            data = self._request_data(entry, started, "error", session_id, error=error_json(exc, entry.redact))
            entry.serving = False
            await self._durable(AuditEvent(records.REQUEST, column, caller, data, id=entry.id), exc, entry)
            raise
        except BaseException:
            # Cancelled (the caller left) or a bug: nothing was answered, so nothing waits for the record.
            data = self._request_data(entry, started, "abandoned", session_id)
            entry.serving = False
            self._queue(AuditEvent(records.REQUEST, column, caller, data, id=entry.id), entry)
            raise
        finally:
            _serving.reset(token)
        data = self._request_data(entry, started, entry.outcome, session_id)
        entry.serving = False
        await self._durable(AuditEvent(records.REQUEST, column, caller, data, id=entry.id), None, entry)

    @staticmethod
    def serving_id() -> str:
        """The audit id of the request the current task serves ("" outside one): what the server sends back while
        it runs is recorded as related to it."""
        entry = _serving.get()
        return entry.id if entry is not None else ""

    async def sending(self, method: str, params: Mapping[str, Any]) -> None:
        """Commit the intent to send ``method`` before it is sent; raises if it cannot be, so it is not sent.

        InvalidArgument when the log's canonical JSON cannot hold ``params`` (the door should have refused them:
        this is the second line), AuditError when the record cannot be written. Outside a request (a session
        starting) nothing is written: the session.open record tells what starting did.
        """
        try:
            canonical_json(params).encode("utf-8")
        except (ValueError, RecursionError) as exc:
            why = records.why_unrecordable(exc)
            raise InvalidArgument(
                f"the {method} request cannot be recorded in the audit log ({why}), so it was not sent"
            ) from None
        entry = _serving.get()
        if entry is None or (self._store is None and not self._observers):
            return
        event = AuditEvent(records.REQUEST_INTENT, entry.session_id, entry.caller, {
            "method": method, "params": _params_kept(method, params, entry.redact, whole=True), "request_id": entry.id,
        })  # fmt: skip
        self.observe(event)
        if self._store is None:
            return
        # Named before it is committed: the writer records it even if this caller leaves while it waits (a
        # deadline, a cancel), and the outcome ("abandoned", then) must still name it.
        entry.intents.append(event.id)
        try:
            await self.record(event, durable=self._fsync_each, entry=entry)
        except AuditError as exc:
            entry.intents.remove(event.id)  # not on record
            log.error("not sending %s of session %s: %s", method, entry.session_id or "-", exc.message)
            raise AuditError(
                f"{exc.message}; {method} was not sent to the server because its record could not be written"
            ) from exc

    def _request_data(
        self, entry: RequestEntry, started: float, outcome: str, session_id: str, **extra: Any
    ) -> dict[str, Any]:
        return {
            "method": entry.method,
            # Whole arguments live in the intent (replay's input); the outcome keeps caller input capped.
            "params": _params_kept(entry.method, entry.params, entry.redact, whole=False),
            "outcome": outcome,
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
            **({"intents": list(entry.intents)} if entry.intents else {}),
            **({"door": entry.door} if entry.door else {}),
            **({} if entry.session_id == session_id else {"session_id": capped(session_id)}),
            **entry.returned,
            **extra,
        }

    async def _durable(
        self, event: AuditEvent, answering: RunnerError | None, entry: RequestEntry | None = None
    ) -> None:
        self.observe(event)
        try:
            await self.record(event, entry=entry)
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
            self.note(records.THROTTLE, "", caller, {
                "action": "open", "profile": capped(profile), "error": error_json(error),
            })  # fmt: skip

    def throttled(self, caller: str, action: str, error: RateLimited, *, recorded: bool) -> None:
        """A request (``action``: its method, or ``open``) refused past the caller's refusal rate, before its record
        was begun. Every one is told to the observers (metrics count each); only a run's first is ``recorded`` (a
        short throttle note), so a flood of refusals cannot grow the audit log."""
        event = AuditEvent(records.THROTTLE, "", caller, {"action": capped(action), "error": error_json(error)})
        if recorded:
            self._queue(event)
        else:
            self.observe(event)

    def policy(self, session_id: str, caller: str, action: str, verdict: str, rule: str, **detail: Any) -> None:
        """``rule`` (a denial's message may quote the caller) and ``detail`` (tool, profile names) are capped."""
        self.note(records.POLICY, session_id, caller, {
            "action": action, "verdict": verdict, "rule": capped(rule), **capped_fields(detail),
        })  # fmt: skip

    def findings(self, session_id: str, caller: str, where: str, found: tuple[Finding, ...]) -> None:
        if found:
            self.note(records.FINDING, session_id, caller, {"where": where, "findings": findings_json(found)})

    def egress(self, session_id: str, caller: str, decision: EgressDecision) -> None:
        self.note(records.EGRESS, session_id, caller, asdict(decision))

    def approval(self, approval: Approval, redact: Redact) -> None:
        """Queued like a note, but fsync'd at once: a decision is the approver's answer, on disk as soon as it can be
        rather than with the next outcome or the idle sync."""
        self._durable_note(records.APPROVAL, approval.session_id, approval.caller, {
            "approval_id": approval.approval_id, "state": approval.state.value, "tool": capped(approval.tool),
            "arguments": kept_input(dict(approval.arguments), redact), "rule": approval.rule,
            "decided_by": approval.decided_by, "reason": capped(approval.reason), "used": approval.used,
            "expires_at": records.iso_time(approval.expires_at),
        })  # fmt: skip


def _params_kept(method: str, params: Mapping[str, Any], redact: Redact, *, whole: bool) -> dict[str, Any]:
    """A request's params as recorded; with ``whole``, a tool call's arguments are kept in full (replay's input)."""
    return {
        key: kept_input(value, redact, whole=whole and method == "tools/call" and key == "arguments")
        for key, value in params.items()
    }


def _log_failure(future: concurrent.futures.Future[AuditRecord]) -> None:
    error = future.exception()
    if error is not None:
        log.error("an audit record could not be written: %s", error)


async def durable(journal: Journal, kind: str, session_id: str, caller: str, data: Mapping[str, Any]) -> None:
    """Write and wait, logging instead of raising: for records of things that happen whether or not they land."""
    event = AuditEvent(kind, session_id, caller, data)
    journal.observe(event)
    try:
        await journal.record(event)
    except AuditError as exc:
        log.error("audit record %s of session %s: %s", kind, session_id, exc.message)
