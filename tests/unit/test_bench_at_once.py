"""The at-once section tells every session's and call's answer apart, and reports what it counted."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import grpc
import pytest

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.bench.at_once import (
    ZONES,
    AtOnce,
    answer_of,
    at_once_report,
    check,
    convert_arguments,
    measure_at_once,
    reason,
)
from runner.bench.options import MAX_AT_ONCE, MAX_AT_ONCE_CALLS
from runner.client import ToolResult


def _conversion(source: str, target: str, hhmm: str) -> dict[str, object]:
    """The shape of mcp-server-time's convert_time answer."""
    return {
        "source": {"timezone": source, "datetime": f"2026-12-05T{hhmm}:00-05:00", "day_of_week": "Saturday",
                   "is_dst": False},
        "target": {"timezone": target, "datetime": "2026-12-05T21:07:00+03:00", "day_of_week": "Saturday",
                   "is_dst": False},
        "time_difference": "+8.0h",
    }


def test_every_session_and_call_the_section_allows_has_arguments_of_its_own() -> None:
    assert len(set(ZONES)) == 27 and "Etc/GMT" in ZONES and "Etc/GMT-14" in ZONES and "Etc/GMT+12" in ZONES
    assert len(ZONES) ** 2 == MAX_AT_ONCE
    sessions = {tuple(convert_arguments(session, 0).items()) for session in range(MAX_AT_ONCE)}
    calls = {convert_arguments(5, call)["time"] for call in range(MAX_AT_ONCE_CALLS)}
    assert len(sessions) == MAX_AT_ONCE and len(calls) == MAX_AT_ONCE_CALLS
    assert convert_arguments(28, 61) == {"source_timezone": "Etc/GMT-13", "target_timezone": "Etc/GMT-13",
                                         "time": "01:01"}


def test_an_answer_belongs_to_its_call_only_if_it_echoes_zones_and_time() -> None:
    asked = convert_arguments(3, 7)
    mine = _conversion(asked["source_timezone"], asked["target_timezone"], asked["time"])
    assert check(asked, mine) == "answered"
    other_session = convert_arguments(4, 7)
    assert check(asked, _conversion(other_session["source_timezone"], other_session["target_timezone"],
                                    asked["time"])) == "cross-delivered"
    assert check(asked, _conversion(asked["source_timezone"], asked["target_timezone"], "00:08")) == "cross-delivered"
    assert check(asked, {"content": "hello"}) == "unreadable"
    assert check(asked, None) == "unreadable"
    assert check(asked, {"source": {"timezone": "UTC"}, "target": {}}) == "unreadable"


def test_the_answer_is_the_structured_content_or_else_the_text_as_json() -> None:
    structured = ToolResult(content=[], structured_content={"a": 1}, is_error=False, findings=[], audit_id="")
    assert answer_of(structured) == {"a": 1}
    text = ToolResult(content=[pb.Content(text=json.dumps({"b": 2}))], structured_content=None, is_error=False,
                      findings=[], audit_id="")
    assert answer_of(text) == {"b": 2}
    garbled = ToolResult(content=[pb.Content(text="not json")], structured_content=None, is_error=False,
                         findings=[], audit_id="")
    assert answer_of(garbled) is None


def test_failures_are_counted_by_one_short_line() -> None:
    error = grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                 "200 sessions are open\nsecond line", None)
    assert reason(error) == "RESOURCE_EXHAUSTED: 200 sessions are open"
    assert reason(TimeoutError("x" * 500)) == "TimeoutError: " + "x" * 160


def test_the_section_refuses_counts_it_could_not_tell_apart() -> None:
    with pytest.raises(ValueError, match="told apart"):
        asyncio.run(measure_at_once(None, MAX_AT_ONCE + 1, 1))


def test_the_report_says_what_was_counted() -> None:
    result = AtOnce(
        asked=200, opened=198, open_failures=Counter({"DEADLINE_EXCEEDED: open took too long": 2}), open_s=120.0,
        memory=[40 * 1024**2, 44 * 1024**2], rss_idle=100 * 1024**2, rss_open=199 * 1024**2, calls=1980,
        verdicts=Counter({"answered": 1975, "cross-delivered": 1, "UNAVAILABLE: gone": 4}), calls_s=10.0,
        close_failures=0, left=0,
    )
    assert (result.answered, result.cross_deliveries, result.failed_calls) == (1975, 1, 4)
    lines: list[str] = []
    at_once_report(lines.append, result, 10)
    text = "\n".join(lines)
    assert "198 of 200 (99%), 2 failed" in text
    assert "42.0 MiB" in text and "mean of 2 containers" in text
    assert "100.0 MiB idle, 199.0 MiB with 198 sessions open, 0.5 MiB more per session" in text
    assert "1980: 1975 answered, 4 failed, 1 cross-delivered" in text and "(198 calls/s)" in text
    assert "containers left with the service's instance label: 0" in text
    assert "open failed x2: DEADLINE_EXCEEDED: open took too long" in text
    assert "call failed x4: UNAVAILABLE: gone" in text
