"""The input-request registry (runner.sessions.continuations) and the watch's bounded queue, without a server."""

from __future__ import annotations

import asyncio

import pytest

from runner import errors
from runner.api import protocol_rpcs
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.sessions import continuations
from runner.sessions.continuations import Continuations
from runner.sessions.models import ServerRequest

ROOTS = ServerRequest("roots/list", {})


def _ignore(pending: continuations.PendingInput) -> None:
    pass


async def test_ids_are_unguessable_and_answered_once() -> None:
    registry = Continuations()
    asked = [registry.ask(ROOTS, caller="alice", session_id="s1", on_expiry=_ignore) for _ in range(50)]
    assert len({p.request.input_id for p in asked}) == 50 and len(registry) == 50
    first = asked[0]
    assert registry.answer(first.request.input_id, {"roots": []}, caller="alice", session_id="s1") is first
    assert first.answer.result() == {"roots": []} and len(registry) == 49
    with pytest.raises(errors.FailedPrecondition, match="already answered"):
        registry.answer(first.request.input_id, {"roots": []}, caller="alice", session_id="s1")
    with pytest.raises(errors.NotFound):  # another session's caller learns nothing of it
        registry.answer(first.request.input_id, {"roots": []}, caller="alice", session_id="s2")


async def test_a_declining_answer_and_a_withdrawn_request() -> None:
    registry = Continuations()
    pending = registry.ask(ROOTS, caller="alice", session_id="s1", on_expiry=_ignore)
    registry.answer(pending.request.input_id, errors.ClientDeclined(-1, "no"), caller="alice", session_id="s1")
    with pytest.raises(errors.ClientDeclined):
        await pending.answer
    gone = registry.ask(ROOTS, caller="alice", session_id="s1", on_expiry=_ignore)
    registry.withdraw(gone, "can no longer be answered: its call ended first")
    assert gone.answer.cancelled()
    with pytest.raises(errors.FailedPrecondition, match="its call ended first"):
        registry.answer(gone.request.input_id, {"roots": []}, caller="alice", session_id="s1")


async def test_expiry_runs_the_askers_choice_once() -> None:
    registry = Continuations(ttl_s=0.05)
    expired: list[str] = []
    pending = registry.ask(
        ROOTS, caller="alice", session_id="s1", on_expiry=lambda p: expired.append(p.request.input_id)
    )
    async with asyncio.timeout(10):
        while not expired:
            await asyncio.sleep(0.02)
    assert expired == [pending.request.input_id] and len(registry) == 0
    with pytest.raises(errors.FailedPrecondition, match=r"expired: it was not answered within 0\.05 s"):
        registry.answer(pending.request.input_id, {"roots": []}, caller="alice", session_id="s1")


async def test_only_so_many_ended_ids_are_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(continuations, "KEEP_ENDED", 3)
    registry = Continuations()
    ids = []
    for _ in range(4):
        pending = registry.ask(ROOTS, caller="alice", session_id="s1", on_expiry=_ignore)
        registry.answer(pending.request.input_id, {"roots": []}, caller="alice", session_id="s1")
        ids.append(pending.request.input_id)
    with pytest.raises(errors.NotFound):  # the oldest is forgotten
        registry.answer(ids[0], {"roots": []}, caller="alice", session_id="s1")
    with pytest.raises(errors.FailedPrecondition):
        registry.answer(ids[-1], {"roots": []}, caller="alice", session_id="s1")


async def test_watch_queue_gives_up_old_logs_never_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol_rpcs, "MAX_EVENTS_WAITING", 3)
    events = protocol_rpcs._WatchEvents()
    events.put(pb.SessionEvent(input_required=pb.InputRequired(input_id="in_1")))
    for n in range(5):
        events.put(pb.SessionEvent(log=pb.LogMessage(level="info", data_json=str(n))))
    got = [await events.get(1.0) for _ in range(3)]
    assert got[0].input_required.input_id == "in_1" and got[0].dropped == 3
    assert [g.log.data_json for g in got[1:]] == ["3", "4"] and got[1].dropped == 0
    assert await events.get(0.01) is None


async def test_watch_queue_holds_one_update_per_uri_and_gives_updates_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server spamming notifications/resources/updated at a slow watcher holds a bounded queue."""
    monkeypatch.setattr(protocol_rpcs, "MAX_EVENTS_WAITING", 3)
    events = protocol_rpcs._WatchEvents()
    for _ in range(1000):
        events.put(pb.SessionEvent(resource_updated="mem://a"))
    events.put(pb.SessionEvent(input_required=pb.InputRequired(input_id="in_1")))
    for n in range(1000):
        events.put(pb.SessionEvent(resource_updated=f"mem://{n}"))
    events.put(pb.SessionEvent(input_required=pb.InputRequired(input_id="in_2")))
    got = []
    while (event := await events.get(0.01)) is not None:
        got.append(event)
    assert [g.WhichOneof("event") for g in got] == ["input_required", "resource_updated", "input_required"]
    assert got[0].input_required.input_id == "in_1" and got[0].dropped == 1000
    assert got[1].resource_updated == "mem://999" and got[2].input_required.input_id == "in_2"


async def test_a_round_never_shows_requests_already_answered() -> None:
    """After its answers, a call that goes quiet (the server working) is waited on, not reported as a round of no
    requests: ``next_requests`` counts only requests still waiting."""
    registry = Continuations()
    release = asyncio.Event()
    waiting: continuations.WaitingCall[str] = continuations.WaitingCall(registry, caller="alice", session_id="s1")

    async def call() -> str:
        await waiting.conversation.on_input(ROOTS)
        await release.wait()
        return "done"

    waiting.start(call())
    first = await waiting.next_requests(0.01)
    assert isinstance(first, list) and [p.request.method for p in first] == ["roots/list"]

    async def answer_and_wait() -> str | list[continuations.PendingInput]:
        registry.resolve(first[0], {"roots": []})  # as the door's retry does: the answer, then the wait at once
        return await waiting.next_requests(0.01)

    second = asyncio.create_task(answer_and_wait())
    for _ in range(5):  # several settle times pass with nothing waiting: still no round
        await asyncio.sleep(0.01)
    assert not second.done()
    release.set()
    assert await second == "done"


async def test_a_request_after_answered_ones_is_a_round_of_its_own() -> None:
    registry = Continuations()
    waiting: continuations.WaitingCall[str] = continuations.WaitingCall(registry, caller="alice", session_id="s1")

    async def call() -> str:
        await waiting.conversation.on_input(ROOTS)
        await waiting.conversation.on_input(ServerRequest("roots/list", {"again": True}))
        return "done"

    waiting.start(call())
    first = await waiting.next_requests(0.01)
    assert isinstance(first, list) and len(first) == 1
    registry.resolve(first[0], {"roots": []})
    second = await waiting.next_requests(0.01)
    assert isinstance(second, list) and [p.request.params for p in second] == [{"again": True}]
    registry.resolve(second[0], {"roots": []})
    assert await waiting.next_requests(0.01) == "done"
