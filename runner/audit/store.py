"""The audit log: an append-only, hash-chained SQLite (WAL) database with one writer thread.

A durable record is committed with ``synchronous=FULL`` (the WAL fsync'd) before
anyone is told it exists, so a response that names its audit record never
outlives that record. A record submitted with ``durable=False`` is committed
before it is reported, without its own fsync: it is in the WAL, so it survives
a crash of the service, and the next durable commit (its fsync covers the whole
WAL) or the writer's own sync at most ``IDLE_SYNC_S`` after it puts it on disk.
To keep that affordable under load, the writer commits whatever has queued up
while the previous commit was being fsync'd in one transaction (group commit),
with ``FULL`` when anything in it must be durable and ``NORMAL`` otherwise.
Readers open their own read-only connections; WAL lets them read while the
writer writes. Triggers refuse UPDATE always and DELETE outside retention, so
a stray ``sqlite3`` session cannot quietly change the evidence, and a file lock
keeps two runners from forking one chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from runner import sqlite_files
from runner.audit import reading
from runner.audit.export import write_export
from runner.audit.records import (
    GENESIS,
    RETENTION,
    AuditEvent,
    AuditQuery,
    AuditRecord,
    PruneResult,
    Verification,
    chain_hash,
    iso_time,
)
from runner.audit.schema import INSERT, SCHEMA, SCHEMA_VERSION
from runner.audit.verify import verify_database
from runner.errors import AuditError

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

IDLE_SYNC_S = 0.05
"""A record committed without an fsync is fsync'd at most this long after, when no durable commit came first."""
_now = time.monotonic
"""The writer's clock for IDLE_SYNC_S (a name of its own, so a test can move it)."""

@dataclass(eq=False)
class _Append:
    event: AuditEvent
    future: Future[AuditRecord]
    durable: bool


@dataclass(eq=False)
class _Prune:
    before: float
    export_dir: Path
    future: Future[PruneResult]


@dataclass(frozen=True)
class _Waiting:
    """An append the writer took from the queue: its future None when its waiter gave up (it is written anyway)."""

    event: AuditEvent
    future: Future[AuditRecord] | None
    durable: bool


_Item = _Append | list[_Append] | _Prune | None
"""A list is a batch (``AuditStore.batch``), committed in one transaction; None tells the writer to finish what is
queued and stop."""

_NEW, _OPEN, _CLOSED = "new", "open", "closed"


def _chain(seq: int, event: AuditEvent, prev: str) -> tuple[AuditRecord, tuple[Any, ...]]:
    """The record and its row; TypeError or ValueError when the event's data is not JSON."""
    body = AuditRecord.body_of(seq, event, prev)
    digest = chain_hash(prev, body)
    record = AuditRecord(seq, event.id, event.at, event.kind, event.session_id, event.caller, event.data, prev, digest)
    return record, (seq, event.id, event.at, event.kind, event.session_id, event.caller, body, digest)


def _claim(future: Future[_T]) -> Future[_T] | None:
    """The future to resolve, or None if its waiter gave up first (the event is recorded all the same)."""
    return future if future.set_running_or_notify_cancel() else None


def _fail(future: Future[Any] | None, error: AuditError) -> None:
    if future is not None and not future.done():
        future.set_exception(error)


def _failed(error: AuditError) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_exception(error)
    return future


