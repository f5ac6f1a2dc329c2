"""An unknown profile's NOT_FOUND names only the profiles the caller may open (another tenant's stay unnamed)."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType

import pytest

from runner import errors
from runner.config import Limits, Profile, Settings
from runner.policy import PolicyStore
from runner.sandbox.base import SandboxSpec
from runner.sandbox.fake import FakeBackend, Handler
from runner.sessions.manager import SessionManager
from tests.unit.fake_agent import FakeAgent

LIMITS = Limits(call_timeout_s=2.0, idle_timeout_s=60, max_lifetime_s=600)
PROFILES = {
    name: Profile(name=name, image="fake", command=("good",), limits=LIMITS)
    for name in ("alpha-notes", "alpha-search", "beta-payroll")
}
SETTINGS = Settings(profiles=MappingProxyType(PROFILES), max_sessions=3, reap_interval_s=3600)
POLICY = """
    callers:
      alice: {profiles: ["alpha-*"]}
      bob: {profiles: [beta-payroll]}
      nobody: {profiles: []}
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


@pytest.mark.parametrize(("caller", "openable"), [
    ("alice", "alpha-notes, alpha-search"), ("bob", "beta-payroll"), ("nobody", "none"),
])  # fmt: skip
async def test_open_names_only_the_callers_profiles(manager: SessionManager, caller: str, openable: str) -> None:
    with pytest.raises(errors.ProfileNotFound) as caught:
        await manager.open("gamma", caller=caller)
    assert caught.value.message == f"no profile named 'gamma' (profiles you may open: {openable})"


async def test_listing_one_unknown_profile_names_only_the_callers(manager: SessionManager) -> None:
    with pytest.raises(errors.ProfileNotFound) as caught:
        manager.catalog().profiles("alice", "beta-payrol")
    assert "beta" not in caught.value.message.removeprefix("no profile named 'beta-payrol'")
    assert caught.value.message.endswith("(profiles you may open: alpha-notes, alpha-search)")


async def test_another_tenants_profile_is_still_refused_as_before(manager: SessionManager) -> None:
    with pytest.raises(errors.PermissionDenied, match="may not open profile 'beta-payroll'"):
        await manager.open("beta-payroll", caller="alice")
