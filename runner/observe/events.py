"""What metrics and log lines read from audit events: the fields they need, in the shapes the journal writes them.

Everything here reads an event's ``data`` defensively: it is what the journal recorded (already sanitized, secrets
redacted, caller input capped), and a field missing or of another type gives a neutral answer, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

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
    """A finite, non-negative number (a count, a duration) as a float; anything else None: a NaN or an infinity
    would poison a counter's or a histogram's sum for good, and none of the fields read so is ever negative."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    found = float(value)
    return found if math.isfinite(found) and found >= 0 else None


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
