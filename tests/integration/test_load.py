"""The bench's at-once scenario at a small N, against the real service and real Docker: counts, never times.

Twelve sessions of ``time`` asked for at the same moment, twenty calls on each, all sessions at once: every open
must succeed, every answer must echo its own call's arguments (no answer delivered to another session or call),
and closing must leave no container of the service's instance behind.
"""

from __future__ import annotations

import asyncio

import pytest

from runner.bench.at_once import measure_at_once

pytestmark = pytest.mark.integration

SESSIONS, CALLS = 12, 20


def test_sessions_opened_at_once_all_open_answer_their_own_calls_and_leave_nothing(images: dict[str, str]) -> None:
    result = asyncio.run(measure_at_once(None, SESSIONS, CALLS))
    assert (result.opened, dict(result.open_failures)) == (SESSIONS, {})
    assert result.calls == SESSIONS * CALLS
    assert dict(result.verdicts) == {"answered": SESSIONS * CALLS}, "failed or cross-delivered calls"
    assert result.cross_deliveries == 0 and result.failed_calls == 0
    assert result.close_failures == 0
    assert result.left == 0, "containers of the service's instance were left after closing every session"
