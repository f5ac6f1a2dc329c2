"""Records as JSON Lines: the form retention exports them in and readers stream them in.

Each line is a record's canonical JSON including its hash, so a line can be
checked on its own (``verify.verify_export``) long after the database that
held it has deleted it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from runner.audit.records import AuditRecord, canonical_json


def json_line(record: AuditRecord) -> str:
    return canonical_json(record.to_json()) + "\n"


def json_lines(records: Iterable[AuditRecord]) -> Iterator[str]:
    for record in records:
        yield json_line(record)


def write_export(records: Iterable[AuditRecord], path: Path) -> str:
    """Write ``records`` to ``path`` and return the file's SHA-256 (hex).

    The file is complete and on disk before this returns (written beside it,
    fsync'd, renamed, directory fsync'd), because retention deletes the records
    right after: a crash must never leave them in neither place.
    """
    part = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)
            for line in json_lines(records):
                data = line.encode("utf-8")
                digest.update(data)
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return digest.hexdigest()
