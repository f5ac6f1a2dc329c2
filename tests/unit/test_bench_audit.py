"""The audit bench: the store part runs for real on a small SQLite file; the service part and the report on fakes.

Structure only (counts, commits, alternation, readings), never wall-clock values.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import yaml

from runner.audit.records import canonical_json
from runner.bench.audit import (
    AuditCalls,
    StoreFigures,
    StoreSide,
    Throughput,
    audit_report,
    measure_audit_calls,
    measure_store,
    sample_event,
)
from runner.bench.common import Figures
from runner.bench.service import settings_file
from runner.client import AsyncRunnerClient
from runner.settings_file import load_settings


def test_the_store_part_runs_both_stores_and_group_commit_takes_fewer_commits(tmp_path: Path) -> None:
    result = asyncio.run(measure_store(tmp_path, sequential=4, concurrent=96, appenders=8))
    assert result.appenders == 8
    for side in (result.one_commit, result.group):
        assert side.latency.samples == 4
        assert side.burst.records == 96
    assert result.one_commit.burst.commits == 96
    assert 1 <= result.group.burst.commits < 96
    assert sorted(path.name for path in tmp_path.glob("*.sqlite3")) == ["group.sqlite3", "one-commit.sqlite3"]


def test_the_sample_event_is_a_storable_request_record() -> None:
    event = sample_event()
    assert event.kind == "request"
    assert 200 < len(canonical_json(dict(event.data))) < 1000
    assert sample_event().id != event.id


class _FakeClient:
    """Records every call in a log shared by both fake services."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def open_session(self, profile: str) -> SimpleNamespace:
        self.log.append(f"{self.name} open {profile}")
        return SimpleNamespace(session_id=f"{self.name}-session")

    async def call_tool(self, session_id: str, tool: str, arguments: dict[str, object]) -> None:
        self.log.append(f"{self.name} call {session_id}")

    async def close_session(self, session_id: str) -> None:
        self.log.append(f"{self.name} close {session_id}")


def test_service_calls_alternate_one_by_one_after_one_untimed_call_each() -> None:
    log: list[str] = []
    clients = [cast(AsyncRunnerClient, _FakeClient(name, log)) for name in ("off", "on", "sync")]
    result = asyncio.run(measure_audit_calls(clients, "time", "get_current_time", {}, 3))
    assert [figures.samples for figures in result] == [3, 3, 3]
    assert log == [
        "off open time", "off call off-session", "on open time", "on call on-session",
        "sync open time", "sync call sync-session",
        "off call off-session", "on call on-session", "sync call sync-session",
        "on call on-session", "sync call sync-session", "off call off-session",
        "sync call sync-session", "off call off-session", "on call on-session",
        "off close off-session", "on close on-session", "sync close sync-session",
    ]  # fmt: skip


def test_sessions_opened_are_closed_when_a_call_fails() -> None:
    log: list[str] = []

    class Failing(_FakeClient):
        async def call_tool(self, session_id: str, tool: str, arguments: dict[str, object]) -> None:
            raise RuntimeError("sandbox gone")

    clients = [cast(AsyncRunnerClient, client) for client in (_FakeClient("off", log), Failing("on", log))]
    with pytest.raises(RuntimeError):
        asyncio.run(measure_audit_calls(clients, "time", "t", {}, 2))
    assert log[-2:] == ["off close off-session", "on close on-session"]


def test_an_audit_variant_merges_into_the_settings_beside_them_and_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MCP_RUNNER_AUDIT_DB", raising=False)
    (tmp_path / "policy.yaml").write_text("{}\n", encoding="utf-8")
    source = tmp_path / "settings.yaml"
    source.write_text(yaml.safe_dump({"policy": "policy.yaml", "max_sessions": 7, "audit": {"path": "a.db"}}),
                      encoding="utf-8")
    with settings_file(str(source), audit={"enabled": False, "fsync_intents": True}) as quiet:
        copy = Path(quiet)
        assert copy.parent == tmp_path and copy.name.startswith(".settings-bench-")
        assert yaml.safe_load(copy.read_text(encoding="utf-8")) == {
            "policy": "policy.yaml", "max_sessions": 7,
            "audit": {"path": "a.db", "enabled": False, "fsync_intents": True},
        }  # fmt: skip
        settings, original = load_settings(quiet), load_settings(source)
        assert not settings.audit.enabled and original.audit.enabled
        assert settings.audit.fsync_intents and not original.audit.fsync_intents
        assert settings.policy == original.policy == tmp_path / "policy.yaml"
        assert settings.audit.path == original.audit.path
    assert not copy.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["policy.yaml", "settings.yaml"]


def test_a_toml_settings_file_is_copied_as_yaml(tmp_path: Path) -> None:
    source = tmp_path / "settings.toml"
    source.write_text('max_sessions = 3\n[audit]\nretention = "30d"\n', encoding="utf-8")
    with settings_file(str(source), audit={"enabled": False}) as quiet:
        assert quiet.endswith(".yaml")
        assert yaml.safe_load(Path(quiet).read_text(encoding="utf-8")) == {
            "max_sessions": 3, "audit": {"retention": "30d", "enabled": False},
        }  # fmt: skip


def test_the_report_prints_both_tables_baseline_first_with_readings() -> None:
    one = StoreSide(Figures(200, 4.0, 6.0), Throughput(records=2000, seconds=8.0, commits=2000))
    group = StoreSide(Figures(200, 4.5, 6.0), Throughput(records=2000, seconds=1.0, commits=125))
    calls = AuditCalls(off=Figures(20, 10.0, 12.0), on=Figures(20, 11.5, 13.0), fsync_intents=Figures(20, 12.0, 15.0))
    lines: list[str] = []
    audit_report(lines.append, "/var/tmp", StoreFigures(one_commit=one, group=group, appenders=32), calls)
    text = "\n".join(lines)
    assert "temporary files under /var/tmp" in text
    store_header = next(line for line in lines if "one commit per record" in line)
    assert store_header.index("one commit per record") < store_header.index("group commit")
    burst = next(line for line in lines if line.startswith("durable append, 32 concurrent appenders"))
    assert "250 records/s" in burst and "2000 records/s" in burst and "125 commits" in burst
    assert burst.index("250 records/s") < burst.index("2000 records/s")
    assert "appends 8.0x the records/s in 125 commits instead of 2000" in text
    assert "lone append's p50 by +0.5 ms (+12 %)" in text
    calls_header = next(line for line in lines if "audit off" in line)
    assert calls_header.index("audit off") < calls_header.index("audit on")
    assert "the audit cost per call is +1.5 ms (+15 %) at p50 (+1.0 ms (+8 %) at p95)" in text
    sync_header = next(line for line in lines if "fsync_intents: true" in line)
    assert sync_header.index("fsync_intents: false") < sync_header.index("fsync_intents: true")
    assert "syncing each intent on its own costs +0.5 ms (+4 %) per call at p50 (+2.0 ms (+15 %) at p95)" in text


def test_throughput_of_nothing_measured_is_not_a_number() -> None:
    assert Throughput(records=0, seconds=0.0, commits=0).cell().strip().startswith("nan records/s")
