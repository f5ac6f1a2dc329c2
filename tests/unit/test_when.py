"""``parse_when``: every accepted form against a fixed ``now`` in a fixed local zone (with DST), and rejections."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from runner.when import parse_when

CET = timezone(timedelta(hours=1))
CEST = timezone(timedelta(hours=2))
NOW = datetime(2026, 11, 25, 15, 30, 45)
"""Naive, so local time: 14:30:45 UTC in the zone below."""


@pytest.fixture(autouse=True)
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is Central European (CET, CEST from the last Sunday of March), without needing tzdata."""
    monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, *, tz: timezone = CET
) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=tz).timestamp()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", at(2026, 11, 25, 15, 30, 45)),
        ("  NOW ", at(2026, 11, 25, 15, 30, 45)),
        ("today", at(2026, 11, 25)),
        ("yesterday", at(2026, 11, 24)),
        ("0s", at(2026, 11, 25, 15, 30, 45)),
        ("30s", at(2026, 11, 25, 15, 30, 15)),
        ("90m", at(2026, 11, 25, 14, 0, 45)),
        ("24h", at(2026, 11, 24, 15, 30, 45)),
        ("7d", at(2026, 11, 18, 15, 30, 45)),
        ("2026-11-25", at(2026, 11, 25)),
        ("2026-07-01", at(2026, 7, 1, tz=CEST)),  # local midnight of that day, in summer time
        ("2026-11-25T10:00", at(2026, 11, 25, 10)),
        ("2026-11-25 10:00:00", at(2026, 11, 25, 10)),
        ("2026-11-25T10:00:00.250", at(2026, 11, 25, 10) + 0.25),
        ("2026-11-25T10:00Z", datetime(2026, 11, 25, 10, tzinfo=UTC).timestamp()),
        ("2026-11-25T10:00:00+05:30", datetime(2026, 11, 25, 4, 30, tzinfo=UTC).timestamp()),
    ],
)
def test_accepted_forms(text: str, expected: float) -> None:
    assert parse_when(text, now=NOW) == expected


def test_yesterday_until_today_is_all_of_yesterday() -> None:
    since, until = parse_when("yesterday", now=NOW), parse_when("today", now=NOW)
    assert until - since == 86400
    assert datetime.fromtimestamp(since, CET) == datetime(2026, 11, 24, tzinfo=CET)


def test_midnight_follows_the_local_rules_of_its_day() -> None:
    """On the day summer time starts, midnight is still CET though "now" is CEST: a day of 23 hours."""
    now = datetime(2026, 3, 29, 12, 0)
    assert parse_when("today", now=now) == at(2026, 3, 29)
    assert parse_when("now", now=now) - parse_when("today", now=now) == 11 * 3600
    assert parse_when("2026-03-30", now=now) - parse_when("today", now=now) == 23 * 3600


def test_an_aware_now_counts_in_local_time() -> None:
    """23:30 UTC is already the next day in Berlin, so "today" is that day."""
    now = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)
    assert parse_when("today", now=now) == at(2026, 11, 26)
    assert parse_when("now", now=now) == now.timestamp()
    assert parse_when("1h", now=now) == now.timestamp() - 3600


def test_without_now_it_is_the_present() -> None:
    before = time.time()
    assert before - 1 <= parse_when("now") <= time.time() + 1
    assert parse_when("1d") == pytest.approx(time.time() - 86400, abs=5)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "soon", "tomorrow", "30", "-5m", "1.5h", "5 m", "2w", "30sec", "2026-13-01", "2026-11-25T25:00",
     "20261125", "25.11.2026", "2026-11-25 garbage", "٣٠s"],
)  # fmt: skip
def test_rejections_name_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"cannot read .* as a time; use \"now\", \"today\", \"yesterday\"") as caught:
        parse_when(text, now=NOW)
    assert "30s, 90m, 24h or 7d" in str(caught.value) and "2026-11-25T10:00" in str(caught.value)
