"""The audit log on real SQLite files: chaining, group commit, the lock, the triggers, tamper detection, retention."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from runner.audit import store as store_module
from runner.audit.export import json_line, json_lines, write_export
from runner.audit.records import (
    GENESIS,
    POLICY,
    REQUEST,
    RETENTION,
    SESSION_OPEN,
    AuditEvent,
    AuditQuery,
    AuditRecord,
    canonical_json,
    chain_hash,
)
from runner.audit.store import AuditStore
from runner.audit.verify import verify_database, verify_export
from runner.errors import AuditError


def event(
    kind: str = REQUEST, session: str = "ses_1", caller: str = "alice", at: float | None = None, **data: Any
) -> AuditEvent:
    if at is None:
        return AuditEvent(kind=kind, session_id=session, caller=caller, data=data)
    return AuditEvent(kind=kind, session_id=session, caller=caller, data=data, at=at)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    audit = AuditStore(tmp_path / "audit" / "audit.db")
    audit.open()
    yield audit
    audit.close()


def write(store: AuditStore, *events: AuditEvent) -> list[AuditRecord]:
    return [store.submit(e).result(timeout=10) for e in events]


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


@contextlib.contextmanager
def attacker(path: Path) -> Iterator[sqlite3.Connection]:
    """A raw connection with the guard triggers dropped, as someone with write access to the file would."""
    with raw(path) as db:
        db.execute("DROP TRIGGER records_append_only")
        db.execute("DROP TRIGGER records_deleted_by_retention")
        yield db


@contextlib.contextmanager
def writer_held(path: Path) -> Iterator[None]:
    """Hold the database's write lock, so the writer waits and everything submitted meanwhile queues up."""
    with raw(path) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            db.execute("ROLLBACK")


# Chaining


def test_appends_form_a_chain_that_verifies(store: AuditStore) -> None:
    events = [event(i=i) for i in range(5)]
    records = write(store, *events)

    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev == GENESIS
    for before, after in itertools.pairwise(records):
        assert after.prev == before.hash
    for e, r in zip(events, records, strict=True):
        assert r.id == e.id
        assert r.hash == chain_hash(r.prev, AuditRecord.body_of(r.seq, e, r.prev))
    result = store.verify()
    assert result.intact, result.problem
    assert (result.checked, result.first_seq, result.head_seq, result.head_hash) == (5, 1, 5, records[-1].hash)


def test_a_reopened_log_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    first = AuditStore(path)
    first.open()
    old = write(first, event(), event(), event())
    first.close()

    assert first.head == (3, old[-1].hash)
    second = AuditStore(path)
    second.open()
    assert second.head == (3, old[-1].hash)
    try:
        (new,) = write(second, event())
    finally:
        second.close()
    assert second.head == (4, new.hash)
    assert new.seq == 4
    assert new.prev == old[-1].hash
    result = verify_database(path)
    assert result.intact and result.head_seq == 4 and result.head_hash == new.hash


