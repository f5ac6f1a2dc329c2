"""Red team of the operators' view (issue 15): metrics and log lines under hostile input, exact counts, hooks that
fail. A test marked ``xfail(strict=True, reason="DEFECT: ...")`` shows a defect found: it fails today and passes
once fixed. The rest are properties that hold and must keep holding."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner import errors
from runner.audit import records
from runner.audit.records import AuditEvent, AuditQuery
from runner.audit.store import AuditStore
from runner.config import Limits, LogConfig, Profile, Settings
from runner.observe.logs import EventLog, TextFormatter, configure
from runner.observe.metrics import MAX_LABEL_VALUES, MAX_TOOL_LABELS, METHODS, RunnerMetrics
from runner.policy import PolicyStore
from runner.sandbox.base import SandboxSpec
from runner.sandbox.fake import FakeBackend, Handler
from runner.sessions.journal import Journal, Observer
from runner.sessions.manager import SessionManager
from tests.unit.fake_agent import FakeAgent

ROOT = Path(__file__).resolve().parents[2]
LIMITS = Limits(call_timeout_s=5.0, idle_timeout_s=60, max_lifetime_s=600)
PROFILES = MappingProxyType({"good": Profile(name="good", image="fake", command=("good",), limits=LIMITS)})
SETTINGS = Settings(profiles=PROFILES, max_sessions=40, reap_interval_s=3600)
POLICY = """\
callers:
  alice:
    profiles: ["*"]
    rates: {refusals_per_min: 0.01, refusal_burst: 2}
