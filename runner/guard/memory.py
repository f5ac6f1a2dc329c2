"""The guard's memory: first-seen pins, approvals and callers' rate buckets, kept in SQLite across restarts.

Without it a restart forgets every first-seen pin, so a server that changes a
tool right after a restart is trusted afresh (a rug pull goes unseen); it
forgets approvals, and it refills every caller's token buckets. The file
lives in the state directory (``guard-<instance>.sqlite3``, beside the
instance lock and by default the audit log), 0600, in WAL mode.

Durability follows what a row decides. Pins and approvals are security
decisions: they are written with ``synchronous=FULL`` (fsync at commit)
before the answer that depends on them leaves, so not even a power cut
loses one. They are rare (a pin per new tool, bounded per profile; a few
writes per approval), so the fsync on the event loop is affordable. Rate
buckets change on every call: they are written with ``synchronous=NORMAL``,
which in WAL mode survives the process being killed (the commit is in the
WAL file, in the OS's cache) and only a machine crash can lose the last
ones: cheap enough for the call path, and a crash then refills a bucket at
worst. Times are stored as Unix time (wall clock), since a monotonic clock
means nothing to another process.

What is not kept, and why: session rate buckets and anomaly windows belong to
sessions, and no session outlives the process (the start-up sweep removes
their sandboxes), so there is nothing to restore them to; a quarantine ends
its session, and its reason is in the audit log's quarantine and
session.close records. Approvals still pending at start expire with a reason
(see ``ApprovalBook.expire_all_pending``).

One process at a time: the file is locked (``flock`` on ``<file>.lock``) for
as long as it is open, and a second opener gets Unavailable naming the file.
Any SQLite or OS error at start (a corrupt file, another writer) is
Unavailable with the path and the cause: a guard that cannot remember must
not start. Not thread-safe: use it from the event loop's thread.

To accept a changed tool definition, pin its new fingerprint in the profile
(configured pins win), or, with the service stopped, delete its row:
``sqlite3 guard-<instance>.sqlite3 "DELETE FROM pins WHERE profile = 'p' AND tool = 't'"``.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from runner import sqlite_files
from runner.approvals import Approval, ApprovalState
from runner.errors import Unavailable

SCHEMA_VERSION = "1"
_BUSY_TIMEOUT_S = 2.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', '1');
CREATE TABLE IF NOT EXISTS pins (
    profile TEXT NOT NULL, tool TEXT NOT NULL, fingerprint TEXT NOT NULL, PRIMARY KEY (profile, tool)
);
CREATE TABLE IF NOT EXISTS approvals (approval_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS buckets (
    caller TEXT NOT NULL, kind TEXT NOT NULL, rate_per_s REAL NOT NULL, burst INTEGER NOT NULL,
    tokens REAL NOT NULL, at REAL NOT NULL, PRIMARY KEY (caller, kind)
);
"""

# Only rows of numbers: a damaged row is left for ``buckets`` to refuse, not silently dropped.
_DROP_REFILLED = """
DELETE FROM buckets
WHERE typeof(rate_per_s) IN ('real', 'integer') AND typeof(burst) IN ('real', 'integer')
    AND typeof(tokens) IN ('real', 'integer') AND typeof(at) IN ('real', 'integer')
    AND tokens + max(0.0, ? - at) * rate_per_s >= burst
"""


def memory_path(state_dir: Path, instance: str) -> Path:
    """One file per instance, like the instance lock: two instances never share a guard's memory."""
    return state_dir / f"guard-{instance}.sqlite3"


@dataclass(frozen=True)
class SavedBucket:
    """A token bucket as last seen: ``tokens`` at Unix time ``at``, for the rate and burst it was built with."""

    rate_per_s: float
    burst: int
    tokens: float
    at: float


