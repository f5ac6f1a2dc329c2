"""What metrics and log lines read from audit events: the fields they need, in the shapes the journal writes them.

Everything here reads an event's ``data`` defensively: it is what the journal recorded (already sanitized, secrets
redacted, caller input capped), and a field missing or of another type gives a neutral answer, never an error.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from runner.audit import records
from runner.audit.records import AuditEvent
from runner.text import whole_words

TEXT_CHARS = 300
"""How much of a message or reason an observer passes on."""


def text(value: Any, chars: int = TEXT_CHARS) -> str:
    """A recorded text as an observer shows it: capped caller input as its prefix, at most ``chars`` long (cut
    between words, so no part of a word is left that a redaction would have recognized whole)."""
    if isinstance(value, Mapping):
        value = value.get("prefix", "")
    if not isinstance(value, str):
        return ""
    return value if len(value) <= chars else whole_words(value, chars - 1) + "…"


def field(data: Mapping[str, Any], *path: str) -> Any:
    """``data[path[0]][path[1]]…``, or None where a step is missing or not a mapping."""
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def request_outcome(data: Mapping[str, Any]) -> str:
    """``ok``, ``tool_error`` (the server's own error result), the error's status in lower case (``invalid_argument``),
    or the journal's other outcomes (``abandoned``, ``approval_pending``, ``input_required``)."""
    outcome = data.get("outcome")
    if outcome == "ok":
        return "tool_error" if field(data, "result", "isError") is True else "ok"
    if outcome == "error":
        status = field(data, "error", "status")
        return status.lower() if isinstance(status, str) else "error"
    return outcome if isinstance(outcome, str) else "unknown"


class OpenClock:
    """How long each admitted open took: from its policy ``allow`` (a warm claim or a cold start begins right after)
    to its ``session.open`` record, timed on this process's monotonic clock as the events are made.

    Holds at most ``cap`` opens under way (a service allows far fewer at once); past it the oldest is forgotten.
    """

    def __init__(self, cap: int = 4096) -> None:
        self._cap = cap
        self._began: dict[str, float] = {}

    def seconds(self, event: AuditEvent) -> float | None:
        """For a ``session.open`` of an admitted open: its duration; otherwise None (and notes a start)."""
        if not event.session_id:
            return None
        if event.kind == records.POLICY:
            data = event.data
            if data.get("action") == "open" and data.get("verdict") == "allow":
                if len(self._began) >= self._cap:
                    self._began.pop(next(iter(self._began)))
                self._began[event.session_id] = time.monotonic()
            return None
        if event.kind == records.SESSION_OPEN:
            began = self._began.pop(event.session_id, None)
            return None if began is None else time.monotonic() - began
        return None
