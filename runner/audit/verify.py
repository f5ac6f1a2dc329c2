"""Walk a chain and name the first record that no longer fits.

The database keeps every record's hashed ``body`` next to copies of the fields
that queries filter on. Both are checked: the body against its hash and its
predecessor, the columns against the body, so editing an indexed column to
hide a record from queries is caught as surely as editing the body.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.audit.records import GENESIS, RETENTION, Verification, canonical_json, chain_hash
from runner.errors import AuditError

BODY_KEYS = frozenset({"seq", "id", "at", "kind", "session_id", "caller", "data", "prev"})
_TEXT_FIELDS = ("id", "kind", "session_id", "caller", "prev")
_AT_TOLERANCE_S = 1e-3
"""The body holds ``at`` to the microsecond; the column holds the float it came from."""

NOT_CANONICAL = "its body is not canonical JSON"
ALTERED = "its hash does not match its contents (altered after it was written)"


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that cannot write, so reading and verifying never disturb the writer or the evidence."""
    if not path.is_file():
        raise AuditError(f"no audit log at {path}")
    return sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)


def body_fields(text: str) -> dict[str, Any] | None:
    """The parsed body when it is a well-formed, canonical record body; None otherwise."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or parsed.keys() != BODY_KEYS:
        return None
    try:
        if canonical_json(parsed) != text:
            return None
    except ValueError:
        return None
    if isinstance(parsed["seq"], bool) or not isinstance(parsed["seq"], int):
        return None
    if not isinstance(parsed["data"], dict) or not isinstance(parsed["at"], str):
        return None
    if not all(isinstance(parsed[name], str) for name in _TEXT_FIELDS):
        return None
    return parsed


def body_time(parsed: Mapping[str, Any]) -> float | None:
    try:
        when = datetime.fromisoformat(parsed["at"])
    except ValueError:
        return None
    return None if when.tzinfo is None else when.timestamp()


class _Walk:
    """How far the walk got, so a failure (even a damaged file mid-walk) can say what was fine before it."""

    def __init__(self) -> None:
        self.checked = 0
        self.first_seq = 0
        self.head_seq = 0
        self.head_hash = GENESIS

    def result(self, broken_seq: int = 0, broken_id: str = "", problem: str = "") -> Verification:
        return Verification(
            intact=not problem, checked=self.checked, first_seq=self.first_seq, head_seq=self.head_seq,
            head_hash=self.head_hash, broken_seq=broken_seq, broken_id=broken_id, problem=problem,
        )  # fmt: skip

    def advance(self, seq: int, digest: str) -> None:
        if not self.checked:
            self.first_seq = seq
        self.checked += 1
        self.head_seq = seq
        self.head_hash = digest


def verify_database(path: Path) -> Verification:
    walk = _Walk()
    try:
        with contextlib.closing(connect_readonly(path)) as db:
            rows = db.execute("SELECT seq, id, at, kind, session_id, caller, body, hash FROM records ORDER BY seq")
            for seq, record_id, at, kind, session_id, caller, body, digest in rows:
                columns = {"seq": seq, "id": record_id, "kind": kind, "session_id": session_id, "caller": caller}
                problem = _check(db, walk, columns, at, body, digest)
                if problem:
                    return walk.result(seq, str(record_id), problem)
                walk.advance(seq, digest)
    except sqlite3.OperationalError as exc:
        raise AuditError(f"the audit log {path} could not be read: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        return walk.result(problem=f"the database file is damaged: {exc}")
    return walk.result()


def _check(db: sqlite3.Connection, walk: _Walk, columns: Mapping[str, Any], at: Any, body: Any, digest: Any) -> str:
    if not isinstance(body, str) or (parsed := body_fields(body)) is None:
        return NOT_CANONICAL
    for name, column in columns.items():
        if column != parsed[name]:
            return f"its {name} column ({column!r}) differs from the {name} in its hashed body ({parsed[name]!r})"
    when = body_time(parsed)
    if when is None:
        return f"its body's time ({parsed['at']!r}) is not an ISO-8601 UTC time"
    if not isinstance(at, int | float) or abs(at - when) >= _AT_TOLERANCE_S:
        return f"its at column ({at!r}) differs from the time in its hashed body ({parsed['at']!r})"
    seq, prev = parsed["seq"], parsed["prev"]
    if not walk.checked:
        if seq == 1 and prev != GENESIS:
            return "it is the first record but does not start from the genesis hash: the chain is broken here"
        if seq != 1 and not _accounted_for(db, seq, prev):
            return f"records before seq {seq} are missing and no retention record accounts for them"
    elif seq != walk.head_seq + 1:
        missing = walk.head_seq + 1
        return f"record {missing} is missing" if seq == missing + 1 else f"records {missing}..{seq - 1} are missing"
    elif prev != walk.head_hash:
        return f"it does not follow record {walk.head_seq}: the chain is broken here"
    if digest != chain_hash(prev, body):
        return ALTERED
    return ""


def _accounted_for(db: sqlite3.Connection, first_seq: int, prev: str) -> bool:
    """Whether a held retention record says it deleted everything before ``first_seq``, ending at hash ``prev``.

    The retention records' own bodies are checked when the walk reaches them.
    """
    for (body,) in db.execute("SELECT body FROM records WHERE kind = ? ORDER BY seq", (RETENTION,)):
        parsed = body_fields(body) if isinstance(body, str) else None
        if parsed is None:
            continue
        data = parsed["data"]
        if data.get("first_kept_seq") == first_seq and data.get("anchor") == prev:
            return True
    return False


def verify_export(path: Path) -> Verification:
    """Check a JSON Lines export line by line: each line's hash, and the links between consecutive records."""
    walk = _Walk()
    try:
        with path.open("rb") as lines:
            for number, raw in enumerate(lines, 1):
                try:
                    line = json.loads(raw.decode("utf-8"))
                except ValueError:
                    return walk.result(problem=f"line {number} is not JSON")
                if not isinstance(line, dict) or line.keys() != BODY_KEYS | {"hash"}:
                    return walk.result(problem=f"line {number} is not an audit record")
                digest = line.pop("hash")
                try:
                    body = canonical_json(line)
                except ValueError:
                    return walk.result(problem=f"line {number} is not an audit record")
                if body_fields(body) is None or not isinstance(digest, str):
                    return walk.result(problem=f"line {number} is not an audit record")
                seq, prev = line["seq"], line["prev"]
                if walk.checked and seq == walk.head_seq + 1 and prev != walk.head_hash:
                    problem = f"line {number}: it does not follow record {walk.head_seq}: the chain is broken here"
                    return walk.result(seq, line["id"], problem)
                if digest != chain_hash(prev, body):
                    return walk.result(seq, line["id"], f"line {number}: {ALTERED}")
                walk.advance(seq, digest)
    except FileNotFoundError as exc:
        raise AuditError(f"no audit export at {path}") from exc
    except OSError as exc:
        raise AuditError(f"the audit export {path} could not be read: {exc}") from exc
    return walk.result()
