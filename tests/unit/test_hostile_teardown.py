"""A sandbox whose teardown hangs (Docker slow to stop or remove it) holds back no other session's reaping."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from runner.audit.store import AuditStore
from runner.config import Limits, Profile, Settings
from runner.policy import PolicyStore
from runner.sandbox.base import SandboxSpec
from runner.sandbox.fake import FakeBackend, FakeSandbox, Handler
from runner.sessions.journal import Journal
from runner.sessions.manager import SessionManager
from runner.sessions.models import SessionState
from tests.unit.fake_agent import FakeAgent

QUICK = Limits(memory_bytes=256 * 1024**2, call_timeout_s=5.0, idle_timeout_s=0.0, max_lifetime_s=600)


async def _wait_for(destroyed: list[str], count: int) -> None:
    async with asyncio.timeout(20):  # a guard against hanging, not a measure of time
        while len(destroyed) < count:
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("rounds", ["one round", "the reaper's rounds"])
async def test_a_hung_teardown_does_not_hold_back_reaping_other_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rounds: str
) -> None:
    release = asyncio.Event()
    destroyed: list[str] = []
    real = FakeSandbox.destroy

    async def destroy(sandbox: FakeSandbox) -> None:
        if not destroyed:  # the first sandbox torn down hangs till released
            destroyed.append("hung")
            await release.wait()
        destroyed.append(sandbox.id)
        await real(sandbox)

    monkeypatch.setattr(FakeSandbox, "destroy", destroy)
    store = AuditStore(tmp_path / "audit.db")
    store.open()

    def factory(spec: SandboxSpec) -> Handler:
        return FakeAgent(spec.command[0])

    policy = tmp_path / "policy.yaml"
    policy.write_text(textwrap.dedent("callers:\n  alice:\n    profiles: ['*']\n"), encoding="utf-8")
    profiles = {"good": Profile(name="good", image="fake", command=("good",), limits=QUICK)}
    interval = 3600 if rounds == "one round" else 0.01
    manager = SessionManager(
        FakeBackend(factory), Settings(profiles=profiles, reap_interval_s=interval), PolicyStore(policy),
        Journal(store),
    )  # fmt: skip
    await manager.start()
    try:
        if rounds == "one round":
            ids = [(await manager.open("good", caller="alice")).info.session_id for _ in range(3)]
            reaping = asyncio.ensure_future(manager.reap())
            await _wait_for(destroyed, 3)  # the two others are torn down while the first hangs
            assert destroyed[0] == "hung" and not reaping.done()
            assert [manager.get(i, caller="alice").state for i in ids] == [SessionState.CLOSED] * 3
            release.set()
            await reaping
            assert len(destroyed) == 4
        else:
            first = (await manager.open("good", caller="alice")).info.session_id
            await _wait_for(destroyed, 1)  # reaped, its teardown hangs
            later = (await manager.open("good", caller="alice")).info.session_id
            await _wait_for(destroyed, 2)  # a later round reaps the next idle session all the same
            assert destroyed[0] == "hung" and destroyed[1] == f"fake-{later}"
            assert manager.get(first, caller="alice").state is SessionState.CLOSED
    finally:
        release.set()
        await manager.shutdown()
        store.close()
