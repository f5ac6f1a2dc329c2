"""The SQLite files the service keeps for itself (the audit log, the guard's memory): one writer, private, WAL.

Both open the same way, so the steps live here once: an exclusive lock file beside the database (two services
on one file would fork its contents), the file created 0600 before SQLite creates it (its -wal and -shm
files copy its mode), write-ahead logging or a refusal (a network file system that cannot share memory maps
would corrupt it), and the schema applied and its version checked. Errors are this module's own; each store
words them for its operator, with its file and its setting named.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Any


class LockHeld(Exception):
    """Another process holds the lock."""


class NotWriteAhead(Exception):
    """SQLite would not switch the file to write-ahead logging; ``mode`` is the journal mode it kept."""

    def __init__(self, mode: str) -> None:
        super().__init__(mode)
        self.mode = mode


class OtherSchema(Exception):
    """The file holds another schema version than this code writes; ``found`` is the file's."""

    def __init__(self, found: str) -> None:
        super().__init__(found)
        self.found = found


def take_lock(lock_path: Path) -> int:
    """An exclusive, non-blocking ``flock`` on ``lock_path`` (its directory made 0700); the descriptor to keep.

    ``LockHeld`` if another process holds it; ``OSError`` if it cannot be made or locked at all.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockHeld(str(lock_path)) from None
    except OSError:
        os.close(fd)
        raise
    return fd


def connect_private_wal(path: Path, schema_sql: str, version: str, **connect: Any) -> sqlite3.Connection:
    """``path`` opened 0600 in WAL mode with ``schema_sql`` applied and its ``meta`` schema equal to ``version``.

    ``connect`` goes to ``sqlite3.connect``. Raises ``NotWriteAhead``, ``OtherSchema``, ``sqlite3.Error`` or
    ``OSError``, with the connection closed.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    db: sqlite3.Connection = sqlite3.connect(path, isolation_level=None, **connect)
    try:
        (mode,) = db.execute("PRAGMA journal_mode=WAL").fetchone()
        if str(mode).lower() != "wal":
            raise NotWriteAhead(str(mode))
        db.executescript(schema_sql)
        (found,) = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if found != version:
            raise OtherSchema(str(found))
        os.chmod(path, 0o600)
    except BaseException:
        db.close()
        raise
    return db
