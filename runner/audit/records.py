"""What the audit log holds: events as the service hands them in, records as the chain stores them.

A record's ``body`` is its canonical JSON without the hash (keys sorted, no
spaces, UTF-8, no NaN); its ``hash`` is SHA-256 over the previous record's hash
followed by that body. The first record's previous hash is ``GENESIS``.
Changing, inserting or removing any record therefore changes every hash after
it, and ``verify`` finds the first one that no longer fits.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64

SESSION_OPEN = "session.open"
"""A session was opened, or failed to open: caller, profile, image and its digest, limits, network, runtime."""
SESSION_CLOSE = "session.close"
"""A session ended: how (closed, reaped, failed), why, and its usage."""
REQUEST = "request"
"""One MCP request and its response exactly as returned to the caller (result, or error status and message).

When the request sent anything to the server, ``intents`` names the ``request.intent`` records written before.
"""
REQUEST_INTENT = "request.intent"
"""What is about to be sent to a server, durable before it is sent (write-ahead): method, params, ``request_id``.

Written for every message a caller's request sends (a tools/call may first send tools/list), so a call
that ran is on record even when its ``request`` record never gets written (a crash, a value the log
refuses). ``request_id`` names that ``request`` record, which may be missing for the same reasons.
"""
POLICY = "policy"
"""A policy decision: opening a profile, calling a tool (allow, approval, deny) with the rule that decided."""
VALIDATION = "validation"
"""Arguments or a result that failed validation on the host."""
FINDING = "finding"
"""What the sanitizer found (and redacted, flagged or blocked) in something it returned."""
APPROVAL = "approval"
"""An approval requested, decided, claimed or expired."""
THROTTLE = "throttle"
"""A rate, concurrency or session limit refused a request."""
QUARANTINE = "quarantine"
"""A session ended for too many denied, blocked or invalid events."""
EXIT = "exit"
"""A sandbox stopped on its own: out of memory, crashed, broke the protocol."""
EGRESS = "egress"
"""A decision of a session's egress proxy."""
SERVER_REQUEST = "server_request"
"""A sandboxed server's request to the client (sampling, elicitation, roots), sanitized as the client was shown it,
and its outcome: ``answered`` (the answer as the server got it), ``declined``, ``unhandled`` (nobody could answer),
``invalid_request``, ``blocked``, ``invalid_answer``, ``failed`` or ``throttled``; ``related`` names the request
record it came up under, ``door`` how the session's caller is reached."""
RETENTION = "retention"
"""Records older than the retention period were exported and deleted; names the export and the chain's anchor."""

KINDS = (
    SESSION_OPEN, SESSION_CLOSE, REQUEST, REQUEST_INTENT, POLICY, VALIDATION, FINDING, APPROVAL, THROTTLE,
    QUARANTINE, EXIT, EGRESS, RETENTION, SERVER_REQUEST,
)  # fmt: skip


def canonical_json(value: Any) -> str:
    """The one serialization that is hashed: sorted keys, no whitespace, UTF-8 text, finite numbers only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


INPUT_CAP_BYTES = 4096
"""Caller input over this size (UTF-8 bytes) is kept as a digest: a refused request must not cost its size on disk."""
PREFIX_CHARS = 256


def capped(value: Any) -> Any:
    """``value`` as a record keeps caller input: itself when small, else ``{"sha256", "bytes", "prefix"}``.

    A string is measured as its UTF-8, anything else as its canonical JSON; the digest covers those bytes, so
    whoever holds the original can still prove it is the one recorded. A value the log cannot hold at all
    (a non-finite number, a lone surrogate, nesting too deep) becomes ``{"unrecordable": why}``: recording
    a refusal must never fail because of what was refused.
    """
    try:
        text = value if isinstance(value, str) else canonical_json(value)
        size = len(text.encode("utf-8"))
        if size <= INPUT_CAP_BYTES:
            return value
    except (ValueError, RecursionError) as exc:
        return {"unrecordable": why_unrecordable(exc)}
    return {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "bytes": size, "prefix": text[:PREFIX_CHARS]}


def capped_fields(values: Mapping[str, Any], *, keep: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Each field of ``values`` (a mapping whose keys the service chose) capped, except those named in ``keep``."""
    return {key: value if key in keep else capped(value) for key, value in values.items()}


