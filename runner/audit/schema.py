"""What an audit database holds: its tables, the triggers that keep it append-only, and the one INSERT.

Apart from ``runner.audit.store`` (the writer thread that uses them) so the store owns how records are written and
this module what they are written into.
"""

from __future__ import annotations

SCHEMA_VERSION = "1"

SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, at REAL NOT NULL, kind TEXT NOT NULL,
    session_id TEXT NOT NULL, caller TEXT NOT NULL, body TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_session ON records(session_id, seq);
CREATE INDEX IF NOT EXISTS records_by_caller ON records(caller, at);
CREATE INDEX IF NOT EXISTS records_by_kind ON records(kind, at);
CREATE INDEX IF NOT EXISTS records_by_time ON records(at);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', '{SCHEMA_VERSION}');
CREATE TABLE IF NOT EXISTS pruning(active INTEGER);
CREATE TRIGGER IF NOT EXISTS records_append_only BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_deleted_by_retention BEFORE DELETE ON records
WHEN NOT EXISTS (SELECT 1 FROM pruning)
BEGIN SELECT RAISE(ABORT, 'audit records are deleted only by retention'); END;
COMMIT;
"""

INSERT = "INSERT INTO records(seq, id, at, kind, session_id, caller, body, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
