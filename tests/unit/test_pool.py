"""The warm pool over FakeBackend: claims, refills, drains, deaths, backoff, and records as for a cold start."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from runner import errors
from runner.audit import records
from runner.audit.records import AuditQuery, AuditRecord
from runner.audit.store import AuditStore
from runner.config import EgressRule, Limits, NetworkPolicy, Profile, SecretSource, Settings
from runner.sandbox.base import EgressCallback, EgressDecision, SandboxSpec
from runner.sandbox.fake import FakeBackend, FakeIO, FakeSandbox, Handler
from runner.sessions.admission import BootSlots
from runner.sessions.journal import Journal
from runner.sessions.manager import SessionManager
from runner.sessions.models import LimitsRequest, SessionState
from runner.sessions.pool import BACKOFF_MAX_S, WARM_MAX_AGE_S, WarmPool, backoff_s
from tests.unit.fake_agent import FakeAgent, frame

LIMITS = Limits(memory_bytes=256 * 1024**2, call_timeout_s=2.0, idle_timeout_s=60, max_lifetime_s=600)
SECRET_ENV = "RUNNER_TEST_POOL_TOKEN"
NETWORK = NetworkPolicy(egress=(EgressRule(host="api.example.com", port=443),))


def _profile(name: str, behaviour: str = "good", **kw: Any) -> Profile:
    return Profile(name=name, image="fake", command=(behaviour,), limits=LIMITS, **kw)


PROFILES = {
    "good": _profile("good"),
    "keyed": _profile("keyed", secrets=MappingProxyType({"TOKEN": SecretSource(env=SECRET_ENV)})),
    "networked": _profile("networked", "egress_at_start", network=NETWORK),
    "broken": _profile("broken", "fatal_at_start"),
}


def settings(**pool: int) -> Settings:
    return Settings(
        profiles=MappingProxyType(PROFILES), pool=MappingProxyType(pool), max_sessions=20, reap_interval_s=3600,
        max_concurrent_boots=4,
    )


class EgressAtStart(FakeAgent):
    """Its proxy decides something while the sandbox boots, before anyone could claim it."""

    async def __call__(self, io: FakeIO) -> int:
        io.egress(EgressDecision(0.0, "CONNECT", "api.example.com", 443, "203.0.113.7", "api.example.com:443",
                                 True, "allowed", "allowed by rule"))
        return await super().__call__(io)


class DiesAfterListing(FakeAgent):
    """Boots, lists its tools, then exits while it waits in the pool."""

    async def _answer(self, io: FakeIO, msg: dict[str, Any]) -> None:
        await super()._answer(io, msg)
        if msg["method"] == "tools/list":
            await self._die(io, 1)


@dataclass
class Backend(FakeBackend):
    """FakeBackend that keeps every sandbox it started, with its spec and agent."""

    started: list[tuple[SandboxSpec, FakeAgent, FakeSandbox]] = field(default_factory=list)
    deaths: dict[str, int] = field(default_factory=dict)
    """Profile command -> how many of its next sandboxes die right after listing their tools."""
    _agents: dict[str, FakeAgent] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self._agent_for)

    def _agent_for(self, spec: SandboxSpec) -> Handler:
        behaviour = spec.command[0]
        agent: FakeAgent
        if self.deaths.get(behaviour, 0):
            self.deaths[behaviour] -= 1
            agent = DiesAfterListing(behaviour)
        elif behaviour == "egress_at_start":
            agent = EgressAtStart("good")
        else:
            agent = FakeAgent(behaviour)
        self._agents[spec.session_id] = agent
        return agent

    async def start(self, spec: SandboxSpec, on_egress: EgressCallback | None = None) -> FakeSandbox:
        sandbox = await super().start(spec, on_egress)
        self.started.append((spec, self._agents[spec.session_id], sandbox))
        return sandbox

    def of(self, session_id: str) -> tuple[SandboxSpec, FakeAgent, FakeSandbox]:
        return next(s for s in self.started if s[0].session_id == session_id)


@dataclass
class Env:
    manager: SessionManager
    backend: Backend
    store: AuditStore

    def records(self, kind: str, session_id: str = "") -> list[AuditRecord]:
        found = self.store.query(AuditQuery())
        return [r for r in found if r.kind == kind and (not session_id or r.session_id == session_id)]


@pytest.fixture
async def make_env(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[Env] = []

    async def make(**pool: int) -> Env:
        store = AuditStore(tmp_path / f"audit-{len(made)}.db")
        store.open()
        backend = Backend()
        manager = SessionManager(backend, settings(**pool), journal=Journal(store))
        await manager.start()
        made.append(Env(manager, backend, store))
        return made[-1]

    yield make
    for env in made:
        await env.manager.shutdown()
        env.store.close()


async def test_a_claim_gets_a_booted_never_used_sandbox_with_its_own_id(make_env: Callable[..., Any]) -> None:
    env = await make_env(good=1)
    await env.manager.pool.filled("good")
    assert env.manager.pool.status() == {"good": (1, 1)}
    pooled_spec, agent, _ = env.backend.started[0]
    assert [m["method"] for m in agent.seen] == ["tools/list"]  # listed ahead, nothing else
    assert env.manager.list_sessions(caller="alice") == []  # a pooled sandbox is no session
    opened = await env.manager.open("good", caller="alice")
    assert opened.info.session_id == pooled_spec.session_id  # its name and labels were the session's all along
    assert [t.name for t in opened.tools] == ["echo", "sleep", "say"]
    outcome = await env.manager.call_tool(opened.info.session_id, "echo", {"text": "hi"}, caller="alice")
    assert outcome.result.structured_content == {"text": "hi"}
    [record] = env.records(records.SESSION_OPEN, opened.info.session_id)
    assert record.data["start"] == "warm" and record.data["outcome"] == "ok"
    assert [s.session_id for s in env.manager.list_sessions(caller="alice")] == [opened.info.session_id]


async def test_the_pool_refills_and_a_claimed_sandbox_is_never_handed_out_again(make_env: Callable[..., Any]) -> None:
    env = await make_env(good=1)
    await env.manager.pool.filled("good")
    first = await env.manager.open("good", caller="alice")
    await env.manager.pool.filled("good")
    assert len(env.backend.started) == 2
    second = await env.manager.open("good", caller="bob")
    assert second.info.session_id != first.info.session_id
    await env.manager.close(first.info.session_id, caller="alice")
    _, _, sandbox = env.backend.of(first.info.session_id)
    assert sandbox.destroyed  # destroyed with its session, never returned to the pool
    await env.manager.pool.filled("good")
    assert first.info.session_id not in {s.session_id for s, _, fake in env.backend.started if not fake.destroyed}


async def test_concurrent_claims_never_share_a_sandbox(make_env: Callable[..., Any]) -> None:
    env = await make_env(good=3)
    await env.manager.pool.filled("good")
    opened = await asyncio.gather(*(env.manager.open("good", caller=f"c{i}") for i in range(6)))
    ids = [o.info.session_id for o in opened]
    assert len(set(ids)) == 6
    starts = [env.records(records.SESSION_OPEN, i)[0].data["start"] for i in ids]
    assert starts.count("warm") == 3 and starts.count("cold") == 3
    sandboxes = [env.backend.of(i)[2] for i in ids]
    assert len({id(s) for s in sandboxes}) == 6


async def test_records_of_a_warm_and_a_cold_open_differ_only_in_start(make_env: Callable[..., Any]) -> None:
    warm_env = await make_env(good=1)
    cold_env = await make_env()
    await warm_env.manager.pool.filled("good")
    warm = await warm_env.manager.open("good", caller="alice", labels={"team": "a"})
    cold = await cold_env.manager.open("good", caller="alice", labels={"team": "a"})
    warm_open = warm_env.records(records.SESSION_OPEN, warm.info.session_id)[0].data
    cold_open = cold_env.records(records.SESSION_OPEN, cold.info.session_id)[0].data
    assert (warm_open["start"], cold_open["start"]) == ("warm", "cold")
    timed = ("start", "duration_ms")  # how it started, and how long that took
    assert {k: v for k, v in warm_open.items() if k not in timed} == {
        k: v for k, v in cold_open.items() if k not in timed}
    warm_policy = warm_env.records(records.POLICY, warm.info.session_id)
    cold_policy = cold_env.records(records.POLICY, cold.info.session_id)
    assert [r.data for r in warm_policy] == [r.data for r in cold_policy] != []
    assert (warm.server, warm.tools, warm.findings) == (cold.server, cold.tools, cold.findings)
    warm_spec = warm_env.backend.of(warm.info.session_id)[0]
    cold_spec = cold_env.backend.of(cold.info.session_id)[0]
    # The same sandbox, but for the lifetime backstop: a warm one's also covers its wait for a claim.
    assert replace(warm_spec, session_id="", lifetime_s=0) == replace(cold_spec, session_id="", lifetime_s=0)
    assert warm_spec.lifetime_s == cold_spec.lifetime_s + WARM_MAX_AGE_S + settings().reap_interval_s


async def test_other_limits_than_the_pools_start_cold(
    make_env: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    env = await make_env(good=1)
    await env.manager.pool.filled("good")
    with caplog.at_level(logging.INFO, logger="runner.sessions.pool"):
        opened = await env.manager.open("good", caller="alice", limits=LimitsRequest(memory_bytes=128 * 1024**2))
    assert env.records(records.SESSION_OPEN, opened.info.session_id)[0].data["start"] == "cold"
    assert env.backend.of(opened.info.session_id)[0].limits.memory_bytes == 128 * 1024**2
    assert env.manager.pool.status() == {"good": (1, 1)}  # still there for an open with the pool's limits
    assert any("starts cold" in r.message and "memory_bytes" in r.message for r in caplog.records)


async def test_a_replay_with_its_own_image_starts_cold(make_env: Callable[..., Any]) -> None:
    env = await make_env(good=1)
    await env.manager.pool.filled("good")
    opened = await env.manager.open("good", caller="alice", image="sha256:older")
    assert env.records(records.SESSION_OPEN, opened.info.session_id)[0].data["start"] == "cold"
    assert env.manager.pool.status() == {"good": (1, 1)}


async def test_a_changed_secret_drains_the_pool_and_the_claim_starts_cold(
    make_env: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "first-token-value")
    env = await make_env(keyed=1)
    await env.manager.pool.filled("keyed")
    old_spec, _, old_sandbox = env.backend.started[0]
    monkeypatch.setenv(SECRET_ENV, "second-token-value")
    opened = await env.manager.open("keyed", caller="alice")
    assert env.records(records.SESSION_OPEN, opened.info.session_id)[0].data["start"] == "cold"
    assert env.backend.of(opened.info.session_id)[0].env["TOKEN"] == "second-token-value"
    await env.manager.pool.filled("keyed")
    assert old_sandbox.destroyed
    fresh = [spec for spec, _, sandbox in env.backend.started if not sandbox.destroyed and spec is not old_spec]
    assert {spec.env["TOKEN"] for spec in fresh} == {"second-token-value"}
    warm = await env.manager.open("keyed", caller="alice")
    assert env.records(records.SESSION_OPEN, warm.info.session_id)[0].data["start"] == "warm"


async def test_the_reaper_drains_a_pool_whose_secret_changed(
    make_env: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "first-token-value")
    env = await make_env(keyed=1)
    await env.manager.pool.filled("keyed")
    _, _, old_sandbox = env.backend.started[0]
    monkeypatch.setenv(SECRET_ENV, "second-token-value")
    await env.manager.reap()
    await env.manager.pool.filled("keyed")
    assert env.manager.pool.status() == {"keyed": (1, 1)}
    assert env.backend.started[-1][0].env["TOKEN"] == "second-token-value"
    await asyncio.sleep(0)
    assert old_sandbox.destroyed


async def test_a_changed_profile_drains_the_pool_and_refills_it_with_the_new_one() -> None:
    backend = Backend()
    slots = BootSlots(2)
    pool = WarmPool(backend, settings(good=2), slots)
    pool.start()
    try:
        await pool.filled("good")
        old = [sandbox for _, _, sandbox in backend.started]
        changed = replace(PROFILES["good"], env=MappingProxyType({"MODE": "new"}))
        assert pool.claim(changed, changed.limits, {}, None) is None  # booted for the old profile: cold
        await pool.filled("good")
        await asyncio.sleep(0)
        assert all(sandbox.destroyed for sandbox in old)
        ready = [spec for spec, _, sandbox in backend.started if not sandbox.destroyed]
        assert [spec.env.get("MODE") for spec in ready] == ["new", "new"]
        claimed = pool.claim(changed, changed.limits, {}, None)
        assert claimed is not None and claimed.session.profile == changed
    finally:
        await pool.shutdown()


async def test_warm_sandboxes_past_their_age_are_replaced() -> None:
    backend = Backend()
    pool = WarmPool(backend, settings(good=2), BootSlots(2))
    pool.start()
    try:
        await pool.filled("good")
        old = [sandbox for _, _, sandbox in backend.started]
        pool.check_sources()  # young: kept
        assert not any(sandbox.destroyed for sandbox in old)
        for warm in pool._pools["good"].ready:
            warm.ready_at -= WARM_MAX_AGE_S + 1
        pool.check_sources()
        await pool.filled("good")
        await asyncio.sleep(0)
        assert all(sandbox.destroyed for sandbox in old)
        assert len([s for _, _, s in backend.started if not s.destroyed]) == 2
    finally:
        await pool.shutdown()


async def test_a_pooled_sandbox_that_dies_while_waiting_is_replaced(
    make_env: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    env = await make_env()
    env.backend.deaths["good"] = 1
    pool = WarmPool(env.backend, settings(good=1), BootSlots(1), backoff=lambda failures: 0.0)
    with caplog.at_level(logging.WARNING, logger="runner.sessions.pool"):
        pool.start()
        try:
            while len(env.backend.started) < 2:
                await asyncio.sleep(0.01)
            await pool.filled("good")
            first, second = env.backend.started[0][2], env.backend.started[1][2]
            await asyncio.sleep(0)
            assert first.destroyed and not second.destroyed
            warm = pool.claim(PROFILES["good"], LIMITS, {}, None)
            assert warm is not None and warm.session.handle is second
        finally:
            await pool.shutdown()
    assert any("died after waiting" in r.message for r in caplog.records)


async def test_a_broken_profile_backs_off_instead_of_booting_in_a_loop(caplog: pytest.LogCaptureFixture) -> None:
    backend = Backend()
    asked: list[int] = []
    third = asyncio.Event()

    def backoff(failures: int) -> float:
        asked.append(failures)
        if failures >= 3:
            third.set()
            return 3600.0  # the test ends long before: no boot may follow while it waits
        return 0.0

    pool = WarmPool(backend, settings(broken=1), BootSlots(2), backoff=backoff)
    with caplog.at_level(logging.WARNING, logger="runner.sessions.pool"):
        pool.start()
        try:
            await asyncio.wait_for(third.wait(), 10)
            for _ in range(20):
                await asyncio.sleep(0)
            assert len(backend.started) == 3
            assert all(sandbox.destroyed for _, _, sandbox in backend.started)
            assert pool.status() == {"broken": (0, 1)}
        finally:
            await pool.shutdown()
    assert asked == [1, 2, 3]
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any("failed to boot (3 in a row)" in w and "status 3" in w for w in warnings), warnings


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_s(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_s(40) == BACKOFF_MAX_S == backoff_s(1000)


async def test_egress_decided_before_the_claim_is_recorded_at_once_under_the_sandbox_without_a_caller(
    make_env: Callable[..., Any]
) -> None:
    env = await make_env(networked=1)
    await env.manager.pool.filled("networked")
    opened = await env.manager.open("networked", caller="alice")
    assert env.records(records.SESSION_OPEN, opened.info.session_id)[0].data["start"] == "warm"
    await asyncio.sleep(0.05)  # the egress record is queued, not awaited
    [decision] = env.records(records.EGRESS, opened.info.session_id)
    # Recorded when it happened, before anyone claimed the sandbox: no caller then, and nothing held back or dropped.
    assert decision.caller == "" and decision.data["host"] == "api.example.com"
    info = env.manager.get(opened.info.session_id, caller="alice")
    assert [d.host for d in info.egress] == ["api.example.com"]


async def test_shutdown_empties_the_pools(make_env: Callable[..., Any]) -> None:
    env = await make_env(good=2)
    await env.manager.pool.filled("good")
    await env.manager.shutdown()
    assert len(env.backend.started) == 2
    assert all(sandbox.destroyed for _, _, sandbox in env.backend.started)
    assert env.manager.pool.status() == {}


async def test_the_agent_gets_the_boot_budget_as_its_start_up_timeout(make_env: Callable[..., Any]) -> None:
    env = await make_env(good=1)
    await env.manager.pool.filled("good")
    pooled = env.backend.started[0][0]
    assert float(pooled.env["MCP_AGENT_INIT_TIMEOUT"]) == settings().open_timeout_s
    cold = await env.manager.open("good", caller="alice", timeout=7.5, limits=LimitsRequest(cpus=0.5))
    budget = float(env.backend.of(cold.info.session_id)[0].env["MCP_AGENT_INIT_TIMEOUT"])
    assert 0 < budget <= 7.5


async def test_a_claimed_session_is_a_session_like_any_other(make_env: Callable[..., Any]) -> None:
    env = await make_env(good=1)
    await env.manager.pool.filled("good")
    opened = await env.manager.open("good", caller="alice")
    info = await env.manager.close(opened.info.session_id, caller="alice")
    assert info.state is SessionState.CLOSED and info.caller == "alice"
    [closed] = env.records(records.SESSION_CLOSE, opened.info.session_id)
    assert closed.caller == "alice"


@dataclass
class HeldStart(Backend):
    """Backend whose ``start`` waits at ``gate`` (when set) before the sandbox exists: a slow ``docker start``."""

    gate: asyncio.Event | None = None
    waiting: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, spec: SandboxSpec, on_egress: EgressCallback | None = None) -> FakeSandbox:
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        return await super().start(spec, on_egress)


async def test_a_cold_open_under_way_at_shutdown_leaves_no_sandbox_and_no_ready_session(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.db")
    store.open()
    backend = HeldStart()
    manager = SessionManager(backend, settings(), journal=Journal(store))
    await manager.start()
    backend.gate = asyncio.Event()
    opening = asyncio.create_task(manager.open("good", caller="alice"))
    await backend.waiting.wait()  # its session is STARTING, its sandbox not yet made
    closing = asyncio.create_task(manager.shutdown())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not closing.done()  # it waits for the open under way, which would otherwise boot after it
    backend.gate.set()
    with pytest.raises(errors.Unavailable, match="the service shut down"):
        await opening
    await closing
    [(_, _, sandbox)] = backend.started
    assert sandbox.destroyed
    [session] = manager._sessions.values()
    assert session.state is SessionState.CLOSED
    [record] = [r for r in store.query(AuditQuery()) if r.kind == records.SESSION_OPEN]
    assert record.data["outcome"] == "error"
    store.close()


async def test_a_warm_hand_over_cut_by_shutdown_is_not_reported_open(make_env: Callable[..., Any]) -> None:
    env = await make_env(good=1)
    await env.manager.pool.filled("good")
    opening = asyncio.create_task(env.manager.open("good", caller="alice"))
    await asyncio.sleep(0)  # claimed; its hand-over under way
    await env.manager.shutdown()
    with pytest.raises(errors.Unavailable, match="the service shut down"):
        await opening
    assert all(sandbox.destroyed for _, _, sandbox in env.backend.started)
    assert all(s.state is SessionState.CLOSED for s in env.manager._sessions.values())
    [record] = env.records(records.SESSION_OPEN)
    assert record.data["start"] == "warm"
    # Cut before its open record ("error"), or while it was written ("ok", then closed on record): never left open.
    closes = env.records(records.SESSION_CLOSE, record.session_id)
    assert (record.data["outcome"], len(closes)) in {("error", 0), ("ok", 1)}


async def test_an_open_after_shutdown_is_refused_and_boots_nothing(make_env: Callable[..., Any]) -> None:
    env = await make_env(good=1)
    await env.manager.pool.filled("good")
    await env.manager.shutdown()
    with pytest.raises(errors.Unavailable, match="shutting down"):
        await env.manager.open("good", caller="alice")
    assert len(env.backend.started) == 1 and all(sandbox.destroyed for _, _, sandbox in env.backend.started)


class TalksWhileWaiting(FakeAgent):
    """Boots and lists its tools, then writes to the host while it waits in the pool: an answer nobody asked for,
    a line past the cap, or a second ready."""

    async def _answer(self, io: FakeIO, msg: dict[str, Any]) -> None:
        await super()._answer(io, msg)
        if msg["method"] != "tools/list":
            return
        if self.behaviour == "unsolicited":
            await io.write(frame(type="result", id=12345, result={"content": []}))
        elif self.behaviour == "huge":
            for _ in range(8):
                await io.write(b"x" * 1024**2)
        else:
            await io.write(frame(type="ready", initialize={}))


@pytest.mark.parametrize("behaviour", ["unsolicited", "huge", "ready_again"])
async def test_a_pooled_server_that_writes_while_waiting_dies_is_never_handed_out_and_backs_off(
    behaviour: str,
) -> None:
    backend = Backend()
    backend._handler_for = lambda spec: backend._agents.setdefault(spec.session_id, TalksWhileWaiting(behaviour))
    failures: list[int] = []
    third = asyncio.Event()

    def backoff(n: int) -> float:
        failures.append(n)
        if n >= 3:
            third.set()
            return 3600.0
        return 0.0

    pool = WarmPool(backend, settings(good=1), BootSlots(2), backoff=backoff)
    pool.start()
    try:
        await asyncio.wait_for(third.wait(), 30)
        assert failures == [1, 2, 3]  # each death counted in a row: the pool backs off instead of booting in a loop
        assert pool.claim(PROFILES["good"], LIMITS, {}, None) is None
    finally:
        await pool.shutdown()
    assert len(backend.started) == 3 and all(sandbox.destroyed for _, _, sandbox in backend.started)


async def test_a_secret_that_can_no_longer_be_read_is_never_served_from_the_pool(
    make_env: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(SECRET_ENV, "first-token-value")
    env = await make_env(keyed=1)
    await env.manager.pool.filled("keyed")
    _, _, pooled = env.backend.started[0]
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(errors.FailedPrecondition, match=SECRET_ENV):
        await env.manager.open("keyed", caller="alice")  # refused before any claim: the warm one is not handed out
    assert env.manager.pool.status() == {"keyed": (1, 1)}
    with caplog.at_level(logging.WARNING, logger="runner.sessions.pool"):
        await env.manager.reap()  # the reaper drains it: a revoked secret must not wait in a running sandbox
    for _ in range(20):
        await asyncio.sleep(0)
    assert pooled.destroyed
    assert env.manager.pool.status() == {"keyed": (0, 1)}
    assert any("draining its warm pool" in r.message for r in caplog.records)
