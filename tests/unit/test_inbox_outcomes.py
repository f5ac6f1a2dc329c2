"""A session's Inbox over FakeBackend and a real audit log: a server request whose call (or session) ends while it
waits for the caller is still recorded ("abandoned"), and a profile's ``roots`` answer ``roots/list`` on the host
without asking the caller."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import mcp_types
import pytest

from runner.audit import records
from runner.audit.records import AuditQuery, AuditRecord
from runner.audit.store import AuditStore
from runner.config import Limits, Profile, Settings
from runner.roots import roots_result
from runner.sandbox.base import SandboxSpec
from runner.sandbox.fake import FakeBackend, Handler
from runner.sessions.inbox import ABANDONED, ANSWERED_BY_PROFILE
from runner.sessions.journal import Journal
from runner.sessions.manager import SessionManager
from runner.sessions.models import Exchange, ServerRequest, ToolCallOutcome
from tests.unit.interactive_agent import InteractiveAgent

LIMITS = Limits(call_timeout_s=30.0, idle_timeout_s=60, max_lifetime_s=600)
ROOTS = ("file:///tmp", "file:///data/my%20docs")
PROFILES = {
    "talk": Profile(name="talk", image="fake", command=("talk",), limits=LIMITS),
    "rooted": Profile(name="rooted", image="fake", command=("talk",), limits=LIMITS, roots=ROOTS),
    "rootless": Profile(name="rootless", image="fake", command=("talk",), limits=LIMITS, roots=()),
}
SETTINGS = Settings(profiles=MappingProxyType(PROFILES), max_sessions=10, reap_interval_s=3600)
WAIT_S = 10.0


@dataclass
class Env:
    manager: SessionManager
    store: AuditStore

    def records(self, kind: str) -> list[AuditRecord]:
        return [r for r in self.store.query(AuditQuery()) if r.kind == kind]

    async def recorded(self, kind: str, count: int = 1) -> list[AuditRecord]:
        """The records of ``kind`` once there are ``count`` (a note is written after the code that made it)."""
        async with asyncio.timeout(WAIT_S):
            while len(found := self.records(kind)) < count:
                await asyncio.sleep(0.01)
        return found


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = AuditStore(tmp_path / "audit.db")
    store.open()

    def handler(spec: SandboxSpec) -> Handler:
        return InteractiveAgent()

    manager = SessionManager(FakeBackend(handler), SETTINGS, journal=Journal(store))
    await manager.start()
    try:
        yield Env(manager, store)
    finally:
        await manager.shutdown()
        store.close()


def said(outcome: ToolCallOutcome) -> Any:
    assert outcome.result is not None
    block = outcome.result.content[0]
    assert isinstance(block, mcp_types.TextContent)
    return json.loads(block.text)


class Unanswered:
    """A caller who is asked and never answers."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    async def __call__(self, request: ServerRequest) -> dict[str, Any]:
        self.asked.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")


# -- abandoned ------------------------------------------------------------------------------------------------------


async def test_a_request_whose_call_is_cancelled_while_the_caller_is_asked_is_recorded_abandoned(env: Env) -> None:
    session = (await env.manager.open("talk", caller="alice", door="mcp-http")).info.session_id
    caller = Unanswered()
    call = asyncio.create_task(
        env.manager.call_tool(session, "ask", {}, caller="alice", exchange=Exchange(on_input=caller))
    )
    await asyncio.wait_for(caller.asked.wait(), WAIT_S)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    (record,) = await env.recorded(records.SERVER_REQUEST)
    assert record.data["outcome"] == ABANDONED and record.data["method"] == "elicitation/create"
    assert record.data["door"] == "mcp-http" and record.data["params"]["message"] == "Name please"
    assert "answer" not in record.data
    # The session lives on: the cancellation ended the call, not the session.
    await env.manager.ping(session, caller="alice")


async def test_a_request_waiting_when_its_session_closes_is_recorded_abandoned(env: Env) -> None:
    session = (await env.manager.open("talk", caller="alice")).info.session_id
    caller = Unanswered()
    call = asyncio.create_task(
        env.manager.call_tool(session, "ask", {}, caller="alice", exchange=Exchange(on_input=caller))
    )
    await asyncio.wait_for(caller.asked.wait(), WAIT_S)
    await env.manager.close(session, caller="alice")
    with pytest.raises(Exception):  # noqa: B017 - how a closed session ends its call is not this test's matter
        await asyncio.wait_for(call, WAIT_S)
    (record,) = await env.recorded(records.SERVER_REQUEST)
    assert record.data["outcome"] == ABANDONED


# -- the profile's roots --------------------------------------------------------------------------------------------


async def test_a_profiles_roots_answer_roots_list_and_the_caller_is_never_asked(env: Env) -> None:
    session = (await env.manager.open("rooted", caller="alice")).info.session_id
    asked: list[ServerRequest] = []

    async def on_input(request: ServerRequest) -> dict[str, Any]:
        asked.append(request)
        return {"roots": [{"uri": "file:///home/alice/project"}]}  # the caller's machine, not the sandbox

    env.manager.listen(session, caller="alice", on_input=on_input)
    related = {"method": "roots/list", "params": {}}
    for tool, arguments in (("roots", {}), ("raw", related)):  # unrelated (the listener's), and the call's own
        outcome = await env.manager.call_tool(
            session, tool, arguments, caller="alice", exchange=Exchange(on_input=on_input)
        )
        assert said(outcome)["result"] == roots_result(ROOTS)
    assert asked == []
    recorded = await env.recorded(records.SERVER_REQUEST, 2)
    assert [r.data["outcome"] for r in recorded] == [ANSWERED_BY_PROFILE] * 2
    assert recorded[0].data["answer"] == roots_result(ROOTS)


async def test_empty_roots_answer_an_empty_list_and_other_requests_still_reach_the_caller(env: Env) -> None:
    session = (await env.manager.open("rootless", caller="alice")).info.session_id
    asked: list[str] = []

    async def on_input(request: ServerRequest) -> dict[str, Any]:
        asked.append(request.method)
        return {"action": "accept", "content": {"name": "Ada"}}

    exchange = Exchange(on_input=on_input)
    roots = await env.manager.call_tool(session, "raw", {"method": "roots/list", "params": {}}, caller="alice",
                                        exchange=exchange)  # fmt: skip
    assert said(roots)["result"] == {"roots": []}
    elicited = await env.manager.call_tool(session, "ask", {}, caller="alice", exchange=exchange)
    assert said(elicited)["result"] == {"action": "accept", "content": {"name": "Ada"}}
    assert asked == ["elicitation/create"]


async def test_without_roots_in_the_profile_the_caller_is_asked_as_before(env: Env) -> None:
    session = (await env.manager.open("talk", caller="alice")).info.session_id

    async def on_input(request: ServerRequest) -> dict[str, Any]:
        return {"roots": [{"uri": "file:///w"}]}

    outcome = await env.manager.call_tool(session, "raw", {"method": "roots/list", "params": {}}, caller="alice",
                                          exchange=Exchange(on_input=on_input))  # fmt: skip
    assert said(outcome)["result"] == {"roots": [{"uri": "file:///w"}]}
    (record,) = await env.recorded(records.SERVER_REQUEST)
    assert record.data["outcome"] == "answered"