def test_the_files_are_private(store: AuditStore) -> None:
    write(store, event())
    assert stat.S_IMODE(os.stat(store.path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600


# Group commit


def test_many_threads_at_once_get_contiguous_seqs_in_fewer_commits(store: AuditStore) -> None:
    threads, each = 16, 100
    start = threading.Barrier(threads + 1)
    results: list[list[AuditRecord]] = [[] for _ in range(threads)]
    events = [[event(session=f"ses_{t}", n=n) for n in range(each)] for t in range(threads)]
    read_errors: list[Exception] = []
    done = threading.Event()

    def submitter(t: int) -> None:
        start.wait()
        futures = [store.submit(e) for e in events[t]]
        results[t] = [f.result(timeout=30) for f in futures]

    def reader() -> None:
        start.wait()
        while not done.is_set():
            try:
                store.query(AuditQuery(limit=50))
            except Exception as exc:
                read_errors.append(exc)
                return

    workers = [threading.Thread(target=submitter, args=(t,)) for t in range(threads)]
    watcher = threading.Thread(target=reader)
    for w in [*workers, watcher]:
        w.start()
    for w in workers:
        w.join()
    done.set()
    watcher.join()

    total = threads * each
    records = [r for rs in results for r in rs]
    assert sorted(r.seq for r in records) == list(range(1, total + 1))
    stored = store.query(AuditQuery())
    assert {r.id for r in stored} == {e.id for es in events for e in es}
    for t in range(threads):  # each thread's records are in the order it submitted them
        assert [r.data["n"] for r in store.query(AuditQuery(session_id=f"ses_{t}"))] == list(range(each))
    assert store.verify().intact
    assert store.commits < total
    assert read_errors == []


async def test_many_coroutines_at_once_share_commits(store: AuditStore) -> None:
    events = [event(n=n) for n in range(300)]
    records = await asyncio.gather(*(store.append(e) for e in events))
    assert sorted(r.seq for r in records) == list(range(1, 301))
    assert [r.id for r in records] == [e.id for e in events]
    assert store.commits < 300
    assert store.verify().intact


def test_what_queues_behind_a_commit_goes_in_one_transaction(store: AuditStore) -> None:
    with writer_held(store.path):
        first = store.submit(event())
        time.sleep(0.2)
        rest = [store.submit(event()) for _ in range(20)]
    records = [f.result(timeout=10) for f in [first, *rest]]
    assert [r.seq for r in records] == list(range(1, 22))
    assert store.commits <= 2


def test_an_unrecordable_event_fails_only_its_own_future(store: AuditStore) -> None:
    with writer_held(store.path):
        good = store.submit(event(n=1))
        time.sleep(0.2)
        not_json = store.submit(event(thing=object()))
        also_good = store.submit(event(n=2))
        nan = store.submit(event(x=float("nan")))
        deep: Any = []
        for _ in range(100_000):
            deep = [deep]
        too_deep = store.submit(event(x=deep))
        last = store.submit(event(n=3))

    for bad in (not_json, nan, too_deep):
        with pytest.raises(AuditError, match="not recordable"):
            bad.result(timeout=10)
    assert [f.result(timeout=10).seq for f in (good, also_good, last)] == [1, 2, 3]
    result = store.verify()
    assert result.intact and result.head_seq == 3


def test_a_reused_id_fails_only_that_event(store: AuditStore) -> None:
    (original,) = write(store, event())
    with writer_held(store.path):
        before = store.submit(event())
        time.sleep(0.2)
        x = store.submit(event(n="x"))
        again = store.submit(AuditEvent(kind=REQUEST, session_id="ses_1", caller="alice", data={}, id=original.id))
        y = store.submit(event(n="y"))

    with pytest.raises(AuditError, match="could not be written"):
        again.result(timeout=10)
    assert [f.result(timeout=10).seq for f in (before, x, y)] == [2, 3, 4]
    assert store.verify().intact
    assert len(store.query(AuditQuery(record_id=original.id))) == 1


async def test_append_returns_only_once_the_row_is_committed(store: AuditStore) -> None:
    e = event(n=1)
    record = await store.append(e)
    with raw(store.path) as db:
        row = db.execute("SELECT seq, hash FROM records WHERE id = ?", (e.id,)).fetchone()
    assert row == (record.seq, record.hash)


def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    audit = AuditStore(tmp_path / "audit.db")
    audit.open()
    futures = [audit.submit(event(n=n)) for n in range(200)]
    audit.close()
    assert all(f.done() for f in futures)
    assert [f.result().seq for f in futures] == list(range(1, 201))
    assert verify_database(audit.path).head_seq == 200


def test_a_closed_or_unopened_store_refuses_events(tmp_path: Path) -> None:
    audit = AuditStore(tmp_path / "audit.db")
    with pytest.raises(AuditError, match="closed"):
        audit.submit(event()).result(timeout=1)
    audit.open()
    audit.close()
    audit.close()
    refused: Future[AuditRecord] = audit.submit(event())
    assert refused.done()
    with pytest.raises(AuditError, match=r"the audit log .* is closed"):
        refused.result()
    with pytest.raises(AuditError, match="closed"):
        audit.prune(time.time(), tmp_path / "exports")


async def test_append_on_a_closed_store_raises(tmp_path: Path) -> None:
    audit = AuditStore(tmp_path / "audit.db")
    audit.open()
    audit.close()
    with pytest.raises(AuditError, match="closed"):
        await audit.append(event())


# Sync modes: a transaction is fsync'd (synchronous=FULL) when a record in it must be durable, not otherwise


@contextlib.contextmanager
def commit_modes(store: AuditStore) -> Iterator[list[str]]:
    """The synchronous mode each transaction the writer commits meanwhile is committed with, in order (read off
    the statements its connection runs)."""
    modes: list[str] = []
    current = ["FULL"]  # the store opens its connection with FULL

    def seen(statement: str) -> None:
        if statement.startswith("PRAGMA synchronous="):
            current[0] = statement.removeprefix("PRAGMA synchronous=")
        elif statement == "COMMIT":
            modes.append(current[0])

    assert store._db is not None
    store._db.set_trace_callback(seen)
    try:
        yield modes
    finally:
        store._db.set_trace_callback(None)


def test_a_record_that_need_not_be_durable_is_committed_without_an_fsync(store: AuditStore) -> None:
    with commit_modes(store) as modes:
        lazy = store.submit(event(n=1), durable=False).result(timeout=10)
        # Committed when reported: another connection reads it.
        assert [r.id for r in store.query(AuditQuery(record_id=lazy.id))] == [lazy.id]
        store.submit(event(n=2)).result(timeout=10)
    assert modes == ["NORMAL", "FULL"]
    assert (store.commits, store.synced_commits) == (2, 1)


def test_a_batch_holding_one_durable_record_is_fsynced_whole(store: AuditStore) -> None:
    with commit_modes(store) as modes:
        with writer_held(store.path):
            first = store.submit(event(n=0), durable=False)
            time.sleep(0.2)
            batch = [store.submit(event(n=n), durable=n != 2) for n in range(1, 4)]
            batch += [store.submit(event(n=n), durable=False) for n in range(4, 6)]
        [f.result(timeout=10) for f in [first, *batch]]
    # The first alone without an fsync (had the writer not taken it yet, it would be in the batch), the batch with.
    assert modes in (["NORMAL", "FULL"], ["FULL"])


def test_a_batch_is_committed_in_one_transaction_in_the_order_submitted(store: AuditStore) -> None:
    with commit_modes(store) as modes:
        with store.batch():
            futures = [store.submit(event(n=n), durable=n == 4) for n in range(5)]
            assert not any(f.done() for f in futures)  # queued only as the block ends
        written = [f.result(timeout=10) for f in futures]
    assert [r.data["n"] for r in written] == list(range(5))
    assert [r.seq for r in written] == list(range(1, 6))
    assert modes == ["FULL"]


def test_records_committed_without_an_fsync_are_synced_once_the_writer_is_idle(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    fsync = os.fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    store.submit(event(n=1), durable=False).result(timeout=10)
    deadline = time.monotonic() + 10
    while not synced and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(synced) == 1


def test_a_steady_trickle_of_records_without_an_fsync_is_synced_within_idle_sync_s(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer waited for the queue to fall idle IDLE_SYNC_S before it synced: records that kept coming closer
    together than that (egress decisions, a pooled sandbox's notes) stayed off the disk for as long as they came.
    The writer's clock is moved here, and the real idle wait made too long to matter."""
    synced = threading.Event()
    fsync = os.fsync

    def counting(fd: int) -> None:
        synced.set()
        fsync(fd)

    now = [1000.0]
    monkeypatch.setattr(store_module, "IDLE_SYNC_S", 3600.0)
    monkeypatch.setattr(store_module, "_now", lambda: now[0])
    monkeypatch.setattr(os, "fsync", counting)
    for _ in range(3):  # each record before the queue could have idled for IDLE_SYNC_S, the first well past it
        store.submit(event(), durable=False).result(timeout=10)
        now[0] += 3600.0 * 0.6
    store.submit(event(), durable=False).result(timeout=10)
    assert synced.wait(timeout=10)


# The lock and the triggers


def test_a_second_store_on_the_same_file_is_refused(store: AuditStore) -> None:
    other = AuditStore(store.path)
    with pytest.raises(AuditError, match="in use by another mcp-runner process") as refused:
        other.open()
    assert str(store.path) in str(refused.value)
    assert other.submit(event()).exception() is not None
    store.close()
    other.open()
    try:
        assert write(other, event())[0].seq == 1
    finally:
        other.close()


def test_updates_and_deletes_are_refused_by_the_database(store: AuditStore) -> None:
    (record,) = write(store, event())
    with raw(store.path) as db:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE records SET caller = 'mallory' WHERE seq = 1")
        with pytest.raises(sqlite3.DatabaseError, match="deleted only by retention"):
            db.execute("DELETE FROM records WHERE seq = 1")
        assert db.execute("SELECT caller, hash FROM records").fetchall() == [("alice", record.hash)]


def test_a_file_that_is_not_a_database_cannot_be_opened(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    path.write_bytes(b"this is not a database" * 200)
    with pytest.raises(AuditError, match=re.escape(str(path))):
        AuditStore(path).open()


# Tampering


@pytest.fixture
def five(store: AuditStore) -> list[AuditRecord]:
    records = write(store, *(event(i=i) for i in range(5)))
    store.close()
    return records


def test_an_edited_body_is_found(store: AuditStore, five: list[AuditRecord]) -> None:
    with attacker(store.path) as db:
        db.execute("""UPDATE records SET body = replace(body, '"i":2', '"i":7') WHERE seq = 3""")
    result = verify_database(store.path)
    assert not result.intact
    assert (result.broken_seq, result.broken_id, result.checked) == (3, five[2].id, 2)
    assert "altered" in result.problem


def test_an_edited_and_rehashed_body_breaks_the_next_link(store: AuditStore, five: list[AuditRecord]) -> None:
    with attacker(store.path) as db:
        (body,) = db.execute("SELECT body FROM records WHERE seq = 3").fetchone()
        forged = body.replace('"i":2', '"i":7')
        db.execute("UPDATE records SET body = ?, hash = ? WHERE seq = 3", (forged, chain_hash(five[1].hash, forged)))
    result = verify_database(store.path)
    assert (result.intact, result.broken_seq, result.broken_id) == (False, 4, five[3].id)
    assert "does not follow record 3" in result.problem


def test_an_edited_indexed_column_is_found(store: AuditStore, five: list[AuditRecord]) -> None:
    with attacker(store.path) as db:
        db.execute("UPDATE records SET caller = 'bob' WHERE seq = 3")
    result = verify_database(store.path)
    assert (result.intact, result.broken_seq, result.broken_id) == (False, 3, five[2].id)
    assert result.problem == "its caller column ('bob') differs from the caller in its hashed body ('alice')"


def test_an_edited_time_column_is_found(store: AuditStore, five: list[AuditRecord]) -> None:
    with attacker(store.path) as db:
        db.execute("UPDATE records SET at = at - 86400 WHERE seq = 2")
    result = verify_database(store.path)
    assert (result.intact, result.broken_seq) == (False, 2)
    assert "at column" in result.problem


def test_an_edited_hash_is_found(store: AuditStore, five: list[AuditRecord]) -> None:
    with attacker(store.path) as db:
        db.execute("UPDATE records SET hash = ? WHERE seq = 3", ("f" * 64,))
    result = verify_database(store.path)
    assert (result.intact, result.broken_seq, result.broken_id) == (False, 3, five[2].id)
    assert "altered" in result.problem


def test_a_body_that_is_not_canonical_is_found(store: AuditStore, five: list[AuditRecord]) -> None:
    with attacker(store.path) as db:
        (body,) = db.execute("SELECT body FROM records WHERE seq = 4").fetchone()
        spaced = json.dumps(json.loads(body), sort_keys=True)
        db.execute("UPDATE records SET body = ? WHERE seq = 4", (spaced,))
    result = verify_database(store.path)
    assert (result.intact, result.broken_seq, result.problem) == (False, 4, "its body is not canonical JSON")


def test_a_deleted_middle_record_is_found(store: AuditStore, five: list[AuditRecord]) -> None:
    with attacker(store.path) as db:
        db.execute("DELETE FROM records WHERE seq = 3")
    result = verify_database(store.path)
    assert (result.intact, result.broken_seq, result.broken_id) == (False, 4, five[3].id)
    assert result.problem == "record 3 is missing"
    assert (result.checked, result.head_seq) == (2, 2)


def test_deleted_first_records_without_retention_are_found(store: AuditStore, five: list[AuditRecord]) -> None:
    with attacker(store.path) as db:
        db.execute("DELETE FROM records WHERE seq <= 2")
    result = verify_database(store.path)
    assert (result.intact, result.broken_seq, result.broken_id, result.checked) == (False, 3, five[2].id, 0)
    assert result.problem == "records before seq 3 are missing and no retention record accounts for them"


def test_a_query_over_a_mangled_body_is_an_audit_error(store: AuditStore, five: list[AuditRecord]) -> None:
    with attacker(store.path) as db:
        db.execute("UPDATE records SET body = 'not json' WHERE seq = 2")
    with pytest.raises(AuditError, match="cannot be read"):
        store.query(AuditQuery())
    assert verify_database(store.path).problem == "its body is not canonical JSON"


def test_an_empty_log_is_intact(store: AuditStore) -> None:
    result = store.verify()
    assert (result.intact, result.checked, result.first_seq, result.head_seq, result.head_hash) == (
        True, 0, 0, 0, GENESIS,
    )  # fmt: skip


def test_a_damaged_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    path.write_bytes(b"\x00garbage" * 1000)
    result = verify_database(path)
    assert not result.intact
    assert result.problem.startswith("the database file is damaged")


def test_a_missing_log_cannot_be_verified_or_queried(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.db"
    with pytest.raises(AuditError, match=re.escape(f"no audit log at {path}")):
        verify_database(path)
    with pytest.raises(AuditError, match="no audit log"):
        AuditStore(path).query(AuditQuery())


# Retention


def test_pruning_exports_deletes_and_keeps_the_chain_verifiable(store: AuditStore, tmp_path: Path) -> None:
    records = write(store, *(event(at=1000.0 + i, i=i) for i in range(10)))
    exports = tmp_path / "exports"

    pruned = store.prune(1005.0, exports)

    assert (pruned.deleted, pruned.first_kept_seq) == (5, 6)
    export = Path(pruned.export)
    assert export == exports / "audit-000000000001-000000000005.jsonl"
    assert stat.S_IMODE(os.stat(exports).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(export).st_mode) == 0o600
    lines = export.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [r.id for r in records[:5]]
    exported = verify_export(export)
    assert exported.intact and exported.checked == 5 and exported.head_hash == records[4].hash

    (retention,) = store.query(AuditQuery(kinds=(RETENTION,)))
    assert retention.seq == 11 and retention.prev == records[-1].hash
    assert json.loads(lines[-1])["hash"] == retention.data["anchor"]
    assert retention.data == {
        "deleted_from_seq": 1, "deleted_to_seq": 5, "deleted": 5, "first_kept_seq": 6,
        "anchor": records[4].hash, "export": str(export),
        "export_sha256": hashlib.sha256(export.read_bytes()).hexdigest(),
        "before": "1970-01-01T00:16:45.000000Z",
    }  # fmt: skip
    assert [r.seq for r in store.query(AuditQuery())] == [6, 7, 8, 9, 10, 11]
    result = store.verify()
    assert result.intact, result.problem
    assert (result.first_seq, result.head_seq, result.checked) == (6, 11, 6)

    second = store.prune(1008.0, exports)
    assert (second.deleted, second.first_kept_seq) == (3, 9)
    assert verify_export(Path(second.export)).intact
    result = store.verify()
    assert result.intact, result.problem
    assert (result.first_seq, result.head_seq) == (9, 12)

    store.close()
    with attacker(store.path) as db:
        db.execute("DELETE FROM records WHERE seq = 12")
    result = verify_database(store.path)
    assert (result.intact, result.broken_seq, result.broken_id) == (False, 9, records[8].id)
    assert "no retention record accounts for them" in result.problem


def test_pruning_deletes_the_whole_prefix_up_to_the_last_old_record(store: AuditStore, tmp_path: Path) -> None:
    write(store, event(at=1000.0), event(at=2000.0), event(at=1001.0), event(at=2001.0))
    pruned = store.prune(1500.0, tmp_path / "exports")
    assert (pruned.deleted, pruned.first_kept_seq) == (3, 4)
    assert [r.seq for r in store.query(AuditQuery())] == [4, 5]
    assert store.verify().intact


def test_pruning_everything_leaves_the_retention_record_as_the_anchor(store: AuditStore, tmp_path: Path) -> None:
    records = write(store, event(at=1000.0), event(at=1001.0))
    pruned = store.prune(time.time() + 60, tmp_path / "exports")
    assert (pruned.deleted, pruned.first_kept_seq) == (2, 3)
    (retention,) = store.query(AuditQuery())
    assert (retention.seq, retention.kind, retention.prev) == (3, RETENTION, records[-1].hash)
    result = store.verify()
    assert result.intact and result.first_seq == 3


def test_pruning_with_nothing_old_writes_nothing(store: AuditStore, tmp_path: Path) -> None:
    write(store, event(at=1000.0), event(at=1001.0))
    commits = store.commits
    pruned = store.prune(999.0, tmp_path / "exports")
    assert (pruned.deleted, pruned.export, pruned.first_kept_seq) == (0, "", 1)
    assert store.commits == commits
    assert not (tmp_path / "exports").exists()
    assert len(store.query(AuditQuery())) == 2


def test_a_failed_export_deletes_nothing(store: AuditStore, tmp_path: Path) -> None:
    write(store, event(at=1000.0), event(at=1001.0))
    not_a_dir = tmp_path / "exports"
    not_a_dir.write_text("a file where the directory should be")
    with pytest.raises(AuditError, match="nothing was deleted"):
        store.prune(2000.0, not_a_dir)
    assert [r.seq for r in store.query(AuditQuery())] == [1, 2]
    assert store.verify().intact
    assert write(store, event())[0].seq == 3


async def test_aprune_runs_in_order_with_appends(store: AuditStore, tmp_path: Path) -> None:
    await asyncio.gather(*(store.append(event(at=1000.0 + i)) for i in range(4)))
    pruned = await store.aprune(1002.0, tmp_path / "exports")
    after = await store.append(event())
    assert (pruned.deleted, after.seq) == (2, 6)
    assert store.verify().intact


# Exports


def test_verify_export_finds_an_edited_line(store: AuditStore, tmp_path: Path) -> None:
    records = write(store, *(event(i=i) for i in range(4)))
    path = tmp_path / "export.jsonl"
    write_export(records, path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = lines[2].replace('"i":2', '"i":9')
    path.write_text("".join(lines), encoding="utf-8")
    result = verify_export(path)
    assert (result.intact, result.broken_seq, result.broken_id, result.checked) == (False, 3, records[2].id, 2)
    assert result.problem.startswith("line 3:")


def test_verify_export_finds_a_broken_link_and_bad_json(store: AuditStore, tmp_path: Path) -> None:
    records = write(store, *(event(i=i) for i in range(3)))
    relinked = replace(records[1], prev="a" * 64)
    forged = replace(relinked, hash=chain_hash(relinked.prev, _body(relinked)))
    path = tmp_path / "export.jsonl"
    path.write_text(json_line(records[0]) + json_line(forged), encoding="utf-8")
    result = verify_export(path)
    assert (result.intact, result.broken_seq) == (False, 2)
    assert "does not follow record 1" in result.problem

    path.write_text(json_line(records[0]) + "{not json\n", encoding="utf-8")
    assert verify_export(path).problem == "line 2 is not JSON"


def _body(record: AuditRecord) -> str:
    fields = record.to_json()
    del fields["hash"]
    return canonical_json(fields)


def test_an_export_of_a_filtered_query_verifies(store: AuditStore, tmp_path: Path) -> None:
    write(store, event(session="a"), event(session="b"), event(session="a"), event(session="a"))
    path = tmp_path / "a.jsonl"
    digest = write_export(store.query(AuditQuery(session_id="a")), path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not path.with_name("a.jsonl.part").exists()
    result = verify_export(path)
    assert result.intact and result.checked == 3 and result.head_seq == 4
    assert "".join(json_lines(store.query(AuditQuery(session_id="a")))) == path.read_text(encoding="utf-8")


def test_a_missing_export_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="no audit export"):
        verify_export(tmp_path / "missing.jsonl")


# Queries


@pytest.fixture
def mixed(store: AuditStore) -> list[AuditRecord]:
    return write(
        store,
        event(SESSION_OPEN, session="s1", caller="alice", at=100.0),
        event(REQUEST, session="s1", caller="alice", at=101.0),
        event(POLICY, session="s2", caller="bob", at=102.0),
        event(REQUEST, session="s2", caller="bob", at=103.0),
        event(REQUEST, session="s1", caller="alice", at=104.0),
        event(POLICY, session="s1", caller="alice", at=105.0),
    )


def seqs(records: list[AuditRecord]) -> list[int]:
    return [r.seq for r in records]


def test_query_filters(store: AuditStore, mixed: list[AuditRecord]) -> None:
    assert store.query(AuditQuery()) == mixed
    assert seqs(store.query(AuditQuery(session_id="s2"))) == [3, 4]
    assert seqs(store.query(AuditQuery(caller="alice"))) == [1, 2, 5, 6]
    assert seqs(store.query(AuditQuery(kinds=(REQUEST, POLICY)))) == [2, 3, 4, 5, 6]
    assert seqs(store.query(AuditQuery(since=102.0, until=105.0))) == [3, 4, 5]
    assert seqs(store.query(AuditQuery(after_seq=4))) == [5, 6]
    assert seqs(store.query(AuditQuery(limit=2))) == [1, 2]
    assert seqs(store.query(AuditQuery(caller="alice", kinds=(REQUEST,), after_seq=2))) == [5]
    assert store.query(AuditQuery(record_id=mixed[3].id)) == [mixed[3]]
    assert store.query(AuditQuery(session_id="nobody")) == []


def test_pages_walk_the_answer_in_order(store: AuditStore, mixed: list[AuditRecord]) -> None:
    assert [seqs(p) for p in store.pages(AuditQuery(), page_size=4)] == [[1, 2, 3, 4], [5, 6]]
    assert [seqs(p) for p in store.pages(AuditQuery(caller="alice"), page_size=2)] == [[1, 2], [5, 6]]
    assert [seqs(p) for p in store.pages(AuditQuery(limit=5), page_size=2)] == [[1, 2], [3, 4], [5]]
    assert [seqs(p) for p in store.pages(AuditQuery(after_seq=3), page_size=3)] == [[4, 5, 6]]
    assert list(store.pages(AuditQuery(session_id="nobody"))) == []
