"""AuditService and Replayer over a SessionManager on FakeBackend and a real AuditStore: who reads what, and replay."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import pytest

from runner import errors
from runner.audit import records
from runner.audit.records import (
    AuditQuery,
    AuditRecord,
    ReplayVerdict,
    canonical_json,
    chain_hash,
)
from runner.audit.replay import Replayer
from runner.audit.service import AuditService
from runner.audit.store import AuditStore
from runner.config import Limits, Profile, Settings
from runner.policy import PolicyStore
from runner.sandbox.base import SandboxSpec
from runner.sandbox.fake import FakeBackend, FakeIO, Handler
from runner.sessions.journal import Journal
from runner.sessions.manager import SessionManager
from runner.sessions.models import SessionState
from tests.unit.fake_agent import FakeAgent, frame

T = TypeVar("T")

LIMITS = Limits(memory_bytes=256 * 1024**2, call_timeout_s=2.0, idle_timeout_s=60, max_lifetime_s=600)
IMAGE = "mcp/fake:1"
IMAGE_ID = f"sha256:fake-{IMAGE}"
PROFILES = {
    "good": Profile(name="good", image=IMAGE, command=("good",), limits=LIMITS),
    "broken": Profile(name="broken", image=IMAGE, command=("fatal_at_start",), limits=LIMITS),
}
SETTINGS = Settings(profiles=MappingProxyType(PROFILES), max_sessions=20, reap_interval_s=3600)

POLICY = """
    approvals: {timeout_s: 30}
    anomaly: {max_events: 100, window_s: 60}
    callers:
      alice:
        profiles: ["*"]
        profile_tools:
          good: {deny: ["sleep"]}
      bob:
        profiles: ["*"]
      audrey:
        roles: [auditor]
        profiles: ["*"]
      root:
        roles: [admin]
        profiles: ["*"]
      carol:
        roles: [approver]
        profiles: []
"""

NOW = "now"
"""The argument that makes DriftingAgent's ``say`` answer with the number of its sandbox start."""


class DriftingAgent(FakeAgent):
    """FakeAgent whose ``say`` of "now" answers which sandbox start this is: different on every replay."""

    def __init__(self, behaviour: str, start: int) -> None:
        super().__init__(behaviour)
        self.start = start

    async def _call(self, io: FakeIO, rid: int, params: dict[str, Any]) -> None:
        if params["name"] == "say" and params["arguments"].get("text") == NOW:
            result = {"content": [{"type": "text", "text": f"start {self.start}"}]}
            await io.write(frame(type="result", id=rid, result=result))
            return
        await super()._call(io, rid, params)


def write_policy(path: Path, text: str = POLICY) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@dataclass
class Env:
    manager: SessionManager
    store: AuditStore
    policy: PolicyStore
    policy_path: Path
    audit: AuditService
    specs: list[SandboxSpec]

    def records(self, **query: Any) -> list[AuditRecord]:
        return self.store.query(AuditQuery(**query))

    def spec_of(self, session_id: str) -> SandboxSpec:
        [spec] = [s for s in self.specs if s.session_id == session_id]
        return spec


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = AuditStore(tmp_path / "audit.db")
    store.open()
    specs: list[SandboxSpec] = []

    def handler_for(spec: SandboxSpec) -> Handler:
        specs.append(spec)
        return DriftingAgent(spec.command[0], start=len(specs))

    policy_path = write_policy(tmp_path / "policy.yaml")
    policy = PolicyStore(policy_path)
    manager = SessionManager(FakeBackend(handler_for), SETTINGS, policy, Journal(store))
    await manager.start()
    audit = AuditService(store, policy, Replayer(manager, store))
    try:
        yield Env(manager, store, policy, policy_path, audit, specs)
    finally:
        await manager.shutdown()
        store.close()


