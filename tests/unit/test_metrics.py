"""Metrics derived from audit events: a SessionManager on FakeBackend with the audit log OFF (the observers see every
event all the same), its events mapped to counters, gauges and histograms with bounded labels."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner import errors
from runner.audit import records
from runner.audit.records import AuditEvent
from runner.audit.store import AuditStore
from runner.config import Limits, Profile, Settings
from runner.observe.metrics import MAX_LABEL_VALUES, MAX_TOOL_LABELS, RunnerMetrics
from runner.policy import PolicyStore
from runner.sandbox.base import SandboxSpec
from runner.sandbox.fake import FakeBackend, Handler
from runner.sessions.journal import Journal, Observer
from runner.sessions.manager import SessionManager
from tests.unit.fake_agent import FakeAgent

LIMITS = Limits(call_timeout_s=5.0, idle_timeout_s=60, max_lifetime_s=600)
PROFILES = {
    name: Profile(name=name, image="fake", command=(behaviour,), limits=LIMITS)
    for name, behaviour in (("good", "good"), ("crash", "crash_on_call"), ("oom", "oom_on_call"))
}
SETTINGS = Settings(profiles=MappingProxyType(PROFILES), max_sessions=10, reap_interval_s=3600)
POLICY = """
    callers:
      alice:
        profiles: ["*"]
        profile_tools:
          good: {deny: ["sleep"]}