class GuardMemory:
    """The SQLite file behind pins, approvals and caller buckets; see the module docstring."""

    def __init__(self, path: Path, *, wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self._wall = wall
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._synchronous = ""

    def open(self) -> None:
        """Lock, open and check the file; Unavailable naming the file and the cause if any of it fails."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            lock_fd = sqlite_files.take_lock(lock_path)
        except sqlite_files.LockHeld:
            raise Unavailable(f"the guard's state file {self.path} is in use by another mcp-runner process") from None
        except OSError as exc:
            raise Unavailable(f"cannot create or lock the guard's state file's lock {lock_path}: {exc}") from None
        try:
            self._db = self._connect()
            self._drop_refilled_buckets(self._wall())
        except BaseException:
            self.close()
            os.close(lock_fd)
            raise
        self._lock_fd = lock_fd

    def _connect(self) -> sqlite3.Connection:
        damaged = (
            f"cannot open the guard's state file {self.path} ({{}}); if it is damaged, move it aside: "
            "the service then starts with no first-seen pins, approvals or rate history"
        )
        try:
            db = sqlite_files.connect_private_wal(self.path, _SCHEMA, SCHEMA_VERSION, timeout=_BUSY_TIMEOUT_S)
        except sqlite_files.NotWriteAhead as exc:
            raise Unavailable(
                f"the guard's state file {self.path} cannot use write-ahead logging (journal mode {exc.mode!r}); "
                "put the state directory on a local file system"
            ) from None
        except sqlite_files.OtherSchema as exc:
            raise Unavailable(
                f"the guard's state file {self.path} has schema {exc.found!r}; this mcp-runner uses {SCHEMA_VERSION}"
            ) from None
        except (OSError, sqlite3.Error) as exc:
            raise Unavailable(damaged.format(exc)) from exc
        try:
            (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise Unavailable(f"the guard's state file {self.path} is damaged: {check}")
        except BaseException as exc:
            db.close()
            if isinstance(exc, sqlite3.Error | OSError):
                raise Unavailable(damaged.format(exc)) from exc
            raise
        return db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- pins --------------------------------------------------------------------------------------------------

    def pins(self) -> dict[str, dict[str, str]]:
        """First-seen pins by profile, then tool name."""
        out: dict[str, dict[str, str]] = {}
        for profile, tool, fingerprint in self._read("SELECT profile, tool, fingerprint FROM pins"):
            out.setdefault(profile, {})[tool] = fingerprint
        return out

    def add_pins(self, profile: str, pins: Mapping[str, str]) -> None:
        """New first-seen pins of ``profile``, durable (fsync) on return; an existing pin is never moved."""
        self._write(
            "INSERT OR IGNORE INTO pins (profile, tool, fingerprint) VALUES (?, ?, ?)",
            [(profile, tool, fingerprint) for tool, fingerprint in pins.items()],
            durable=True,
        )

    # ---- approvals ---------------------------------------------------------------------------------------------

    def approvals(self) -> list[Approval]:
        """Every remembered approval; Unavailable naming the row if one cannot be read back as an approval."""
        out = []
        for approval_id, record in self._read("SELECT approval_id, record FROM approvals"):
            try:
                out.append(_approval(json.loads(record)))
            except (ValueError, TypeError, KeyError) as exc:
                raise self._damaged(f"approval {str(approval_id)[:64]!r}", exc) from exc
        return out

    def save_approval(self, approval: Approval) -> None:
        """The approval as it is now, durable (fsync) on return."""
        self._write(
            "INSERT OR REPLACE INTO approvals (approval_id, record) VALUES (?, ?)",
            [(approval.approval_id, _approval_json(approval))],
            durable=True,
        )

    def drop_approvals(self, approval_ids: Iterable[str]) -> None:
        """Settled approvals past their retention; losing this write only keeps them a little longer."""
        self._write("DELETE FROM approvals WHERE approval_id = ?", [(i,) for i in approval_ids], durable=False)

    # ---- caller rate buckets -----------------------------------------------------------------------------------

    def buckets(self) -> dict[tuple[str, str], SavedBucket]:
        """Saved buckets by (caller, kind)."""
        out = {}
        for caller, kind, rate_per_s, burst, tokens, at in self._read(
            "SELECT caller, kind, rate_per_s, burst, tokens, at FROM buckets"
        ):
            numbers = (rate_per_s, burst, tokens, at)
            if not all(isinstance(n, int | float) and math.isfinite(n) for n in numbers):
                raise self._damaged(f"the {str(kind)[:16]!r} bucket of caller {str(caller)[:64]!r}", numbers)
            out[(str(caller), str(kind))] = SavedBucket(float(rate_per_s), int(burst), float(tokens), float(at))
        return out

    def save_bucket(self, caller: str, kind: str, bucket: SavedBucket) -> None:
        """A caller's bucket after a change; survives the process being killed, not a machine crash (cheap)."""
        self._write(
            "INSERT OR REPLACE INTO buckets (caller, kind, rate_per_s, burst, tokens, at) VALUES (?, ?, ?, ?, ?, ?)",
            [(caller, kind, bucket.rate_per_s, bucket.burst, bucket.tokens, bucket.at)],
            durable=False,
        )

    def _drop_refilled_buckets(self, wall_now: float) -> None:
        """At start, forget buckets full again by now: a full bucket is what an unknown caller gets anyway, so
        such a row says nothing, and callers that never come back do not grow the file without end."""
        self._write(_DROP_REFILLED, [(wall_now,)], durable=False)

    # ---- internals ---------------------------------------------------------------------------------------------

    def _damaged(self, what: str, why: object) -> Unavailable:
        """A row the service cannot trust: it must not start guessing what the guard knew."""
        return Unavailable(
            f"the guard's state file {self.path} is damaged: {what} cannot be read ({str(why)[:200]}); move the "
            "file aside (the service then starts with no first-seen pins, approvals or rate history) or delete the row"
        )

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise Unavailable(f"the guard's state file {self.path} is not open")
        return self._db

    def _read(self, sql: str) -> list[Any]:
        try:
            return self._connection().execute(sql).fetchall()
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot read the guard's state file {self.path}: {exc}") from exc

    def _write(self, sql: str, rows: list[tuple[Any, ...]], *, durable: bool) -> None:
        """One transaction; Unavailable if it fails, so nothing is decided that could not be remembered."""
        if not rows:
            return
        db = self._connection()
        synchronous = "FULL" if durable else "NORMAL"
        try:
            if synchronous != self._synchronous:
                db.execute(f"PRAGMA synchronous={synchronous}")  # only outside a transaction; cheap when unchanged
                self._synchronous = synchronous
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot write the guard's state file {self.path}: {exc}") from exc


def _approval_json(approval: Approval) -> str:
    record = {f.name: getattr(approval, f.name) for f in fields(approval)}
    record["arguments"] = dict(approval.arguments)
    record["state"] = approval.state.value
    # ASCII-only: a lone surrogate in an argument is escaped, not an encoding error.
    return json.dumps(record, ensure_ascii=True, sort_keys=True)


_APPROVAL_TEXT = ("approval_id", "session_id", "caller", "profile", "tool", "rule", "decided_by", "reason")


def _approval(record: dict[str, Any]) -> Approval:
    """The approval a row holds; ValueError or TypeError if the row is not one (the book compares and sends these)."""
    approval = Approval(
        **{**record, "state": ApprovalState(record["state"]), "arguments": MappingProxyType(dict(record["arguments"]))}
    )
    times = (approval.requested_at, approval.expires_at, 0.0 if approval.decided_at is None else approval.decided_at)
    if not all(isinstance(getattr(approval, name), str) for name in _APPROVAL_TEXT) or not all(
        isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) for t in times
    ) or not isinstance(approval.used, bool):
        raise ValueError("a field has the wrong type")
    return approval
