"""ListProfiles and GetSessionLogs: no existence oracle for other tenants' profiles, each one of the caller's calls,
and a stderr tail sanitized off the event loop."""

from __future__ import annotations

import textwrap
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType

import pytest

from runner import errors
from runner.config import Limits, Profile, Settings
from runner.guard.findings import FindingLog
from runner.policy import PolicyStore
from runner.sandbox.base import SandboxSpec
from runner.sandbox.fake import FakeBackend, Handler
from runner.sessions.manager import SessionManager
from tests.unit.fake_agent import FakeAgent

LIMITS = Limits(call_timeout_s=2.0, idle_timeout_s=60, max_lifetime_s=600)
PROFILES = {
    name: Profile(name=name, image="fake", command=("good",), limits=LIMITS) for name in ("alpha-notes", "beta-payroll")
}
SETTINGS = Settings(profiles=MappingProxyType(PROFILES), max_sessions=3, reap_interval_s=3600)
POLICY = """
    callers:
      alice: {profiles: ["alpha-*"]}
      carol: {profiles: ["alpha-*"], rates: {calls_per_s: 0.001, call_burst: 3}}
"""


def by_command(spec: SandboxSpec) -> Handler:
    return FakeAgent(spec.command[0])


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[SessionManager]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(textwrap.dedent(POLICY), encoding="utf-8")
    made = SessionManager(FakeBackend(by_command), SETTINGS, PolicyStore(policy))
    await made.start()
    yield made
    await made.shutdown()


def _refusal(manager: SessionManager, name: str) -> str:
    with pytest.raises(errors.ProfileNotFound) as caught:
        manager.catalog().profiles("alice", name)
    return caught.value.message


async def test_another_tenants_profile_is_refused_as_a_missing_one(manager: SessionManager) -> None:
    hidden, missing = _refusal(manager, "beta-payroll"), _refusal(manager, "beta-payrolx")
    assert hidden == "no profile named 'beta-payroll' (profiles you may open: alpha-notes)"
    assert missing == hidden.replace("beta-payroll", "beta-payrolx")


async def test_listing_profiles_and_reading_logs_spend_the_callers_call_rate(manager: SessionManager) -> None:
    opened = await manager.open("alpha-notes", caller="carol")  # an open spends no call token
    catalog = manager.catalog()
    catalog.profiles("carol")
    await catalog.logs(opened.info.session_id, "carol")
    catalog.profiles("carol", "alpha-notes")
    with pytest.raises(errors.RateLimited, match=r"caller carol exceeded 0.001 calls/s \(burst 3\)"):
        await catalog.logs(opened.info.session_id, "carol")
    with pytest.raises(errors.RateLimited):
        catalog.profiles("carol")
    assert [p.name for p in catalog.profiles("alice")] == ["alpha-notes"]  # another caller's rate is its own


async def test_the_stderr_tail_is_sanitized_off_the_event_loop(
    manager: SessionManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = await manager.open("alpha-notes", caller="alice")
    sanitizer = manager._sessions[opened.info.session_id].sanitizer
    clean, threads = sanitizer.text, []

    def text(value: str, where: str, log: FindingLog) -> str:
        threads.append(threading.current_thread())
        return clean(value, where, log)

    monkeypatch.setattr(sanitizer, "text", text)
    await manager.catalog().logs(opened.info.session_id, "alice")
    assert threads and threading.main_thread() not in threads