"""
LINE_BREAKS = "\u2028\u2029\x85\x1c\x1d\x1e\x0b\x0c\r"
"""What ``str.splitlines`` (and many log viewers) take for the end of a line, besides ``\\n``."""


@contextlib.asynccontextmanager
async def managed(tmp_path: Path, *observers: Observer, store: AuditStore | None = None
                  ) -> AsyncIterator[tuple[SessionManager, RunnerMetrics]]:  # fmt: skip
    metrics = RunnerMetrics(SETTINGS.profiles, "fake")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")

    def handler(spec: SandboxSpec) -> Handler:
        return FakeAgent(spec.command[0])

    journal = Journal(store, observers=(metrics.observe, *observers))
    manager = SessionManager(FakeBackend(handler), SETTINGS, PolicyStore(policy), journal)
    metrics.watch(manager.pool, store)
    await manager.start()
    try:
        yield manager, metrics
    finally:
        await manager.shutdown()


def series(metrics: RunnerMetrics) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of the exposition, as Prometheus would parse it."""
    text = metrics.exposition().decode()
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def value(metrics: RunnerMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


# -- metrics ------------------------------------------------------------------------------------------------------


async def test_every_request_refused_past_the_refusal_rate_is_counted(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.db")
    store.open()
    try:
        async with managed(tmp_path, store=store) as (manager, metrics):
            throttled = 0
            for n in range(8):
                try:
                    await manager.call_tool(f"ses_missing{n}", "echo", {"text": "x"}, caller="alice")
                except errors.RateLimited:
                    throttled += 1
                except errors.SessionNotFound:
                    pass
            assert throttled == 6  # the burst of two answered NOT_FOUND, the rest RESOURCE_EXHAUSTED
            assert value(metrics, "mcp_runner_throttled_total", action="tools/call") == throttled
            assert value(metrics, "mcp_runner_requests_total", profile="unknown", method="tools/call",
                         outcome="resource_exhausted") == throttled  # fmt: skip
    finally:
        store.close()
    # The audit log keeps its one throttle record per run: a flood of refusals does not grow it.
    assert len(list(store.query(AuditQuery(kinds=(records.THROTTLE,))))) == 1


def test_malformed_event_data_never_raises_nor_poisons_a_counter() -> None:
    metrics = RunnerMetrics(["good"])
    odd: list[object] = [None, 7, float("nan"), True, "", ["tools/call"], {"prefix": "x"}]
    for kind in (records.REQUEST, records.VALIDATION, records.THROTTLE, records.FINDING, records.SESSION_OPEN):
        for key in ("method", "action", "outcome", "profile", "tools", "findings", "params"):
            for given in odd:
                metrics.observe(AuditEvent(kind, "s1", "alice", {"outcome": "ok", key: given}))
    metrics.observe(AuditEvent(records.FINDING, "", "", {"findings": [{"kind": "email", "count": float("nan")}]}))
    assert all(v == v for _, _, v in series(metrics))  # no NaN anywhere


def test_a_barrage_of_hostile_events_keeps_every_label_bounded_and_clean() -> None:
    """Hundreds of sessions of a server listing 1024 fresh tool names each, callers naming made-up methods,
    profiles and tools with odd unicode, the service's own labels taking hundreds of values: the series stay
    bounded, and no session id, caller or name a caller sent is ever a label value."""
    metrics = RunnerMetrics(["good"], "docker")
    hostile = '\u202e\u2028\x1b[31m{"x":1}\n'
    for n in range(300):
        session = f"ses_{n:06d}secretish"
        tools = [{"name": f"t{n}_{k}"} for k in range(1024)] + [{"name": "x" * 5000}]  # screened names: no unicode
        metrics.observe(AuditEvent(records.SESSION_OPEN, session, f"caller{n}", {
            "profile": "good" if n % 2 else f"evil{hostile}{n}", "outcome": "ok", "start": "cold", "tools": tools,
        }))  # fmt: skip
        for name in (f"t{n}_0", hostile, f"never-listed-{n}"):
            metrics.observe(AuditEvent(records.REQUEST, session, f"caller{n}", {
                "method": "tools/call", "params": {"name": name}, "outcome": "ok", "duration_ms": 1.0,
            }))  # fmt: skip
        metrics.observe(AuditEvent(records.REQUEST, session, f"caller{n}", {
            "method": f"tools/call{hostile}{n}", "outcome": "error", "error": {"status": f"S{n}", "message": hostile},
        }))  # fmt: skip
        metrics.observe(AuditEvent(records.POLICY, session, f"caller{n}", {"action": f"a{n}", "verdict": f"v{n}"}))
        if n % 3:
            metrics.observe(AuditEvent(records.SESSION_CLOSE, session, f"caller{n}", {"profile": "good",
                                                                                     "state": f"s{n}"}))  # fmt: skip
    samples = series(metrics)
    values = {v for _, labels, _ in samples for v in labels.values()}
    assert not any("ses_" in v or "caller" in v or "\u202e" in v or "never-listed" in v for v in values)
    assert {labels["profile"] for name, labels, _ in samples if "profile" in labels} <= {"good", "unknown"}
    for profile in ("good", "unknown"):
        named = {labels["tool"] for name, labels, _ in samples
                 if name == "mcp_runner_tool_calls_total" and labels["profile"] == profile}  # fmt: skip
        assert len(named) <= MAX_TOOL_LABELS + 1
    methods = {labels["method"] for name, labels, _ in samples if name == "mcp_runner_requests_total"}
    assert methods <= METHODS | {"other"}
    for label in ("outcome", "action", "verdict", "state"):
        seen = {labels[label] for _, labels, _ in samples if label in labels}
        assert len(seen) <= MAX_LABEL_VALUES + 3, label  # its values, other, unknown
    assert len(samples) < 5000
    open_now = sum(v for name, labels, v in samples if name == "mcp_runner_sessions_open")
    assert open_now == len([n for n in range(300) if not n % 3])


async def test_opens_closes_and_scrapes_at_once_keep_the_open_gauge_exact(tmp_path: Path) -> None:
    async with managed(tmp_path) as (manager, metrics):
        seen: list[float] = []

        async def session() -> None:
            opened = await manager.open("good", caller="alice")
            await manager.call_tool(opened.info.session_id, "echo", {"text": "hi"}, caller="alice")
            await manager.close(opened.info.session_id, caller="alice")

        async def scrape() -> None:
            for _ in range(50):
                seen.extend(v for name, _, v in series(metrics) if name == "mcp_runner_sessions_open")
                await asyncio.sleep(0)

        await asyncio.gather(scrape(), *(session() for _ in range(20)))
        assert all(0 <= v <= 20 for v in seen)
        assert value(metrics, "mcp_runner_sessions_open", profile="good") == 0
        assert value(metrics, "mcp_runner_sessions_opened_total", profile="good", outcome="ok") == 20
        assert value(metrics, "mcp_runner_sessions_closed_total", profile="good", state="closed") == 20
        assert value(metrics, "mcp_runner_tool_calls_total", profile="good", tool="echo", outcome="ok") == 20


async def test_an_observer_raising_on_every_event_costs_no_audit_record(tmp_path: Path) -> None:
    def broken(event: AuditEvent) -> None:
        raise RuntimeError(f"observer bug on {event.kind}")

    store = AuditStore(tmp_path / "audit.db")
    store.open()
    try:
        async with managed(tmp_path, broken, store=store) as (manager, metrics):
            opened = await manager.open("good", caller="alice")
            await manager.call_tool(opened.info.session_id, "echo", {"text": "hi"}, caller="alice")
            await manager.close(opened.info.session_id, caller="alice")
            assert value(metrics, "mcp_runner_tool_calls_total", profile="good", tool="echo", outcome="ok") == 1
    finally:
        store.close()
    kinds = [record.kind for record in store.query(AuditQuery())]
    assert {records.SESSION_OPEN, records.REQUEST, records.SESSION_CLOSE} <= set(kinds)
    assert store.verify().intact


def test_a_commit_hook_failing_inside_a_batch_loses_no_record(tmp_path: Path) -> None:
    seen: list[float] = []

    def hook(seconds: float) -> None:
        seen.append(seconds)
        raise OSError("the metrics registry is gone")

    store = AuditStore(tmp_path / "audit.db", on_commit=hook)
    store.open()
    try:
        with store.batch():
            futures = [store.submit(AuditEvent(records.POLICY, "", "alice", {"n": n})) for n in range(5)]
        for future in futures:
            future.result(timeout=10)
        store.submit(AuditEvent(records.POLICY, "", "alice", {"n": 5})).result(timeout=10)
    finally:
        store.close()
    assert len(seen) == 1  # the hook was dropped after its failure; the records were not
    assert [r.data["n"] for r in store.query(AuditQuery())] == list(range(6)) and store.verify().intact


# -- logs ---------------------------------------------------------------------------------------------------------


def line_of(event: AuditEvent, formatter: logging.Formatter) -> str:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(formatter)
    logger = logging.Logger("runner.events.redteam")
    logger.addHandler(handler)
    EventLog(logger)(event)
    return buffer.getvalue()


FORGED = AuditEvent(records.REQUEST, "", "mallory", {
    "method": f"tools/call{LINE_BREAKS}{{\"level\": \"critical\", \"caller\": \"admin\"}}", "outcome": "error",
    "error": {"status": "NOT_FOUND", "message": f"no session{LINE_BREAKS}2026-12-06 ERROR runner: forged"},
})  # fmt: skip


def test_a_text_line_stays_one_line_whatever_breaks_a_caller_sends() -> None:
    (line,) = line_of(FORGED, TextFormatter()).splitlines()
    assert "by caller mallory" in line and "forged" in line


def test_the_warning_level_hides_event_lines_but_not_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved_level, saved = root.level, list(root.handlers)
    try:
        configure(LogConfig(level="warning", format="json"))
        EventLog()(AuditEvent(records.SESSION_OPEN, "ses_1", "alice", {"profile": "good", "outcome": "ok"}))
        logging.getLogger("runner.sessions.manager").warning("open of profile %r refused", "nope")
    finally:
        for handler in list(root.handlers):
            if handler not in saved:
                root.removeHandler(handler)
        root.setLevel(saved_level)
    written = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [line["level"] for line in written] == ["warning"]


@pytest.mark.parametrize(("how", "code", "says"), [
    ("file", 2, "log.level: Input should be 'debug', 'info', 'warning' or 'error'"),
    ("env", 2, "MCP_RUNNER_LOG_FORMAT='yaml': the log format is one of text, json"),
    ("flag", 2, "argument --log-level: invalid choice: 'loud'"),
])  # fmt: skip
def test_bad_log_settings_stop_serve_with_a_clear_message(tmp_path: Path, how: str, code: int, says: str) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("log: {level: loud}\n" if how == "file" else "pool: {}\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_RUNNER_LOG_")}
    env["MCP_RUNNER_STATE_DIR"] = str(tmp_path / "state")
    if how == "env":
        env["MCP_RUNNER_LOG_FORMAT"] = "yaml"
    argv = [sys.executable, "-m", "runner.cli", "serve", "--config", str(settings), "--listen", "127.0.0.1:0"]
    if how == "flag":
        argv += ["--log-level", "loud"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert done.returncode == code, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr


CRASHING = MappingProxyType({
    name: Profile(name=name, image="fake", command=(behaviour,), limits=LIMITS)
    for name, behaviour in (("oom", "oom_on_call"), ("crash", "crash_on_call"))
})  # fmt: skip


async def test_a_call_that_ends_its_sandbox_counts_under_its_profile_and_tool(tmp_path: Path) -> None:
    settings = Settings(profiles=CRASHING, max_sessions=4, reap_interval_s=3600)
    metrics = RunnerMetrics(settings.profiles, "fake")
    policy = tmp_path / "policy.yaml"
    policy.write_text("callers:\n  alice: {profiles: ['*']}\n", encoding="utf-8")
    manager = SessionManager(FakeBackend(lambda spec: FakeAgent(spec.command[0])), settings, PolicyStore(policy),
                             Journal(None, observers=(metrics.observe,)))  # fmt: skip
    await manager.start()
    try:
        for profile in ("oom", "crash"):
            opened = await manager.open(profile, caller="alice")
            with pytest.raises(errors.RunnerError):
                await manager.call_tool(opened.info.session_id, "echo", {"text": "x"}, caller="alice")
    finally:
        await manager.shutdown()
    assert value(metrics, "mcp_runner_tool_calls_total", profile="oom", tool="echo", outcome="resource_exhausted") == 1
    assert value(metrics, "mcp_runner_tool_calls_total", profile="crash", tool="echo",
                 outcome="failed_precondition") == 1  # fmt: skip