class AuditStore:
    """The one writer of one audit database; ``query``, ``pages`` and ``verify`` may run on any thread."""

    def __init__(
        self, path: Path, *, batch_max: int = 256, on_commit: Callable[[float], None] | None = None
    ) -> None:
        """``on_commit``: told, on the writer thread, how many seconds each transaction took (metrics)."""
        if batch_max < 1:
            raise ValueError(f"batch_max must be at least 1, not {batch_max}")
        self.path = path
        self._on_commit = on_commit
        self._batch_max = batch_max
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._state = _NEW
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self._lock_fd = -1
        self._head_seq = 0
        self._head_hash = GENESIS
        self._commits = 0
        self._synced_commits = 0
        self._synchronous = ""
        self._unsynced = False
        """Records are committed that no fsync has covered yet (written by a ``NORMAL`` commit since the last)."""
        self._unsynced_since = 0.0
        """When the oldest of those was committed (``_now``): it is fsync'd at most IDLE_SYNC_S after."""
        self._batching = threading.local()
        """``appends``: what this thread submits inside ``batch``, queued at its end."""

    @property
    def commits(self) -> int:
        """Transactions committed so far; fewer than records written when group commit batched them."""
        return self._commits

    @property
    def synced_commits(self) -> int:
        """Of ``commits``, those committed with ``synchronous=FULL``: each fsync'd the WAL before it was reported."""
        return self._synced_commits

    @property
    def queue_depth(self) -> int:
        """Appends (a batch counts as one) and prunes waiting for the writer; approximate while it runs."""
        return self._queue.qsize()

    @property
    def head(self) -> tuple[int, str]:
        """The newest committed record's seq and hash (0 and GENESIS when empty); exact while nothing writes."""
        return self._head_seq, self._head_hash

    def open(self) -> None:
        with self._lock:
            if self._state != _NEW:
                raise AuditError(f"the audit log {self.path} was already opened by this store")
            lock_path = self.path.with_name(self.path.name + ".lock")
            lock_fd = self._take_lock(lock_path)
            try:
                db = self._connect()
            except BaseException:
                os.close(lock_fd)
                raise
            self._lock_fd, self._db, self._state = lock_fd, db, _OPEN
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def _take_lock(self, lock_path: Path) -> int:
        try:
            return sqlite_files.take_lock(lock_path)
        except sqlite_files.LockHeld:
            raise AuditError(
                f"the audit log {self.path} is in use by another mcp-runner process; give this one its own audit.path"
            ) from None
        except OSError as exc:
            raise AuditError(f"cannot create or lock the audit log's lock file {lock_path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite_files.connect_private_wal(self.path, SCHEMA, SCHEMA_VERSION, check_same_thread=False)
        except sqlite_files.NotWriteAhead as exc:
            raise AuditError(
                f"the audit log {self.path} cannot use write-ahead logging (journal mode {exc.mode!r}); "
                "put audit.path on a local file system"
            ) from None
        except sqlite_files.OtherSchema as exc:
            raise AuditError(
                f"the audit log {self.path} has schema {exc.found!r}; this mcp-runner writes schema {SCHEMA_VERSION}"
            ) from None
        except (OSError, sqlite3.Error) as exc:
            raise AuditError(f"cannot open the audit log {self.path}: {exc}") from exc
        try:
            self._set_synchronous(db, "FULL")
            head = db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        except BaseException as exc:
            db.close()
            if isinstance(exc, sqlite3.Error):
                raise AuditError(f"cannot open the audit log {self.path}: {exc}") from exc
            raise
        if head is not None:
            self._head_seq, self._head_hash = head
        return db

    def close(self) -> None:
        """Stop taking events, commit everything already queued, and let go of the file and its lock."""
        with self._lock:
            was_open = self._state == _OPEN
            self._state = _CLOSED
            if was_open:
                self._queue.put(None)
        if not was_open:
            return
        assert self._thread is not None and self._db is not None
        self._thread.join()
        self._db.close()
        os.close(self._lock_fd)

    def submit(self, event: AuditEvent, *, durable: bool = True) -> Future[AuditRecord]:
        """Queue ``event``; the future resolves once its record is committed, and with ``durable`` once it is
        fsync'd too. Without, it is committed (it survives the service's crash, not the machine's) and made
        durable by the next durable commit, or ``IDLE_SYNC_S`` after it if none comes."""
        future: Future[AuditRecord] = Future()
        with self._lock:
            if self._state != _OPEN:
                return _failed(AuditError(f"the audit log {self.path} is closed"))
            batch: list[_Append] | None = getattr(self._batching, "appends", None)
            if batch is not None:
                batch.append(_Append(event, future, durable))
            else:
                self._queue.put(_Append(event, future, durable))
        return future

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """What this thread submits in the block is queued at its end as one item, so the writer commits it in one
        transaction (records a request makes at once: its policy note with its intent, say)."""
        if getattr(self._batching, "appends", None) is not None:
            raise RuntimeError("AuditStore.batch does not nest")
        appends: list[_Append] = []
        self._batching.appends = appends
        try:
            yield
        finally:
            self._batching.appends = None
            with self._lock:
                if appends and self._state == _OPEN:
                    self._queue.put(appends)
                elif appends:
                    for append in appends:
                        _fail(append.future, AuditError(f"the audit log {self.path} is closed"))

    async def append(self, event: AuditEvent, *, durable: bool = True) -> AuditRecord:
        return await asyncio.wrap_future(self.submit(event, durable=durable))

    def prune(self, before: float, export_dir: Path) -> PruneResult:
        """Export, then delete, the oldest records up to the last one before ``before``; blocks until done."""
        return self._submit_prune(before, export_dir).result()

    async def aprune(self, before: float, export_dir: Path) -> PruneResult:
        return await asyncio.wrap_future(self._submit_prune(before, export_dir))

    def _submit_prune(self, before: float, export_dir: Path) -> Future[PruneResult]:
        future: Future[PruneResult] = Future()
        with self._lock:
            if self._state != _OPEN:
                return _failed(AuditError(f"the audit log {self.path} is closed"))
            self._queue.put(_Prune(before, export_dir, future))
        return future

    def verify(self) -> Verification:
        return verify_database(self.path)

    def query(self, q: AuditQuery) -> list[AuditRecord]:
        return reading.query(self.path, q)

    def pages(self, q: AuditQuery, page_size: int = 500) -> Iterator[list[AuditRecord]]:
        """The answer to ``q`` a page at a time, so a long history never sits in memory at once."""
        return reading.pages(self.path, q, page_size)

    # The writer thread: everything below runs only there.

    def _run(self) -> None:
        while True:
            # A record committed without an fsync is synced IDLE_SYNC_S after it at the latest, whether or not the
            # queue fell idle meanwhile: waiting for idle let a steady trickle of such records (egress decisions, a
            # pooled sandbox's notes, every 40 ms) stay off the disk for as long as it lasted.
            left = self._unsynced_since + IDLE_SYNC_S - _now() if self._unsynced else None
            if left is not None and left <= 0:
                self._sync_wal()
                continue
            try:
                first = self._queue.get(timeout=left) if left is not None else self._queue.get()
            except queue.Empty:
                self._sync_wal()
                continue
            items = [first]
            while len(items) < self._batch_max:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            appends: list[_Append] = []
            for item in items:
                if isinstance(item, _Append):
                    appends.append(item)
                    continue
                if isinstance(item, list):
                    appends.extend(item)
                    continue
                self._write(appends)
                appends = []
                if item is None:
                    if self._unsynced:
                        self._sync_wal()
                    return
                self._prune(item)
            self._write(appends)

    def _set_synchronous(self, db: sqlite3.Connection, mode: str) -> None:
        if mode != self._synchronous:
            db.execute(f"PRAGMA synchronous={mode}")
            self._synchronous = mode

    def _transaction(self, work: Callable[[sqlite3.Cursor], _T], *, durable: bool = True) -> _T:
        """``work`` in one transaction; ``durable``: committed with ``FULL`` (fsync'd), else with ``NORMAL``."""
        assert self._db is not None
        self._set_synchronous(self._db, "FULL" if durable else "NORMAL")
        began = time.perf_counter()
        cursor = self._db.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            result = work(cursor)
            cursor.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                cursor.execute("ROLLBACK")
            raise
        if self._on_commit is not None:
            try:
                self._on_commit(time.perf_counter() - began)
            except Exception:  # a metric must never cost a record (it is committed already): the hook is dropped
                self._on_commit = None
                _log.exception("the audit writer's commit hook failed; commit times are no longer reported")
        self._commits += 1
        if durable:
            # The fsync of a FULL commit is the WAL file's: every frame written before, of NORMAL commits too.
            self._synced_commits += 1
            self._unsynced = False
        elif not self._unsynced:
            self._unsynced = True
            self._unsynced_since = _now()
        return result

    def _sync_wal(self) -> None:
        """Records committed without an fsync and no durable commit since: fsync the WAL (the queue is idle, or
        the store closing)."""
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            _log.error("the audit writer could not sync %s (its newest records wait for the next commit): %s", wal, exc)
        self._unsynced = False

    def _write(self, appends: list[_Append]) -> None:
        waiting = [_Waiting(item.event, _claim(item.future), item.durable) for item in appends]
        try:
            self._write_events(waiting)
        except Exception as exc:
            _log.exception("the audit writer failed to write %d events", len(waiting))
            for item in waiting:
                _fail(item.future, AuditError(f"the audit log {self.path} could not be written: {exc}"))

    def _write_events(self, waiting: list[_Waiting]) -> None:
        chained: list[tuple[_Waiting, AuditRecord, tuple[Any, ...]]] = []
        seq, prev = self._head_seq, self._head_hash
        for item in waiting:
            event = item.event
            try:
                record, row = _chain(seq + 1, event, prev)
            except (TypeError, ValueError, RecursionError) as exc:
                # Only this event fails: the others of the group commit are written.
                _fail(item.future, AuditError(f"the audit event {event.id!r} ({event.kind}) is not recordable: {exc}"))
                continue
            chained.append((item, record, row))
            seq, prev = record.seq, record.hash
        if not chained:
            return
        durable = any(item.durable for item, _, _ in chained)
        try:
            rows = [row for _, _, row in chained]
            self._transaction(lambda cursor: cursor.executemany(INSERT, rows), durable=durable)
        except sqlite3.IntegrityError:
            if len(chained) == 1:
                raise
            # One event broke a constraint (a reused id, say): write each alone so only that one fails.
            for item, _, _ in chained:
                self._write_one(item)
            return
        except sqlite3.Error as exc:
            for item, _, _ in chained:
                _fail(item.future, AuditError(f"the audit log {self.path} could not be written: {exc}"))
            return
        self._head_seq, self._head_hash = seq, prev
        for item, record, _ in chained:
            if item.future is not None:
                item.future.set_result(record)

    def _write_one(self, item: _Waiting) -> None:
        try:
            self._write_events([item])
        except sqlite3.Error as exc:
            _fail(item.future, AuditError(f"the audit log {self.path} could not be written: {exc}"))

    def _prune(self, command: _Prune) -> None:
        future = _claim(command.future)
        if future is None:
            return
        try:
            result = self._prune_now(command.before, command.export_dir)
        except AuditError as exc:
            future.set_exception(exc)
        except Exception as exc:
            _log.exception("the audit writer failed to prune")
            future.set_exception(AuditError(f"the audit log {self.path} could not be pruned: {exc}"))
        else:
            future.set_result(result)

    def _prune_now(self, before: float, export_dir: Path) -> PruneResult:
        assert self._db is not None
        db = self._db
        (last,) = db.execute("SELECT max(seq) FROM records WHERE at < ?", (before,)).fetchone()
        (first,) = db.execute("SELECT min(seq) FROM records").fetchone()
        if last is None:
            return PruneResult(0, "", first or 0)
        (anchor,) = db.execute("SELECT hash FROM records WHERE seq = ?", (last,)).fetchone()
        export = export_dir / f"audit-{first:012d}-{last:012d}.jsonl"
        rows = db.execute("SELECT at, body, hash FROM records WHERE seq <= ? ORDER BY seq", (last,))
        try:
            export_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            digest = write_export((reading.record_from_row(*row) for row in rows), export)
        except OSError as exc:
            raise AuditError(
                f"could not export audit records {first}..{last} to {export} (nothing was deleted): {exc}"
            ) from exc
        finally:
            rows.close()

        def delete_and_record(cursor: sqlite3.Cursor) -> tuple[int, AuditRecord]:
            cursor.execute("INSERT INTO pruning(active) VALUES (1)")
            deleted = cursor.execute("DELETE FROM records WHERE seq <= ?", (last,)).rowcount
            cursor.execute("DELETE FROM pruning")
            event = AuditEvent(kind=RETENTION, session_id="", caller="", data={
                "deleted_from_seq": first, "deleted_to_seq": last, "deleted": deleted, "first_kept_seq": last + 1,
                "anchor": anchor, "export": str(export), "export_sha256": digest, "before": iso_time(before),
            }, at=time.time())  # fmt: skip
            record, row = _chain(self._head_seq + 1, event, self._head_hash)
            cursor.execute(INSERT, row)
            return deleted, record

        try:
            deleted, record = self._transaction(delete_and_record)
        except sqlite3.Error as exc:
            raise AuditError(f"the audit log {self.path} could not be pruned: {exc}") from exc
        self._head_seq, self._head_hash = record.seq, record.hash
        return PruneResult(deleted, str(export), last + 1)