def is_capped(value: Any) -> bool:
    """Whether ``value`` is a digest ``capped`` put in place of caller input."""
    return isinstance(value, Mapping) and value.keys() in ({"sha256", "bytes", "prefix"}, {"unrecordable"})


def why_unrecordable(error: BaseException) -> str:
    """Why ``canonical_json`` refused a value, in words that quote none of it."""
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error)[:200]


def chain_hash(previous: str, body: str) -> str:
    return hashlib.sha256((previous + body).encode("utf-8")).hexdigest()


def new_audit_id() -> str:
    """``aud_`` + 16 hex digits: known before the record is written, so a response can name it."""
    return "aud_" + secrets.token_hex(8)


def iso_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AuditEvent:
    """Something to record; the store gives it its place in the chain."""

    kind: str
    session_id: str
    caller: str
    data: Mapping[str, Any]
    """JSON-safe detail; the service puts only sanitized, secret-free values here."""
    id: str = field(default_factory=new_audit_id)
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    id: str
    at: float
    kind: str
    session_id: str
    caller: str
    data: Mapping[str, Any]
    prev: str
    hash: str

    @staticmethod
    def body_of(seq: int, event: AuditEvent, prev: str) -> str:
        """The canonical body the hash covers (``at`` as ISO-8601 UTC text, so the JSON is exact)."""
        return canonical_json({
            "seq": seq, "id": event.id, "at": iso_time(event.at), "kind": event.kind,
            "session_id": event.session_id, "caller": event.caller, "data": event.data, "prev": prev,
        })  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The record as exported and streamed: its body's fields plus ``hash``."""
        return {
            "seq": self.seq, "id": self.id, "at": iso_time(self.at), "kind": self.kind,
            "session_id": self.session_id, "caller": self.caller, "data": self.data, "prev": self.prev,
            "hash": self.hash,
        }  # fmt: skip


@dataclass(frozen=True)
class AuditQuery:
    """Which records to return, oldest first; empty fields do not filter."""

    record_id: str = ""
    session_id: str = ""
    caller: str = ""
    since: float | None = None
    """Unix time, inclusive."""
    until: float | None = None
    """Unix time, exclusive."""
    kinds: tuple[str, ...] = ()
    after_seq: int = 0
    """Only records after this position: how a reader pages through a long answer."""
    limit: int = 0
    """At most this many records (0: no limit)."""


@dataclass(frozen=True)
class Verification:
    """The outcome of walking the chain."""

    intact: bool
    checked: int
    """Records checked."""
    first_seq: int
    """The oldest record still held (retention deletes older ones); 0 for an empty log."""
    head_seq: int
    head_hash: str
    """The newest record: keep a copy elsewhere to notice the newest records being cut off later."""
    broken_seq: int = 0
    broken_id: str = ""
    problem: str = ""
    """For people: what does not fit at ``broken_seq``."""


@dataclass(frozen=True)
class PruneResult:
    deleted: int
    export: str
    """The JSON Lines file the deleted records were written to first ("" when nothing was deleted)."""
    first_kept_seq: int


SAME = "same"
DIFFERENT = "different"
REFUSED = "refused"


@dataclass(frozen=True)
class ReplayVerdict:
    """One recorded tool call, run again in a fresh sandbox of the same profile and image digest."""

    index: int
    """1-based position among the session's recorded calls."""
    tool: str
    verdict: str
    """``same``, ``different`` (see ``diff``) or ``refused`` (the policy now denies it, or asks for approval)."""
    original_audit_id: str
    replay_session_id: str
    replay_audit_id: str = ""
    """The replayed call's own record ("" when it was not run)."""
    diff: tuple[Mapping[str, Any], ...] = ()
    """For ``different``: ``{"op": "add"|"remove"|"replace", "path": JSON Pointer, "old"?: …, "new"?: …}`` each."""
    reason: str = ""
    """For ``refused``: the policy's message naming the rule."""
