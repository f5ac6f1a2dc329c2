"""The door's bindings over their life: opened, found, reaped, closed, whatever fails or is cancelled on the way."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from starlette.types import Message

from runner.config import AuthConfig, McpHttpConfig, TlsConfig
from runner.door import bodies, http, refusals
from runner.door.approvals import MAX_PENDING_APPROVALS, PendingApprovals
from runner.door.bodies import Body, read_body
from runner.door.http import DoorApp, start_door
from runner.door.identity import HttpAuthenticator
from runner.door.leases import Binding, DoorSessions, Leases
from runner.errors import SessionNotFound, Unavailable
from runner.sessions.models import OpenedSession, Sanitized, SessionInfo
from tests.unit.door_fakes import TOOL, FakeManager
from tests.unit.test_door_hostile import BOB, ENVELOPE, _stateless
from tests.unit.test_door_http import INIT, _door, url

SCOPE = {"type": "http", "method": "POST", "path": "/mcp/time", "headers": []}


class SlowClosing(FakeManager):
    """Its close yields to the loop first, as a real one does (so a cancellation can land in it)."""

    async def close(self, session_id: str, *, caller: str) -> SessionInfo:
        await asyncio.sleep(0)
        return await super().close(session_id, caller=caller)


class GoneSandbox(FakeManager):
    """Its sandbox ended under the door (crashed, reaped): closing it again is the manager's refusal."""

    async def close(self, session_id: str, *, caller: str) -> SessionInfo:
        raise SessionNotFound(f"no session {session_id}")