async def collect(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


async def session_with_calls(env: Env, caller: str, *texts: str) -> str:
    """Open a session for ``caller``, echo each text, close it; its id."""
    sid = (await env.manager.open("good", caller=caller)).info.session_id
    for text in texts:
        await env.manager.call_tool(sid, "echo", {"text": text}, caller=caller)
    await env.manager.close(sid, caller=caller)
    return sid


def ids(found: Iterable[AuditRecord]) -> list[str]:
    return [r.id for r in found]


# -- query --------------------------------------------------------------------------------------------------------


async def test_a_plain_caller_reads_only_its_own_records(env: Env) -> None:
    alice = await session_with_calls(env, "alice", "a1", "a2")
    bob = await session_with_calls(env, "bob", "b1")

    mine = await collect(env.audit.query(AuditQuery(), caller="alice"))
    assert mine and {r.caller for r in mine} == {"alice"}
    assert ids(mine) == ids(env.records(caller="alice"))
    assert {r.session_id for r in mine} == {alice}
    assert ids(await collect(env.audit.query(AuditQuery(caller="alice"), caller="alice"))) == ids(mine)
    # Naming another caller's session is no way around it: the answer is only ever the caller's own records.
    assert await collect(env.audit.query(AuditQuery(session_id=bob), caller="alice")) == []

    with pytest.raises(errors.PermissionDenied) as caught:
        await collect(env.audit.query(AuditQuery(caller="bob"), caller="alice"))
    assert "auditor or admin" in caught.value.message and "callers.alice.roles" in caught.value.message


@pytest.mark.parametrize("reader", ["audrey", "root"])
async def test_auditors_and_admins_read_everyones_records(env: Env, reader: str) -> None:
    await session_with_calls(env, "alice", "a1")
    await session_with_calls(env, "bob", "b1")
    everything = await collect(env.audit.query(AuditQuery(), caller=reader))
    assert ids(everything) == ids(env.records())
    assert {"alice", "bob"} <= {r.caller for r in everything}
    bobs = await collect(env.audit.query(AuditQuery(caller="bob"), caller=reader))
    assert bobs and ids(bobs) == ids(env.records(caller="bob"))


async def test_filters_apply_through_the_service(env: Env) -> None:
    alice_first = await session_with_calls(env, "alice", "a1", "a2")
    alice_second = await session_with_calls(env, "alice", "a3")
    await session_with_calls(env, "bob", "b1")

    async def query(**filters: Any) -> list[AuditRecord]:
        return await collect(env.audit.query(AuditQuery(**filters), caller="alice"))

    requests = await query(kinds=(records.REQUEST,))
    assert len(requests) == 3 and {(r.kind, r.caller) for r in requests} == {(records.REQUEST, "alice")}
    opens_and_closes = await query(kinds=(records.SESSION_OPEN, records.SESSION_CLOSE))
    assert [r.kind for r in opens_and_closes] == [records.SESSION_OPEN, records.SESSION_CLOSE] * 2

    second = await query(session_id=alice_second)
    assert second and ids(second) == ids(env.records(session_id=alice_second))
    first_requests = await query(session_id=alice_first, kinds=(records.REQUEST,))
    assert [r.data["params"]["arguments"]["text"] for r in first_requests] == ["a1", "a2"]

    mine = await query()
    middle = mine[len(mine) // 2]
    since = await query(since=middle.at)
    until = await query(until=middle.at)
    assert ids(since) == [r.id for r in mine if r.at >= middle.at] and middle.id in ids(since)  # inclusive
    assert ids(until) == [r.id for r in mine if r.at < middle.at] and middle.id not in ids(until)  # exclusive
    assert until and since
    window = await query(since=mine[1].at, until=mine[-1].at)
    assert ids(window) == [r.id for r in mine if mine[1].at <= r.at < mine[-1].at] and len(window) >= 2
    assert ids(await query(record_id=middle.id)) == [middle.id]
    assert ids(await query(after_seq=middle.seq, limit=2)) == ids(mine[len(mine) // 2 + 1 :][:2])


# -- export -------------------------------------------------------------------------------------------------------


async def test_export_is_one_canonical_line_per_record_in_order(env: Env) -> None:
    sid = await session_with_calls(env, "alice", "a1", "a2")
    await session_with_calls(env, "bob", "b1")
    lines = await collect(env.audit.export_session(sid, caller="alice"))
    stored = env.records(session_id=sid)
    assert len(lines) == len(stored) >= 6
    seqs = []
    for line, record in zip(lines, stored, strict=True):
        assert line.endswith("\n") and line.count("\n") == 1
        parsed = json.loads(line)
        assert line == canonical_json(parsed) + "\n"
        assert parsed["session_id"] == sid and parsed["id"] == record.id and parsed["hash"] == record.hash
        body = canonical_json({k: v for k, v in parsed.items() if k != "hash"})
        assert chain_hash(parsed["prev"], body) == parsed["hash"]  # each line can be checked on its own
        seqs.append(parsed["seq"])
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [json.loads(line)["kind"] for line in lines[:2]] == [records.POLICY, records.SESSION_OPEN]
    assert json.loads(lines[-1])["kind"] == records.SESSION_CLOSE


async def test_export_of_an_unknown_session_is_not_found(env: Env) -> None:
    await session_with_calls(env, "alice", "a1")
    with pytest.raises(errors.SessionNotFound):
        await collect(env.audit.export_session("0123456789abcdef", caller="alice"))
    with pytest.raises(errors.SessionNotFound):
        await collect(env.audit.export_session("0123456789abcdef", caller="audrey"))


async def test_export_of_another_callers_session_needs_the_auditor_or_admin_role(env: Env) -> None:
    sid = await session_with_calls(env, "alice", "a1")
    with pytest.raises(errors.PermissionDenied) as caught:
        await collect(env.audit.export_session(sid, caller="bob"))
    assert sid in caught.value.message and "callers.bob.roles" in caught.value.message
    own = await collect(env.audit.export_session(sid, caller="alice"))
    assert await collect(env.audit.export_session(sid, caller="audrey")) == own
    assert await collect(env.audit.export_session(sid, caller="root")) == own


async def test_export_of_an_empty_session_id_never_yields_another_callers_records(env: Env) -> None:
    await session_with_calls(env, "alice", "a1")  # the log's first record is alice's
    await session_with_calls(env, "bob", "b1")
    try:
        lines = await collect(env.audit.export_session("", caller="alice"))
    except (errors.SessionNotFound, errors.InvalidArgument, errors.PermissionDenied):
        return
    assert {json.loads(line)["caller"] for line in lines} <= {"alice"}


# -- verify -------------------------------------------------------------------------------------------------------


async def test_verify_needs_the_auditor_or_admin_role(env: Env) -> None:
    await session_with_calls(env, "alice", "a1")
    with pytest.raises(errors.PermissionDenied) as caught:
        await env.audit.verify(caller="alice")
    assert "verify" in caught.value.message
    stored = env.records()
    for reader in ("audrey", "root"):
        verification = await env.audit.verify(caller=reader)
        assert verification.intact and verification.checked == len(stored)
        assert verification.head_seq == stored[-1].seq and verification.head_hash == stored[-1].hash


# -- replay -------------------------------------------------------------------------------------------------------


async def recorded_session(env: Env) -> tuple[str, list[str]]:
    """alice's session: echo, say, a denied call (never ran), and a say whose answer changes per sandbox."""
    m = env.manager
    sid = (await m.open("good", caller="alice")).info.session_id
    audit_ids = [
        (await m.call_tool(sid, "echo", {"text": "hi"}, caller="alice")).audit_id,
        (await m.call_tool(sid, "say", {"text": "mail jane.doe@example.com"}, caller="alice")).audit_id,
    ]
    with pytest.raises(errors.PermissionDenied):
        await m.call_tool(sid, "sleep", {}, caller="alice")
    audit_ids.append((await m.call_tool(sid, "say", {"text": NOW}, caller="alice")).audit_id)
    await m.close(sid, caller="alice")
    return sid, audit_ids


async def test_replay_reports_same_and_different(env: Env) -> None:
    sid, originals = await recorded_session(env)
    verdicts = await collect(env.audit.replay(sid, caller="alice", timeout=30))

    assert [(v.index, v.tool, v.verdict) for v in verdicts] == [
        (1, "echo", records.SAME), (2, "say", records.SAME), (3, "say", records.DIFFERENT),
    ]  # fmt: skip
    assert [v.original_audit_id for v in verdicts] == originals
    assert verdicts[0].diff == () and verdicts[1].diff == ()
    assert [dict(d) for d in verdicts[2].diff] == [
        {"op": "replace", "path": "/result/content/0/text", "old": "start 1", "new": "start 2"}
    ]

    [replay_id] = {v.replay_session_id for v in verdicts}
    assert replay_id != sid
    replayed = env.records(session_id=replay_id)
    requests = {r.id: r for r in replayed if r.kind == records.REQUEST}
    assert [v.replay_audit_id for v in verdicts] == list(requests)
    assert all(r.caller == "alice" for r in replayed)


async def test_replay_opens_the_recorded_image_in_a_labelled_session_it_closes(env: Env) -> None:
    sid, _ = await recorded_session(env)
    [opened] = [r for r in env.records(session_id=sid) if r.kind == records.SESSION_OPEN]
    assert opened.data["image_id"] == IMAGE_ID and env.spec_of(sid).image == IMAGE

    verdicts = await collect(env.audit.replay(sid, caller="alice", timeout=30))
    replay_id = verdicts[0].replay_session_id
    assert env.spec_of(replay_id).image == IMAGE_ID  # the digest, not the tag that may have moved since
    info = env.manager.get(replay_id, caller="alice")
    assert info.state is SessionState.CLOSED and info.labels == {"replay-of": sid}
    kinds = [r.kind for r in env.records(session_id=replay_id)]
    assert kinds[:2] == [records.POLICY, records.SESSION_OPEN] and kinds[-1] == records.SESSION_CLOSE
    [replay_open] = [r for r in env.records(session_id=replay_id) if r.kind == records.SESSION_OPEN]
    assert replay_open.data["labels"] == {"replay-of": sid} and replay_open.data["image_id"] == IMAGE_ID


async def test_replay_under_a_changed_policy_refuses_without_running_or_asking(env: Env) -> None:
    sid, originals = await recorded_session(env)
    write_policy(
        env.policy_path, POLICY.replace('good: {deny: ["sleep"]}', 'good: {deny: ["sleep", "echo"], approval: ["say"]}')
    )
    assert env.policy.reload() is None

    verdicts = await collect(env.audit.replay(sid, caller="alice", timeout=30))
    assert [(v.tool, v.verdict) for v in verdicts] == [
        ("echo", records.REFUSED), ("say", records.REFUSED), ("say", records.REFUSED),
    ]  # fmt: skip
    assert [v.original_audit_id for v in verdicts] == originals
    assert 'callers.alice.profile_tools.good.deny "echo"' in verdicts[0].reason
    for verdict in verdicts[1:]:
        assert "approval" in verdict.reason
        assert 'callers.alice.profile_tools.good.approval "say"' in verdict.reason
    assert all(v.replay_audit_id == "" and v.diff == () for v in verdicts)

    # Nothing ran, and no approval was asked for.
    replay_id = verdicts[0].replay_session_id
    replayed = env.records(session_id=replay_id)
    assert [r.kind for r in replayed] == [records.POLICY, records.SESSION_OPEN, records.SESSION_CLOSE]
    assert env.manager.list_approvals(caller="carol", include_decided=True) == []
    assert env.records(kinds=(records.APPROVAL,)) == []
    assert env.manager.get(replay_id, caller="alice").state is SessionState.CLOSED


async def test_replay_of_another_callers_session_needs_the_auditor_or_admin_role(env: Env) -> None:
    sid, _ = await recorded_session(env)
    with pytest.raises(errors.PermissionDenied) as caught:
        await collect(env.audit.replay(sid, caller="bob", timeout=30))
    assert sid in caught.value.message
    assert len(env.specs) == 1  # no sandbox was started for the refused replay

    # An auditor may, under the auditor's own policy (which does not deny what alice's denied).
    verdicts: list[ReplayVerdict] = await collect(env.audit.replay(sid, caller="audrey", timeout=30))
    assert [v.verdict for v in verdicts] == [records.SAME, records.SAME, records.DIFFERENT]
    assert env.manager.get(verdicts[0].replay_session_id, caller="audrey").caller == "audrey"


async def test_replay_of_an_unknown_session_is_not_found(env: Env) -> None:
    with pytest.raises(errors.SessionNotFound):
        await collect(env.audit.replay("0123456789abcdef", caller="audrey", timeout=30))


async def test_replay_of_a_session_that_never_opened_is_a_failed_precondition(env: Env) -> None:
    with pytest.raises(errors.SandboxCrashed):
        await env.manager.open("broken", caller="alice")
    [failed] = [r for r in env.records(caller="alice") if r.kind == records.SESSION_OPEN]
    assert failed.session_id and failed.data["outcome"] == "error"
    with pytest.raises(errors.FailedPrecondition, match="never opened"):
        await collect(env.audit.replay(failed.session_id, caller="alice", timeout=30))
    assert len(env.specs) == 1  # no replay sandbox


async def test_replay_runs_each_call_once_with_the_arguments_its_intent_recorded(env: Env) -> None:
    m = env.manager
    sid = (await m.open("good", caller="alice")).info.session_id
    long_text = "long " * 2000  # over the cap: the outcome record keeps a digest, the intent the whole text
    first = await m.call_tool(sid, "say", {"text": long_text}, caller="alice")
    with pytest.raises(errors.ToolNotFound):
        await m.call_tool(sid, "nope", {}, caller="alice")  # sent a tools/list, never a call
    second = await m.call_tool(sid, "say", {"text": "short"}, caller="alice")
    await m.close(sid, caller="alice")
    # A call the server got but whose outcome was never written (the service died): nothing to compare it with.
    lost = {"method": "tools/call", "params": {"name": "say", "arguments": {"text": "lost"}}, "request_id": "aud_0"}
    await env.store.append(records.AuditEvent(records.REQUEST_INTENT, sid, "alice", lost))

    verdicts = await collect(env.audit.replay(sid, caller="alice", timeout=30))
    assert [(v.tool, v.verdict, v.original_audit_id) for v in verdicts] == [
        ("say", records.SAME, first.audit_id), ("say", records.SAME, second.audit_id),
    ]  # fmt: skip
    replayed = env.records(session_id=verdicts[0].replay_session_id, kinds=(records.REQUEST_INTENT,))
    sent = [r.data["params"]["arguments"] for r in replayed if r.data["method"] == "tools/call"]
    assert sent == [{"text": long_text}, {"text": "short"}]