"""


@dataclass
class Run:
    manager: SessionManager
    metrics: RunnerMetrics

    def value(self, name: str, **labels: str) -> float:
        found = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, *observers: Observer, settings: Settings = SETTINGS, store: AuditStore | None = None
) -> AsyncIterator[Run]:
    """A manager whose journal tells ``RunnerMetrics`` (and ``observers``) of every event; no audit log unless
    ``store``."""
    metrics = RunnerMetrics(settings.profiles, "fake")
    policy = tmp_path / "policy.yaml"
    policy.write_text(textwrap.dedent(POLICY), encoding="utf-8")

    def handler(spec: SandboxSpec) -> Handler:
        return FakeAgent(spec.command[0])

    journal = Journal(store, observers=(metrics.observe, *observers))
    manager = SessionManager(FakeBackend(handler), settings, PolicyStore(policy), journal)
    metrics.watch(manager.pool, store)
    await manager.start()
    try:
        yield Run(manager, metrics)
    finally:
        await manager.shutdown()


async def exercise(run: Run) -> str:
    """What the tests count: one open, an OK call, an invalid one, a denied one, an unknown tool, a refused open."""
    manager = run.manager
    opened = await manager.open("good", caller="alice")
    session = opened.info.session_id
    await manager.call_tool(session, "echo", {"text": "hi"}, caller="alice")
    with pytest.raises(errors.SchemaViolation):
        await manager.call_tool(session, "echo", {"text": 5}, caller="alice")
    with pytest.raises(errors.PermissionDenied):
        await manager.call_tool(session, "sleep", {}, caller="alice")
    with pytest.raises(errors.ToolNotFound):
        await manager.call_tool(session, "no-such-tool-" + "x" * 300, {}, caller="alice")
    with pytest.raises(errors.ProfileNotFound):
        await manager.open("no-such-profile-\u202e", caller="alice")
    return session


async def test_calls_move_their_counters_by_exactly_what_was_done(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        session = await exercise(run)
        v = run.value
        assert v("mcp_runner_sessions_opened_total", profile="good", outcome="ok") == 1
        assert v("mcp_runner_sessions_opened_total", profile="unknown", outcome="refused") == 1
        assert v("mcp_runner_sessions_open", profile="good") == 1
        assert v("mcp_runner_session_open_seconds_count", profile="good", start="cold") == 1
        assert v("mcp_runner_tool_calls_total", profile="good", tool="echo", outcome="ok") == 1
        assert v("mcp_runner_tool_calls_total", profile="good", tool="echo", outcome="invalid_argument") == 1
        assert v("mcp_runner_tool_calls_total", profile="good", tool="sleep", outcome="permission_denied") == 1
        # A name the server never listed is caller input: it is counted, never a label of its own.
        assert v("mcp_runner_tool_calls_total", profile="good", tool="other", outcome="not_found") == 1
        assert v("mcp_runner_tool_call_seconds_count", profile="good", tool="echo") == 2
        assert v("mcp_runner_validation_failures_total", profile="good", method="tools/call") == 1
        assert v("mcp_runner_policy_decisions_total", action="tools/call", verdict="deny") == 1
        assert v("mcp_runner_policy_decisions_total", action="open", verdict="allow") == 1
        await run.manager.close(session, caller="alice")
        assert v("mcp_runner_sessions_open", profile="good") == 0
        assert v("mcp_runner_sessions_closed_total", profile="good", state="closed") == 1
        exposition = run.metrics.exposition().decode()
        assert "no-such" not in exposition and "\u202e" not in exposition


async def test_sandboxes_that_stop_on_their_own_count_by_reason(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        for profile in ("crash", "oom"):
            opened = await run.manager.open(profile, caller="alice")
            with pytest.raises(errors.RunnerError):
                await run.manager.call_tool(opened.info.session_id, "echo", {"text": "hi"}, caller="alice")
        assert run.value("mcp_runner_sandbox_exits_total", profile="crash", reason="exited") == 1
        assert run.value("mcp_runner_sandbox_exits_total", profile="oom", reason="oom_killed") == 1
        assert run.value("mcp_runner_sessions_closed_total", profile="crash", state="failed") == 1
        assert run.value("mcp_runner_sessions_open", profile="crash") == 0


async def test_the_pool_is_read_at_each_scrape(tmp_path: Path) -> None:
    pooled = Settings(**{**SETTINGS.__dict__, "pool": MappingProxyType({"good": 1})})
    async with running(tmp_path, settings=pooled) as run:
        await run.manager.pool.filled("good")
        assert run.value("mcp_runner_pool_ready", profile="good") == 1
        assert run.value("mcp_runner_pool_target", profile="good") == 1
        first = await run.manager.open("good", caller="alice")
        second = await run.manager.open("good", caller="alice")  # the pool has not refilled yet
        assert run.value("mcp_runner_pool_claims_total", profile="good", result="hit") == 1
        assert run.value("mcp_runner_pool_claims_total", profile="good", result="miss") == 1
        assert run.value("mcp_runner_session_open_seconds_count", profile="good", start="warm") == 1
        assert run.value("mcp_runner_session_open_seconds_count", profile="good", start="cold") == 1
        assert {first.info.session_id, second.info.session_id} and run.value("mcp_runner_sessions_open",
                                                                             profile="good") == 2  # fmt: skip


async def test_the_audit_writer_reports_commit_times_and_its_queue(tmp_path: Path) -> None:
    metrics = RunnerMetrics(["good"])
    store = AuditStore(tmp_path / "audit.db", on_commit=metrics.audit_committed)
    store.open()
    try:
        metrics.watch(None, store)
        for n in range(3):
            await store.append(AuditEvent(records.POLICY, "", "alice", {"n": n}))
    finally:
        store.close()
    assert metrics.registry.get_sample_value("mcp_runner_audit_commit_seconds_count") == 3
    assert metrics.registry.get_sample_value("mcp_runner_audit_queue_depth") == 0


def test_a_failing_commit_hook_costs_no_record(tmp_path: Path) -> None:
    def broken(seconds: float) -> None:
        raise RuntimeError("metrics are broken")

    store = AuditStore(tmp_path / "audit.db", on_commit=broken)
    store.open()
    try:
        for n in range(2):
            store.submit(AuditEvent(records.POLICY, "", "alice", {"n": n})).result(timeout=10)
    finally:
        store.close()
    assert store.head[0] == 2


def test_tool_labels_are_capped_per_profile() -> None:
    metrics = RunnerMetrics(["good"])
    names = [f"tool{n}" for n in range(MAX_TOOL_LABELS + 10)]
    metrics.observe(AuditEvent(records.SESSION_OPEN, "s1", "alice", {
        "profile": "good", "outcome": "ok", "start": "cold", "tools": [{"name": n} for n in names],
    }))  # fmt: skip
    for name in names:
        metrics.observe(AuditEvent(records.REQUEST, "s1", "alice", {
            "method": "tools/call", "params": {"name": name}, "outcome": "ok", "duration_ms": 1.0,
        }))  # fmt: skip
    tools = {s.labels["tool"] for s in _samples(metrics, "mcp_runner_tool_calls_total")}
    assert len(tools) == MAX_TOOL_LABELS + 1 and "other" in tools
    assert metrics.registry.get_sample_value(
        "mcp_runner_tool_calls_total", {"profile": "good", "tool": "other", "outcome": "ok"}) == 10


def test_other_labels_are_capped_and_odd_values_are_unknown() -> None:
    metrics = RunnerMetrics(["good"])
    for n in range(MAX_LABEL_VALUES + 5):
        metrics.observe(AuditEvent(records.FINDING, "", "alice", {"findings": [{"kind": f"kind{n}", "count": 1}]}))
    metrics.observe(AuditEvent(records.FINDING, "", "alice", {"findings": [{"kind": {"sha256": "..."}}]}))
    kinds = {s.labels["kind"] for s in _samples(metrics, "mcp_runner_findings_total")}
    assert len(kinds) == MAX_LABEL_VALUES + 2 and {"other", "unknown"} <= kinds


def test_each_metrics_label_has_its_own_cap() -> None:
    """Findings' ``action`` filling its cap leaves the policy's ``action`` (another metric's label) its own values."""
    metrics = RunnerMetrics(["good"])
    for n in range(MAX_LABEL_VALUES + 5):
        finding = {"kind": "secret", "action": f"action{n}", "count": 1}
        metrics.observe(AuditEvent(records.FINDING, "", "alice", {"findings": [finding]}))
    metrics.observe(AuditEvent(records.POLICY, "", "alice", {"action": "call", "verdict": "allow"}))
    assert {s.labels["action"] for s in _samples(metrics, "mcp_runner_policy_decisions_total")} == {"call"}


def test_throttles_count_by_open_or_method() -> None:
    metrics = RunnerMetrics(["good"])
    for data in ({"action": "open"}, {"action": "tools/call"}, {"method": "tools/call"}, {"action": "made/up"}):
        metrics.observe(AuditEvent(records.THROTTLE, "", "alice", data))
    get = metrics.registry.get_sample_value
    assert get("mcp_runner_throttled_total", {"action": "open"}) == 1
    assert get("mcp_runner_throttled_total", {"action": "tools/call"}) == 2
    assert get("mcp_runner_throttled_total", {"action": "other"}) == 1


def test_approvals_pending_follow_their_states() -> None:
    metrics = RunnerMetrics(["good"])

    def approval(approval_id: str, state: str) -> None:
        metrics.observe(AuditEvent(records.APPROVAL, "s1", "alice", {"approval_id": approval_id, "state": state}))

    approval("apr_1", "pending")
    approval("apr_2", "pending")
    approval("apr_1", "approved")
    approval("apr_3", "expired")
    assert metrics.registry.get_sample_value("mcp_runner_approvals_pending") == 1


def test_egress_findings_quarantines_and_build_info() -> None:
    metrics = RunnerMetrics(["good"], "docker")
    metrics.observe(AuditEvent(records.SESSION_OPEN, "s1", "alice", {"profile": "good", "outcome": "ok", "tools": []}))
    metrics.observe(AuditEvent(records.EGRESS, "s1", "alice", {"allowed": True}))
    metrics.observe(AuditEvent(records.EGRESS, "s1", "alice", {"allowed": False}))
    metrics.observe(AuditEvent(records.EGRESS, "pooled", "", {"allowed": False}))
    metrics.observe(AuditEvent(records.FINDING, "s1", "alice", {"findings": [
        {"kind": "email", "count": 3, "action": "redacted", "where": "content[0].text"},
    ]}))  # fmt: skip
    metrics.observe(AuditEvent(records.QUARANTINE, "s1", "alice", {"reason": "quarantined"}))
    get = metrics.registry.get_sample_value
    assert get("mcp_runner_egress_decisions_total", {"profile": "good", "decision": "allowed"}) == 1
    assert get("mcp_runner_egress_decisions_total", {"profile": "good", "decision": "refused"}) == 1
    assert get("mcp_runner_egress_decisions_total", {"profile": "unknown", "decision": "refused"}) == 1
    assert get("mcp_runner_findings_total", {"kind": "email", "action": "redacted"}) == 3
    assert get("mcp_runner_quarantines_total", {"profile": "good"}) == 1
    (info,) = _samples(metrics, "mcp_runner_build_info")
    assert info.labels["backend"] == "docker" and info.labels["version"]


def test_the_exposition_parses_as_prometheus_text() -> None:
    metrics = RunnerMetrics(["good"])
    families = {f.name for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert {"mcp_runner_sessions_opened", "mcp_runner_tool_call_seconds", "mcp_runner_build_info"} <= families


async def test_an_observer_that_raises_never_fails_a_request(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                            ) -> None:  # fmt: skip
    calls: list[str] = []

    def broken(event: AuditEvent) -> None:
        calls.append(event.kind)
        raise ValueError("observer bug")

    async with running(tmp_path, broken) as run:
        await exercise(run)
        assert run.value("mcp_runner_tool_calls_total", profile="good", tool="echo", outcome="ok") == 1
    assert records.REQUEST in calls
    assert caplog.text.count("ValueError: observer bug") == 1  # logged once, not once per event


async def test_observers_see_events_with_the_audit_log_on_too(tmp_path: Path) -> None:
    seen: list[str] = []
    store = AuditStore(tmp_path / "audit.db")
    store.open()
    try:
        async with running(tmp_path, lambda e: seen.append(e.kind), store=store) as run:
            await exercise(run)
    finally:
        store.close()
    written = [r.kind for r in store.query(records.AuditQuery())]
    assert sorted(seen) == sorted(written)


def _samples(metrics: RunnerMetrics, name: str) -> list[Any]:
    return [s for family in metrics.registry.collect() for s in family.samples if s.name == name]



def test_a_method_the_caller_made_up_is_other() -> None:
    metrics = RunnerMetrics(["good"])
    for n in range(MAX_LABEL_VALUES + 5):  # a door's refusals record what the caller sent as the method
        metrics.observe(AuditEvent(records.REQUEST, "", "mallory", {
            "method": f"made/up{n}", "outcome": "error", "error": {"status": "NOT_FOUND", "message": "no"},
        }))  # fmt: skip
    metrics.observe(AuditEvent(records.REQUEST, "", "alice", {"method": "tools/list", "outcome": "ok"}))
    methods = {s.labels["method"] for s in _samples(metrics, "mcp_runner_requests_total")}
    assert methods == {"other", "tools/list"}


async def test_open_latency_is_the_duration_the_session_open_record_carries(tmp_path: Path) -> None:
    seen: list[AuditEvent] = []
    async with running(tmp_path, seen.append) as run:
        await run.manager.open("good", caller="alice")
        (record,) = [e for e in seen if e.kind == records.SESSION_OPEN]
        took = record.data["duration_ms"]
        assert record.data["start"] == "cold" and isinstance(took, float) and took >= 0
        assert run.value("mcp_runner_session_open_seconds_sum", profile="good", start="cold") == took / 1000
    metrics = RunnerMetrics(["good"])  # an open without a duration (abandoned, refused) is not timed
    metrics.observe(AuditEvent(records.SESSION_OPEN, "s1", "alice", {"profile": "good", "outcome": "abandoned"}))
    assert metrics.registry.get_sample_value("mcp_runner_session_open_seconds_count",
                                             {"profile": "good", "start": "unknown"}) is None  # fmt: skip


def test_odd_numbers_never_reach_a_counter_or_a_histogram() -> None:
    metrics = RunnerMetrics(["good"])
    for count in (float("nan"), float("inf"), -3, "7", True):
        metrics.observe(AuditEvent(records.FINDING, "", "", {"findings": [{"kind": "email", "action": "redact",
                                                                            "count": count}]}))  # fmt: skip
    metrics.observe(AuditEvent(records.FINDING, "", "", {"findings": [{"kind": "email", "action": "redact",
                                                                        "count": 4}]}))  # fmt: skip
    assert metrics.registry.get_sample_value("mcp_runner_findings_total", {"kind": "email", "action": "redact"}) == 9
    metrics.observe(AuditEvent(records.SESSION_OPEN, "s1", "alice", {"profile": "good", "outcome": "ok",
                                                                    "start": "warm", "duration_ms": float("nan")}))
    metrics.observe(AuditEvent(records.REQUEST, "s1", "alice", {"method": "tools/call", "outcome": "ok",
                                                               "duration_ms": -1.0}))  # fmt: skip
    assert "nan" not in metrics.exposition().decode().lower()
