"""Reading the audit log: records selected by a query, whole or a page at a time, on read-only connections.

Any thread may read while the store's one writer writes (WAL); nothing here takes the writer's lock.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from runner.audit.records import AuditQuery, AuditRecord
from runner.audit.verify import connect_readonly
from runner.errors import AuditError


def record_from_row(at: float, body: str, digest: str) -> AuditRecord:
    fields = json.loads(body)
    return AuditRecord(
        seq=fields["seq"], id=fields["id"], at=at, kind=fields["kind"], session_id=fields["session_id"],
        caller=fields["caller"], data=fields["data"], prev=fields["prev"], hash=digest,
    )  # fmt: skip


def query(path: Path, q: AuditQuery) -> list[AuditRecord]:
    """The records of ``path`` that ``q`` selects, in order, on a read-only connection of their own."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("id", q.record_id), ("session_id", q.session_id), ("caller", q.caller)):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if q.since is not None:
        clauses.append("at >= ?")
        params.append(q.since)
    if q.until is not None:
        clauses.append("at < ?")
        params.append(q.until)
    if q.kinds:
        clauses.append(f"kind IN ({', '.join('?' * len(q.kinds))})")
        params.extend(q.kinds)
    if q.after_seq:
        clauses.append("seq > ?")
        params.append(q.after_seq)
    sql = "SELECT at, body, hash FROM records"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY seq"
    if q.limit > 0:
        sql += " LIMIT ?"
        params.append(q.limit)
    try:
        with contextlib.closing(connect_readonly(path)) as db:
            return [record_from_row(*row) for row in db.execute(sql, params)]
    except sqlite3.Error as exc:
        raise AuditError(f"the audit log {path} could not be read: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(
            f"the audit log {path} holds a record that cannot be read ({exc!r}); run `mcp-runner audit verify`"
        ) from exc


def pages(path: Path, q: AuditQuery, page_size: int = 500) -> Iterator[list[AuditRecord]]:
    """The answer to ``q`` a page at a time, so a long history never sits in memory at once."""
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, not {page_size}")
    after, left = q.after_seq, q.limit
    while True:
        size = min(page_size, left) if q.limit > 0 else page_size
        page = query(path, replace(q, after_seq=after, limit=size))
        if page:
            yield page
        if len(page) < size:
            return
        after = page[-1].seq
        if q.limit > 0:
            left -= len(page)
            if left <= 0:
                return
