"""google.protobuf.Timestamp ⇄ Unix seconds: one conversion for the server, the client and the CLI."""

from __future__ import annotations

import math
from typing import Any


def set_time(field: Any, unix: float) -> None:
    """Fill a Timestamp field from Unix seconds (nanoseconds capped so rounding never overflows a second)."""
    seconds = math.floor(unix)
    field.seconds, field.nanos = seconds, min(round((unix - seconds) * 1e9), 999_999_999)


def unix_time(timestamp: Any) -> float:
    """Unix seconds of a Timestamp."""
    seconds: int = timestamp.seconds
    nanos: int = timestamp.nanos
    return seconds + nanos / 1e9