class NeverAnswers:
    """An SDK session manager whose initialize never answers (the request is cancelled, or its client left)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def handle_request(self, scope: Any, receive: Any, send: Any) -> None:
        self.started.set()
        await anyio.sleep_forever()


class AnswersNothing:
    """An SDK session manager that returns without answering (no session made)."""

    async def handle_request(self, scope: Any, receive: Any, send: Any) -> None:
        return None


def _app(manager: FakeManager, **config: Any) -> DoorApp:
    authenticator = HttpAuthenticator(AuthConfig(tokens=False), lambda _: None)
    return DoorApp(manager, McpHttpConfig(listen="127.0.0.1:0", **config), ["time"], authenticator,
                   lambda *note: None)  # fmt: skip


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


async def _drop(message: Message) -> None:
    return None


# ------------------------------------------------------------------------------------ a refused or cut initialize


async def test_an_initialize_left_unbound_whose_sandbox_is_gone_ends_quietly() -> None:
    manager = GoneSandbox()
    app = _app(manager)
    body = Body(json.dumps(INIT).encode(), INIT)
    await app._initialize(AnswersNothing(), "time", "anonymous", body, dict(SCOPE), _nothing, _drop)  # type: ignore[arg-type]
    assert [opened.session_id for opened in manager.opens] == ["s1"]


async def test_a_stop_cancelling_an_initialize_still_closes_its_sandbox() -> None:
    manager = SlowClosing()
    app = _app(manager)
    door = NeverAnswers()
    body = Body(json.dumps(INIT).encode(), INIT)
    with anyio.CancelScope() as stopping:  # as Draining.stop cancels the requests still in flight

        async def cancel_once_served() -> None:
            await door.started.wait()
            stopping.cancel()

        watcher = asyncio.create_task(cancel_once_served())
        await app._initialize(door, "time", "anonymous", body, dict(SCOPE), _nothing, _drop)  # type: ignore[arg-type]
    await watcher
    assert manager.closed == ["s1"]


# ------------------------------------------------------------------------------------ reaping


async def test_the_reaper_outlives_a_failed_pass() -> None:
    app = _app(FakeManager(), session_idle_timeout_s=0.04, lease_idle_timeout_s=0.04)
    passes: list[float] = []

    async def reap(now: float) -> None:
        passes.append(now)
        if len(passes) == 1:
            raise RuntimeError("a bug in one pass")

    app.sessions.reap = reap  # type: ignore[method-assign]
    reaper = asyncio.create_task(app._reap_forever())
    try:
        while len(passes) < 3:
            assert not reaper.done(), "the reaper died with its first failed pass"
            await asyncio.sleep(0.01)
    finally:
        reaper.cancel()


async def test_a_reaped_session_is_unbound_before_the_reap_yields() -> None:
    manager = FakeManager()
    sessions = DoorSessions(manager, idle_timeout_s=1.0)
    binding = Binding(caller="alice", profile="time", opened=await manager.open("time", caller="alice"))
    binding.last_used -= 10
    sessions.add("m1", binding)
    reaping = asyncio.create_task(sessions.reap(time.monotonic()))
    await asyncio.sleep(0)  # the reap has begun its closes, none has run yet
    assert sessions.find("m1", "alice") is None  # a new request gets a 404, never a sandbox being closed
    await reaping
    assert manager.closed == ["s1"] and len(sessions) == 0


async def test_lease_open_locks_are_gone_once_the_opens_are_done() -> None:
    manager = FakeManager()
    leases = Leases(manager, idle_timeout_s=60)
    first, second = await asyncio.gather(leases.acquire("alice", "time"), leases.acquire("alice", "time"))
    assert first is second and len(manager.opens) == 1
    manager.open_error = Unavailable("no sandbox today")
    await leases.reap(time.monotonic() + 120)
    with pytest.raises(Unavailable):
        await leases.acquire("bob", "time")
    assert leases._opening == {}


def test_pending_approvals_are_capped_oldest_first() -> None:
    pending = PendingApprovals()
    for n in range(MAX_PENDING_APPROVALS + 5):
        pending.add(f"call {n}", f"apr_{n}")
    assert len(pending) == MAX_PENDING_APPROVALS
    assert pending.get("call 0") == "" and pending.get(f"call {MAX_PENDING_APPROVALS + 4}").startswith("apr_")
    pending.add("call 5", "apr_again")  # asked again: the newest, so not the next one out
    pending.add("call new", "apr_new")
    assert pending.get("call 5") == "apr_again" and pending.get("call 6") == ""


# ------------------------------------------------------------------------------------ per-caller tool schemas

ROUTED = types.Tool(name=TOOL.name, input_schema={
    "type": "object", "properties": {"timezone": {"type": "string", "x-mcp-header": "Tz"}},
})  # fmt: skip


class PerCallerTools(FakeManager):
    """Bob's server lists the tool with an Mcp-Param header on ``timezone``; Alice's without."""

    def _tools(self, caller: str) -> tuple[types.Tool, ...]:
        return (ROUTED,) if caller == "bob" else (TOOL,)

    async def open(self, profile: str, *, caller: str, door: str = "grpc", protocol: str = "2025-11-25"
                   ) -> OpenedSession:  # fmt: skip
        opened = await super().open(profile, caller=caller, door=door, protocol=protocol)
        return OpenedSession(info=opened.info, server=opened.server, tools=self._tools(caller),
                             protocol=opened.protocol, capabilities=opened.capabilities)  # fmt: skip

    async def list_tools(self, session_id: str, *, caller: str, timeout: float | None = None
                         ) -> Sanitized[list[types.Tool]]:  # fmt: skip
        return Sanitized(list(self._tools(caller)))


@pytest.fixture
async def http_client() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=30) as client:
        yield client


async def test_a_callers_mcp_param_headers_are_checked_against_its_own_listing(
    http_client: httpx2.AsyncClient,
) -> None:
    manager = PerCallerTools()
    door = await _door(manager, tokens=True)
    try:
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": TOOL.name, "arguments": {"timezone": "UTC"}, "_meta": ENVELOPE}}  # fmt: skip
        first = await http_client.post(url(door), json=call, headers=_stateless("tools/call", TOOL.name))
        assert first.status_code == 200 and "get_current_time" in first.text, first.text
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": ENVELOPE}}
        listed = await http_client.post(url(door), json=listing, headers=_stateless("tools/list", headers=BOB))
        assert listed.status_code == 200 and "x-mcp-header" in listed.text
        again = await http_client.post(url(door), json=call, headers=_stateless("tools/call", TOOL.name))
        assert again.status_code == 200 and "get_current_time" in again.text, again.text  # Bob's says nothing here
        bobs = await http_client.post(url(door), json=call, headers=_stateless("tools/call", TOOL.name, BOB))
        assert bobs.status_code == 400 and "Mcp-Param-Tz" in bobs.text  # his own listing judges his call
    finally:
        await door.stop()


# ------------------------------------------------------------------------------------ requests in flight


async def test_a_stateless_call_registers_nothing_for_the_session_disconnect_path(
    http_client: httpx2.AsyncClient,
) -> None:
    manager = FakeManager(call_gate=asyncio.Event())
    door = await _door(manager, tokens=True)
    try:
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": TOOL.name, "arguments": {}, "_meta": ENVELOPE}}  # fmt: skip
        in_flight = asyncio.create_task(
            http_client.post(url(door), json=call, headers=_stateless("tools/call", TOOL.name))
        )
        while not manager.calls:
            await asyncio.sleep(0.01)
        lease = door.app.leases.find("alice", "time")
        assert lease is not None and lease.in_flight == 1 and lease.running == {}
        manager.call_gate.set()  # type: ignore[union-attr]
        assert (await in_flight).status_code == 200
    finally:
        await door.stop()


class EndsUnanswered:
    """An SDK session manager whose SSE stream for the request ends without its answer (as when it was cancelled by
    notifications/cancelled and the SDK settled it, or its session ended under it)."""

    async def handle_request(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"id: 1\r\ndata: \r\n\r\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.mark.parametrize("ending", ["", "the session was deleted (DELETE)"])
async def test_only_an_ending_sessions_unanswered_requests_are_told_so(ending: str) -> None:
    manager = FakeManager()
    app = _app(manager)
    binding = Binding(caller="alice", profile="time", opened=await manager.open("time", caller="alice"))
    binding.ending = ending
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": TOOL.name}}
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    body = Body(json.dumps(call).encode(), call)
    status = await app._serve_session(EndsUnanswered(), binding, body, dict(SCOPE), _nothing, send)  # type: ignore[arg-type]
    assert status == 200
    told = [m for m in sent if m["type"] == "http.response.body" and b'"id":7' in m.get("body", b"")]
    if ending:  # the session's end left it unanswered: the client learns why
        assert len(told) == 1 and ending.encode() in told[0]["body"]
    else:  # a cancelled request gets no answer (MCP), a client that left has no one to tell
        assert told == []
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


# ------------------------------------------------------------------------------------ parsing off the loop


async def _read(raw: bytes, cap: int = 4 * 1024**2) -> tuple[Body | None, list[Message]]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"content-length", str(len(raw)).encode())]
    return await read_body(cap, {**SCOPE, "headers": headers}, receive, send), sent


async def test_a_big_body_is_parsed_off_the_loop_and_a_small_one_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    parse = bodies._parsed

    def recording(raw: bytes) -> Body:
        threads.append(threading.get_ident())
        return parse(raw)

    monkeypatch.setattr(bodies, "_parsed", recording)
    small, _ = await _read(json.dumps(INIT).encode())
    big_call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "t", "arguments": {
        "text": "x" * (bodies.INLINE_PARSE_BYTES + 1)}}}  # fmt: skip
    big, _ = await _read(json.dumps(big_call).encode())
    assert small is not None and small.method == "initialize"
    assert big is not None and big.method == "tools/call"
    assert threads[0] == threading.get_ident() and threads[1] != threading.get_ident()


async def test_a_body_of_too_many_values_is_refused_unparsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bodies, "_parsed", lambda raw: pytest.fail("parsed a body of too many values"))
    values = b"[" + b"0," * 300_000 + b"0]"
    raw = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"x":' + values + b"}}}"
    body, sent = await _read(raw)
    assert body is None and sent[0]["status"] == 413
    assert b"JSON values" in sent[1]["body"]


def _event(message: dict[str, Any], compact: bool = True) -> bytes:
    data = json.dumps(message, separators=(",", ":") if compact else None)
    return f"event: message\r\ndata: {data}\r\n\r\n".encode()


def test_a_big_answer_is_recognized_by_its_head_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    result = {"content": [{"type": "text", "text": "y" * 2_000_000}]}
    big = _event({"jsonrpc": "2.0", "id": 7, "result": result})
    big_other = _event({"jsonrpc": "2.0", "id": 8, "result": result})
    big_request = _event({"jsonrpc": "2.0", "id": 7, "method": "elicitation/create", "params": result})
    big_log = _event({"jsonrpc": "2.0", "method": "notifications/message", "params": result})
    small_spaced = _event({"jsonrpc": "2.0", "id": "7", "error": {"code": 1, "message": "no"}}, compact=False)

    def forbidden(data: Any) -> Any:
        raise AssertionError(f"parsed {len(data)} bytes of an event whole")

    monkeypatch.setattr(refusals, "json", SimpleNamespace(loads=forbidden, dumps=json.dumps))
    assert refusals.answers(big, 7)
    assert not refusals.answers(big_other, 7) and not refusals.answers(big, "7")
    assert not refusals.answers(big_request, 7) and not refusals.answers(big_log, 7)
    monkeypatch.setattr(refusals, "json", json)
    assert not refusals.answers(b"id: 1\r\ndata: \r\n\r\n", 7)  # the SDK's priming event
    assert refusals.answers(small_spaced, "7") and not refusals.answers(small_spaced, 7)


# ------------------------------------------------------------------------------------ start


async def test_a_door_that_cannot_start_is_unavailable_and_lets_go_of_its_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bound: list[Any] = []
    bind = http._bind

    def recording(listen: str) -> Any:
        bound.append(bind(listen))
        return bound[-1]

    monkeypatch.setattr(http, "_bind", recording)
    missing = TlsConfig(cert=tmp_path / "no.crt", key=tmp_path / "no.key", client_ca=None)
    with pytest.raises(Unavailable, match="did not start") as refused:
        await start_door(_app(FakeManager()), "127.0.0.1:0", tls=missing, grace=1)
    assert refused.value.__cause__ is not None
    assert bound and bound[0].fileno() == -1
