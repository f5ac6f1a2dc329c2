"""The service's log: its format (text or JSON Lines), and one line per session and per refused or failed request.

``configure`` sets the root logger once, at start-up, from ``LogConfig``: ``text`` lines for people
(``time LEVEL logger: message``), or ``json``: one JSON object per line with ``ts``, ``level``, ``logger``,
``message`` and the structured fields of the line (``session_id``, ``profile``, ``caller``, …).

``EventLog`` is a journal observer: from the audit events it writes an INFO line per session opened (caller,
profile, session id, cold or warm, milliseconds) and closed (how, why, calls, seconds), and per request refused or
failed (method, status, message). It reads only what the event holds, which the journal has sanitized, redacted
and capped, so no line carries a secret or a caller's megabytes; in text format every value is on one line with
control characters shown escaped.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from runner.audit import records
from runner.audit.records import AuditEvent
from runner.config import LogConfig
from runner.observe.events import field, number, request_outcome, text
from runner.text import control_free

EVENTS_LOGGER = "runner.events"
FIELDS = "fields"
"""The ``extra`` key of a record's structured fields."""
_QUIET_OUTCOMES = frozenset({"ok", "tool_error", "approval_pending", "input_required"})
"""Request outcomes that are answers, not refusals or failures: no line of their own."""


def one_line(value: Any) -> str:
    return control_free(str(value)).replace("\n", "\\n").replace("\t", " ")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the record's structured fields (``extra={"fields": {...}}``) beside the message."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, Mapping):
            line.update({key: value for key, value in fields.items() if key not in line})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # ASCII only: every line break a reader may split on (U+2028, U+2029, U+0085 and the C0/C1 controls) is
        # escaped, so a line is one line whatever a caller sent, with no help from the stream it is written to.
        return json.dumps(line, ensure_ascii=True, default=str)


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The service's own handler on stderr, told apart from handlers others attached (files, a test's capture)."""


def configure(config: LogConfig) -> None:
    """The root logger's level, and its console handler (stderr) in ``config.format``: it replaces the one
    ``serve`` set until the settings were read (``basicConfig``) or an earlier ``configure`` set; other handlers stay.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        console = type(old) is logging.StreamHandler and old.stream in (sys.stderr, sys.__stderr__)
        if console or isinstance(old, ConsoleHandler):
            root.removeHandler(old)
    handler = ConsoleHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(config.level.upper())


class EventLog:
    """A ``Journal`` observer writing the operator's lines of ``runner.events``."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(EVENTS_LOGGER)

    def __call__(self, event: AuditEvent) -> None:
        if event.kind == records.SESSION_OPEN:
            self._opened(event)
        elif event.kind == records.SESSION_CLOSE:
            self._closed(event)
        elif event.kind == records.REQUEST:
            self._request(event)

    def _opened(self, event: AuditEvent) -> None:
        data = event.data
        if data.get("outcome") != "ok":
            return  # the manager logs a refused or failed open itself, with its reason
        ms = number(data.get("duration_ms"))
        fields = {
            "event": "session.open", "session_id": event.session_id, "caller": event.caller,
            "profile": text(data.get("profile")), "start": text(data.get("start")), "door": text(data.get("door")),
            "ms": None if ms is None else round(ms, 1),
        }  # fmt: skip
        took = "" if ms is None else f" in {ms:.0f} ms"
        self._line(fields, "session %s opened (%s start%s): profile %s, caller %s", event.session_id,
                   fields["start"], took, fields["profile"], event.caller)  # fmt: skip

    def _closed(self, event: AuditEvent) -> None:
        data = event.data
        calls = number(field(data, "usage", "calls"))
        seconds = number(field(data, "usage", "wall_seconds"))
        fields = {
            "event": "session.close", "session_id": event.session_id, "caller": event.caller,
            "profile": text(data.get("profile")), "state": text(data.get("state")), "reason": text(data.get("reason")),
            "calls": None if calls is None else int(calls), "seconds": None if seconds is None else round(seconds, 3),
        }  # fmt: skip
        why = f": {fields['reason']}" if fields["reason"] else ""
        self._line(fields, "session %s %s after %s calls in %s s%s (profile %s, caller %s)", event.session_id,
                   fields["state"] or "ended", fields["calls"], fields["seconds"], why, fields["profile"],
                   event.caller)  # fmt: skip

    def _request(self, event: AuditEvent) -> None:
        data = event.data
        outcome = request_outcome(data)
        if outcome in _QUIET_OUTCOMES:
            return
        status = field(data, "error", "status")
        fields = {
            "event": "request", "session_id": event.session_id, "caller": event.caller,
            "method": text(data.get("method"), 100), "outcome": outcome,
            "status": status if isinstance(status, str) else "", "error": text(field(data, "error", "message")),
            "ms": number(data.get("duration_ms")), "audit_id": event.id,
        }  # fmt: skip
        failed = fields["status"] or outcome
        self._line(fields, "%s of session %s by caller %s: %s: %s", fields["method"], event.session_id or "-",
                   event.caller, failed, fields["error"] or outcome)  # fmt: skip

    def _line(self, fields: dict[str, Any], message: str, *args: Any) -> None:
        self._log.info(message, *args, extra={FIELDS: fields})
