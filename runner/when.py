"""Points in time as people type them on the command line (``--since yesterday --until today``).

Calendar words and dates mean local midnight, so ``--since yesterday --until
today`` is all of yesterday; naive times are local time too. Midnight is found
through the platform's local-time rules for that day, so a DST change between
now and then does not shift it by an hour.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta

FORMS = (
    '"now", "today", "yesterday" (local midnight), an age like 30s, 90m, 24h or 7d, '
    "a date 2026-11-25 (local midnight), or a time 2026-11-25T10:00 / 2026-11-25 10:00:00 "
    "(local unless it ends in Z or an offset like +01:00)"
)

_AGE = re.compile(r"([0-9]+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ISO_START = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _local_midnight(day: date) -> float:
    return datetime.combine(day, time()).timestamp()  # naive: the platform's local time for that day


def parse_when(text: str, *, now: datetime | None = None) -> float:
    """Unix time of ``text``; ``now`` (naive = local) is the reference for words and ages."""
    word = text.strip().lower()
    moment = datetime.now() if now is None else now
    today = moment.astimezone().date()  # astimezone reads a naive moment as local time
    if word == "now":
        return moment.timestamp()
    if word == "today":
        return _local_midnight(today)
    if word == "yesterday":
        return _local_midnight(today - timedelta(days=1))
    if age := _AGE.fullmatch(word):
        return moment.timestamp() - int(age[1]) * _UNIT_SECONDS[age[2]]
    if _ISO_START.match(word):
        try:
            return datetime.fromisoformat(text.strip()).timestamp()  # a date alone is its midnight
        except ValueError:
            pass
    raise ValueError(f"cannot read {text!r} as a time; use {FORMS}")
