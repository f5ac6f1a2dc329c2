"""The journal's write-ahead intent records and its cap on caller input, through a SessionManager on FakeBackend."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from runner import errors
from runner.audit import records
from runner.audit.records import AuditEvent, AuditQuery, AuditRecord, capped
from runner.sandbox.fake import FakeIO
from tests.unit.test_audit_store import commit_modes
from tests.unit.test_manager_audit import PROFILES, SECRET, SECRET_ENV, Env, audit_env, calls_seen, of_kind, only

MIB = 1024**2


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    async with audit_env(tmp_path) as made:
        yield made


def fail_kind(env: Env, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """From now on, records of ``kind`` cannot be written; every other kind still can."""
    submit = env.store.submit

    def failing(event: AuditEvent, *, durable: bool = True) -> Future[AuditRecord]:
        if event.kind != kind:
            return submit(event, durable=durable)
        failed: Future[AuditRecord] = Future()
        failed.set_exception(errors.AuditError(f"no {kind} records today"))
        return failed

    monkeypatch.setattr(env.store, "submit", failing)


def digest_of(text: str) -> dict[str, Any]:
    data = text.encode("utf-8")
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "prefix": text[: records.PREFIX_CHARS]}


# -- 1. write-ahead -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fsync_intents", [False, True])
async def test_the_intent_is_committed_before_the_server_sees_the_call_and_fsynced_as_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync_intents: bool
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    async with audit_env(tmp_path, fsync_intents=fsync_intents) as env:
        sid = (await env.manager.open("good", caller="alice")).info.session_id
        agent = env.backend.agents[0]
        on_record: list[tuple[list[AuditRecord], int]] = []
        call = agent._call

        async def looking(io: FakeIO, rid: int, params: dict[str, Any]) -> None:
            # What the log held (committed: a fresh read connection) when the call reached the server, and how
            # many commits had been fsync'd by then.
            on_record.append((env.store.query(AuditQuery(kinds=(records.REQUEST_INTENT,))), env.store.synced_commits))
            await call(io, rid, params)

        agent._call = looking  # type: ignore[method-assign]
        synced_before = env.store.synced_commits
        with commit_modes(env.store) as modes:
            outcome = await env.manager.call_tool(sid, "say", {"text": "hello"}, caller="alice")
        [(held, synced_on_sending)] = on_record
        intent = only(of_kind(held, records.REQUEST_INTENT, method="tools/call"))
        assert intent.data["method"] == "tools/call" and intent.data["request_id"] == outcome.audit_id
        assert intent.data["params"] == {"name": "say", "arguments": {"text": "hello"}}
        assert intent.session_id == sid and intent.caller == "alice"
        assert only(env.records(record_id=outcome.audit_id)).data["intents"] == [intent.id]
        # Two transactions: the policy's note with the intent (fsync'd only with fsync_intents), then the outcome,
        # fsync'd before the call returns: without fsync_intents that is the call's one fsync.
        assert modes == (["FULL", "FULL"] if fsync_intents else ["NORMAL", "FULL"])
        assert (synced_on_sending > synced_before) is fsync_intents
        kinds = [r.kind for r in env.records(session_id=sid) if r.seq > intent.seq - 2]
        assert kinds == [records.POLICY, records.REQUEST_INTENT, records.REQUEST]


async def test_a_call_that_ran_is_on_record_even_when_its_outcome_cannot_be_written(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = (await env.manager.open("good", caller="alice")).info.session_id
    fail_kind(env, monkeypatch, records.REQUEST)
    with pytest.raises(errors.AuditError) as caught:
        await env.manager.call_tool(sid, "say", {"text": "payload-7f3a"}, caller="alice")
    assert caught.value.status is errors.Status.UNAVAILABLE and "withheld" in caught.value.message
    # The server did answer (the caller got nothing): the intent says what it was sent.
    assert calls_seen(env.backend.agents[0]) == [{"text": "payload-7f3a"}]
    await env.finish()
    intent = only(of_kind(env.records(session_id=sid), records.REQUEST_INTENT))
    assert intent.data["params"] == {"name": "say", "arguments": {"text": "payload-7f3a"}}
    assert env.records(kinds=(records.REQUEST,)) == []


async def test_a_call_its_caller_abandoned_is_on_record_under_the_id_its_intent_names(env: Env) -> None:
    sid = (await env.manager.open("good", caller="root")).info.session_id
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(env.manager.call_tool(sid, "sleep", {"seconds": 30}, caller="root"), 0.3)
    await env.finish()
    found = env.records(session_id=sid)
    intent = only(of_kind(found, records.REQUEST_INTENT, method="tools/call"))
    outcome = only(of_kind(found, records.REQUEST, outcome="abandoned"))
    assert outcome.id == intent.data["request_id"] and outcome.data["intents"] == [intent.id]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (float("nan"), "not JSON compliant"),
        (float("inf"), "not JSON compliant"),
        ("\ud800", "surrogates not allowed"),
        ([[[[[]]]]], ""),  # the control: a value the log holds is sent
    ],
)
async def test_arguments_the_log_cannot_hold_are_refused_before_they_are_sent(env: Env, value: Any, why: str) -> None:
    sid = (await env.manager.open("good", caller="alice")).info.session_id
    arguments = {"text": "x", "extra": value}
    if not why:
        await env.manager.call_tool(sid, "say", arguments, caller="alice")
        assert calls_seen(env.backend.agents[0]) == [arguments]
        return
    with pytest.raises(errors.InvalidArgument) as caught:
        await env.manager.call_tool(sid, "say", arguments, caller="alice")
    assert "cannot be recorded in the audit log" in caught.value.message and why in caught.value.message
    assert caught.value.status is errors.Status.INVALID_ARGUMENT
    assert calls_seen(env.backend.agents[0]) == []
    # The refusal is on record all the same, with what could not be held named instead of kept.
    await env.finish()
    found = env.records(session_id=sid)
    assert of_kind(found, records.REQUEST_INTENT, method="tools/call") == []
    refused = only(of_kind(found, records.REQUEST, method="tools/call"))
    assert refused.data["outcome"] == "error" and refused.data["error"]["status"] == "INVALID_ARGUMENT"
    assert refused.data["params"]["name"] == "say" and set(refused.data["params"]["arguments"]) == {"unrecordable"}
    assert env.store.verify().intact


async def test_nesting_too_deep_for_the_log_is_refused_before_it_is_sent(env: Env) -> None:
    sid = (await env.manager.open("good", caller="alice")).info.session_id
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(errors.InvalidArgument, match="nested too deeply"):
        await env.manager.call_tool(sid, "say", {"text": "x", "deep": deep}, caller="alice")
    assert calls_seen(env.backend.agents[0]) == []
    await env.finish()
    refused = only(of_kind(env.records(session_id=sid), records.REQUEST, method="tools/call"))
    assert refused.data["params"]["arguments"] == {"unrecordable": "nested too deeply"}


async def test_every_message_a_request_sends_has_its_intent(env: Env) -> None:
    sid = (await env.manager.open("good", caller="alice")).info.session_id
    agent = env.backend.agents[0]
    booted = len(agent.seen)  # initialize and tools/list while opening: the session.open record covers those
    await env.manager.list_tools(sid, caller="alice")
    await env.manager.read_resource(sid, "mem://greeting", caller="alice")
    with pytest.raises(errors.ToolNotFound):
        await env.manager.call_tool(sid, "nope", {}, caller="alice")  # sends a tools/list to look for it
    await env.manager.call_tool(sid, "say", {"text": "x"}, caller="alice")
    sent = agent.seen[booted:]
    await env.finish()
    found = env.records(session_id=sid)
    intents = of_kind(found, records.REQUEST_INTENT)
    assert [(r.data["method"], r.data["params"]) for r in intents] == [(m["method"], m["params"]) for m in sent]
    assert [m["method"] for m in sent] == ["tools/list", "resources/read", "tools/list", "tools/call"]
    answers = of_kind(found, records.REQUEST)
    assert [a.data["intents"] for a in answers] == [[r.id] for r in intents]
    assert [r.data["request_id"] for r in intents] == [a.id for a in answers]


# -- 2. what records keep of caller input -------------------------------------------------------------------------


async def test_refused_requests_of_3_mib_cost_the_log_a_few_kib(env: Env) -> None:
    m = env.manager
    sid = (await m.open("good", caller="alice")).info.session_id
    big = "p" * (3 * MIB)
    await env.store.append(AuditEvent("test", "", "", {}))  # settle the log's first pages
    size = len(env.raw_log())
    refusals: list[tuple[type[errors.RunnerError], Any]] = [
        (errors.ProfileNotFound, m.open(big, caller="alice")),
        (errors.InvalidArgument, m.open("good", caller="alice", labels={big: "x"})),
        (errors.SessionNotFound, m.call_tool(big, "say", {"text": big}, caller="alice")),
        (errors.SessionNotFound, m.read_resource("0" * 16, big, caller="alice")),
        (errors.SessionNotFound, m.get_prompt("0" * 16, big, {"a": big}, caller="alice")),
        (errors.ToolNotFound, m.call_tool(sid, big, {"text": "x"}, caller="alice")),
        (errors.SchemaViolation, m.call_tool(sid, "echo", {"text": big}, caller="alice")),
        (errors.PermissionDenied, m.call_tool(sid, "sleep", {"seconds": big}, caller="alice")),
        (errors.SessionNotFound, m.list_tools(big, caller="alice")),
        (errors.PermissionDenied, m.call_tool(sid, "say", {"text": big}, caller="bob")),
    ]
    for error, refused in refusals:
        with pytest.raises(error):
            await refused
    await env.store.append(AuditEvent("test", "", "", {}))  # everything queued before is committed
    # The write-ahead log holds whole pages per commit (~20 KiB each here); the records themselves are small.
    assert len(env.raw_log()) - size < MIB // 2
    written = env.records()
    assert max(len(records.canonical_json(dict(r.data))) for r in written) < 4 * records.INPUT_CAP_BYTES
    assert calls_seen(env.backend.agents[0]) == []

    opened = only(of_kind(written, records.SESSION_OPEN, outcome="refused", profile=digest_of(big)))
    known = ", ".join(sorted(PROFILES))
    assert opened.data["error"]["message"] == digest_of(f"no profile named {big!r} (profiles you may open: {known})")
    unknown = only(of_kind(written, records.REQUEST, method="tools/call", session_id=digest_of(big)))
    assert unknown.session_id == "" and unknown.data["method"] == "tools/call"
    assert unknown.data["params"] == {"name": "say", "arguments": digest_of(records.canonical_json({"text": big}))}
    await env.finish()
    assert env.store.path.stat().st_size < MIB // 4  # the whole database, checkpointed: every record above


async def test_an_accepted_calls_arguments_stay_whole_in_its_intent_and_capped_in_its_outcome(env: Env) -> None:
    sid = (await env.manager.open("good", caller="alice")).info.session_id
    text = "long " * 2000
    outcome = await env.manager.call_tool(sid, "say", {"text": text}, caller="alice")
    done = only(env.records(record_id=outcome.audit_id))
    [intent] = [r for r in env.records(kinds=(records.REQUEST_INTENT,)) if r.id in done.data["intents"]]
    assert intent.data["params"] == {"name": "say", "arguments": {"text": text}}
    assert done.data["params"] == {"name": "say", "arguments": digest_of(records.canonical_json({"text": text}))}


def test_capped_keeps_small_values_and_digests_large_or_unrecordable_ones() -> None:
    assert capped("x" * records.INPUT_CAP_BYTES) == "x" * records.INPUT_CAP_BYTES
    assert capped({"a": [1, 2.5, None]}) == {"a": [1, 2.5, None]}
    assert capped("é" * records.INPUT_CAP_BYTES) == digest_of("é" * records.INPUT_CAP_BYTES)  # bytes, not chars
    assert capped({"k": "v" * 5000}) == digest_of(records.canonical_json({"k": "v" * 5000}))
    assert capped(float("nan")) == {"unrecordable": "Out of range float values are not JSON compliant"}
    assert list(capped("\udc00")) == ["unrecordable"]
