"""Red team of the HTTP door against a fake SessionManager: clients that lie, guess, replay and send garbage.

Every refusal must be a clear HTTP status with a JSON-RPC error, tell nothing of another caller, and leave the
door serving. A test marked xfail(strict) documents a defect of the door: its reason names it.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from runner.audit import records
from runner.door.http import RunningDoor
from runner.errors import ProfileNotFound, RateLimited, SessionNotFound
from tests.unit.door_fakes import FakeManager
from tests.unit.test_door_http import INIT, JSON_SSE, _door, notes, url
from tests.unit.test_manager_audit import audit_env

MODERN = "2026-07-28"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
ALICE = {**JSON_SSE, "authorization": "Bearer mcpr_alice"}
BOB = {**JSON_SSE, "authorization": "Bearer mcpr_bob"}
LISTING = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


@pytest.fixture
async def manager() -> FakeManager:
    return FakeManager()


@pytest.fixture
async def door(manager: FakeManager) -> AsyncIterator[RunningDoor]:
    running = await _door(manager, tokens=True, max_body=64 * 1024)
    yield running
    await running.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=30) as client:
        yield client


async def _session(http: httpx2.AsyncClient, door: RunningDoor, headers: dict[str, str] = ALICE) -> dict[str, str]:
    opened = await http.post(url(door), json=INIT, headers=headers)
    assert opened.status_code == 200
    return {**headers, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}


def _stateless(method: str, name: str = "", headers: dict[str, str] = ALICE) -> dict[str, str]:
    return {**headers, "mcp-protocol-version": MODERN, "mcp-method": method, **({"mcp-name": name} if name else {})}


def _error(reply: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC error of a refusal: a JSON body (never an SSE stream, a traceback or plain text)."""
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.text[:300]
    body = reply.json()
    assert body["jsonrpc"] == "2.0" and "result" not in body
    assert "Traceback" not in reply.text and "pydantic" not in reply.text
    error: dict[str, Any] = body["error"]
    return error


async def _still_serving(http: httpx2.AsyncClient, door: RunningDoor) -> None:
    listed = await http.post(
        url(door), json={**LISTING, "params": {"_meta": ENVELOPE}}, headers=_stateless("tools/list")
    )
    assert listed.status_code == 200 and "get_current_time" in listed.text


# ------------------------------------------------------------------------------------ lying about the protocol


async def test_stateless_headers_that_disagree_with_the_body_are_400(door: RunningDoor, http: httpx2.AsyncClient,
                                                                     manager: FakeManager) -> None:  # fmt: skip
    params: dict[str, Any] = {"name": "get_current_time", "arguments": {}, "_meta": ENVELOPE}
    call = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": params}
    older_envelope = {**ENVELOPE, "io.modelcontextprotocol/protocolVersion": "2025-11-25"}
    older_body = {**call, "params": {**params, "_meta": older_envelope}}
    lies = {
        "method header": (call, _stateless("tools/list")),
        "name header": (call, _stateless("tools/call", "delete_everything")),
        "no name header": (call, _stateless("tools/call")),
        "body era": (older_body, _stateless("tools/call", "get_current_time")),
        "no envelope": ({**call, "params": {"name": "get_current_time"}}, _stateless("tools/call", "get_current_time")),
    }
    for lie, (body, headers) in lies.items():
        reply = await http.post(url(door), json=body, headers=headers)
        assert reply.status_code == 400, lie
        error = _error(reply)
        assert error["code"] in (-32020, types.INVALID_PARAMS), (lie, error)
        assert reply.json()["id"] == 4, lie
    assert manager.calls == []
    await _still_serving(http, door)


async def test_a_stateless_batch_is_refused(door: RunningDoor, http: httpx2.AsyncClient, manager: FakeManager) -> None:
    listing = {**LISTING, "params": {"_meta": ENVELOPE}}
    reply = await http.post(url(door), json=[listing, listing], headers=_stateless("tools/list"))
    assert reply.status_code == 400 and _error(reply)["code"] == types.INVALID_REQUEST
    assert manager.opens == []


async def test_a_batch_in_a_session_is_a_clear_invalid_request(door: RunningDoor, http: httpx2.AsyncClient) -> None:
    session = await _session(http, door)
    reply = await http.post(url(door), json=[LISTING, LISTING], headers=session)
    assert reply.status_code == 400
    error = _error(reply)
    assert error["code"] == types.INVALID_REQUEST and "batch" in error["message"].lower()


async def test_an_unknown_protocol_version_header_is_named_as_such(door: RunningDoor, http: httpx2.AsyncClient) -> None:
    session = await _session(http, door)
    for era in ("1999-01-01", "bogus"):
        for headers in (session, ALICE):
            reply = await http.post(url(door), json=LISTING, headers={**headers, "mcp-protocol-version": era})
            assert reply.status_code == 400
            error = _error(reply)
            assert "unsupported" in error["message"].lower() and era in error["message"], error
            assert error["code"] == -32022 and "2025-11-25" in error["message"]
            assert error["data"] == {"supported": [MODERN], "requested": era, "status": "INVALID_ARGUMENT"}


async def test_a_session_request_claiming_the_stateless_era_is_refused(door: RunningDoor, http: httpx2.AsyncClient,
                                                                      manager: FakeManager) -> None:  # fmt: skip
    session = await _session(http, door)
    lying = {**session, "mcp-protocol-version": MODERN, "mcp-method": "tools/list"}
    reply = await http.post(url(door), json={**LISTING, "params": {"_meta": ENVELOPE}}, headers=lying)
    assert reply.status_code == 400
    assert [opened.protocol for opened in manager.opens] == ["2025-11-25"]


async def test_initialize_asking_for_another_era_gets_a_handshake_era(door: RunningDoor, http: httpx2.AsyncClient,
                                                                      manager: FakeManager) -> None:  # fmt: skip
    for asked in (MODERN, "9999-99-99", "bogus"):
        lying = {**INIT, "params": {**INIT["params"], "protocolVersion": asked}}  # type: ignore[dict-item]
        reply = await http.post(url(door), json=lying, headers=ALICE)
        assert reply.status_code == 200
        result = json.loads(next(line for line in reply.text.splitlines() if line.startswith("data: "))[6:])
        assert result["result"]["protocolVersion"] == "2025-11-25"
    assert {opened.protocol for opened in manager.opens} == {"2025-11-25"}


async def test_initialize_with_the_stateless_header_opens_nothing(door: RunningDoor, http: httpx2.AsyncClient,
                                                                  manager: FakeManager) -> None:  # fmt: skip
    reply = await http.post(url(door), json=INIT, headers=_stateless("initialize"))
    assert reply.status_code == 400 and _error(reply)
    assert manager.opens == [] and len(door.app.sessions) == 0


# ---------------------------------------------------------------------------------------- other callers' sessions


async def test_guessed_and_garbage_session_ids_are_all_the_same_404(
    door: RunningDoor, http: httpx2.AsyncClient
) -> None:
    session = await _session(http, door)
    real = session["mcp-session-id"]
    near = real[:-1] + ("1" if real.endswith("0") else "0")  # one character off (never the real id itself)
    guesses = ["0" * 32, near, "../" * 10, "a" * 8000, "%00;DROP TABLE", "-"]
    messages = set()
    for guess in guesses:
        reply = await http.post(url(door), json=LISTING, headers={**session, "mcp-session-id": guess})
        assert reply.status_code in (400, 404), guess[:20]
        messages.add(_error(reply)["message"])
    theirs = await http.post(url(door), json=LISTING, headers={**session, **BOB})
    assert theirs.status_code == 404
    messages.add(_error(theirs)["message"])
    assert _error(theirs)["data"] == {"status": "NOT_FOUND"}
    assert len(messages) <= 2, messages  # a malformed header may be refused apart, never an id told from another


async def test_session_misses_are_the_callers_refusals_and_throttled(door: RunningDoor, http: httpx2.AsyncClient,
                                                                     manager: FakeManager) -> None:  # fmt: skip
    """As on gRPC: each miss goes through the SessionManager's refusal path (counted, recorded); past the caller's
    refusal rate the answer is its 429, with Retry-After."""
    session = await _session(http, door)
    manager.refusal_limit = 3
    statuses = []
    for verb in ("POST", "GET", "DELETE", "POST"):
        reply = await http.request(verb, url(door), json=LISTING if verb == "POST" else None,
                                   headers={**session, **BOB})  # fmt: skip
        statuses.append(reply.status_code)
    assert statuses == [404, 404, 404, 429]
    assert reply.headers["retry-after"] == "2"
    assert _error(reply) == {"code": -32004, "message": "caller bob exceeded its refusal rate; retry in 1.50 s",
                             "data": {"status": "RESOURCE_EXHAUSTED", "retryAfterMs": 1500}}  # fmt: skip
    assert [(r["caller"], r["method"], r["door"], r["profile"]) for r in manager.refusals] == [
        ("bob", "tools/list", "mcp-http", ""), ("bob", "GET", "mcp-http", ""), ("bob", "DELETE", "mcp-http", "")]
    assert all(type(r["error"]).__name__ == "SessionNotFound" for r in manager.refusals)
    mine = await http.post(url(door), json=LISTING, headers=session)  # the owner's session is untouched
    assert mine.status_code == 200 and manager.closed == []


async def test_the_managers_refusal_path_counts_records_and_throttles(tmp_path: Path) -> None:
    """SessionManager.refuse (the real one, a real audit log): what the door's misses go through."""
    async with audit_env(tmp_path) as env:
        with pytest.raises(SessionNotFound):
            await env.manager.refuse(SessionNotFound("Session not found"), caller="alice", method="tools/list",
                                     door="mcp-http")  # fmt: skip
        with pytest.raises(ProfileNotFound):
            await env.manager.refuse(ProfileNotFound("no profile named 'nope'"), caller="alice", method="initialize",
                                     door="mcp-stdio", profile="nope")  # fmt: skip
        throttled = None
        for _ in range(100):  # the default refusal burst is far smaller
            try:
                await env.manager.refuse(SessionNotFound("x"), caller="alice", method="tools/list", door="mcp-http")
            except RateLimited as exc:
                throttled = exc
                break
            except SessionNotFound:
                continue
        assert throttled is not None and "refusals_per_min" in throttled.message
        await env.finish()
        found = env.records(caller="alice")
    request = found[0]
    assert (request.kind, request.data["method"], request.data["door"], request.data["outcome"]) == (
        records.REQUEST, "tools/list", "mcp-http", "error")
    opened = found[1]
    assert (opened.kind, opened.data["profile"], opened.data["outcome"], opened.data["door"]) == (
        records.SESSION_OPEN, "nope", "refused", "mcp-stdio")
    assert [r.kind for r in found].count(records.THROTTLE) == 1  # one note per run, the rest unrecorded


async def test_an_unknown_profile_is_the_callers_refusal(door: RunningDoor, http: httpx2.AsyncClient,
                                                         manager: FakeManager) -> None:  # fmt: skip
    reply = await http.post(url(door, "nope"), json=INIT, headers=BOB)
    assert reply.status_code == 404 and "no profile named 'nope'" in _error(reply)["message"]
    assert [(r["caller"], r["profile"]) for r in manager.refusals] == [("bob", "nope")]
    manager.refusal_limit = 1
    throttled = await http.post(url(door, "nope"), json=INIT, headers=BOB)
    assert throttled.status_code == 429 and _error(throttled)["data"]["status"] == "RESOURCE_EXHAUSTED"
    assert manager.opens == []


async def test_another_callers_session_cannot_be_deleted_streamed_or_used(door: RunningDoor, http: httpx2.AsyncClient,
                                                                         manager: FakeManager) -> None:  # fmt: skip
    session = await _session(http, door)
    as_bob = {**session, "authorization": BOB["authorization"]}
    deleted = await http.delete(url(door), headers=as_bob)
    streamed = await http.get(url(door), headers={**as_bob, "accept": "text/event-stream"})
    called = await http.post(
        url(door),
        headers=as_bob,
        json={"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "get_current_time"}},
    )
    for reply in (deleted, streamed, called):
        assert reply.status_code == 404
        assert "alice" not in reply.text and "s1" not in reply.text
    assert manager.closed == [] and manager.calls == []
    mine = await http.post(url(door), json=LISTING, headers=session)
    assert mine.status_code == 200 and "get_current_time" in mine.text


async def test_requests_without_a_session_leave_no_session_behind(door: RunningDoor, http: httpx2.AsyncClient,
                                                                  manager: FakeManager) -> None:  # fmt: skip
    bodies: list[Any] = [LISTING, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                         {"jsonrpc": "2.0", "id": 9, "result": {}}, [INIT, INIT], "x"]  # fmt: skip
    for _ in range(40):
        for body in bodies:
            reply = await http.post(url(door), json=body, headers=ALICE)
            assert reply.status_code == 400
    sdk = door.app._doors["time"]
    assert len(sdk._server_instances) == 0 and len(door.app.sessions) == 0 and manager.opens == []


async def test_a_refused_request_names_no_session(door: RunningDoor, http: httpx2.AsyncClient) -> None:
    notification = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    for verb, body in (("POST", LISTING), ("POST", notification), ("POST", "x"), ("GET", None), ("DELETE", None)):
        reply = await http.request(verb, url(door), json=body, headers={**ALICE, "accept": "text/event-stream"}
                                   if verb == "GET" else ALICE)  # fmt: skip
        assert reply.status_code == 400, verb
        assert "mcp-session-id" not in reply.headers
        error = _error(reply)
        assert error["code"] == types.INVALID_REQUEST and "initialize" in error["message"]
        assert error["data"] == {"status": "INVALID_ARGUMENT"}
    unparsed = await http.post(url(door), content=b"{", headers=ALICE)
    assert unparsed.status_code == 400 and _error(unparsed)["code"] == types.PARSE_ERROR
    assert "mcp-session-id" not in unparsed.headers
    put = await http.put(url(door), json=LISTING, headers=ALICE)
    assert put.status_code == 405 and put.headers["allow"] == "GET, POST, DELETE" and _error(put)


async def test_an_initialize_notification_opens_nothing(door: RunningDoor, http: httpx2.AsyncClient,
                                                        manager: FakeManager) -> None:  # fmt: skip
    reply = await http.post(url(door), json={k: v for k, v in INIT.items() if k != "id"}, headers=ALICE)
    assert reply.status_code == 400 and manager.opens == []


# -------------------------------------------------------------------------------------------- the sealed state


async def test_another_callers_request_state_is_refused_and_does_not_burn_it(
    door: RunningDoor, manager: FakeManager
) -> None:
    manager.input_required = types.InputRequiredResult(
        input_requests={"q": types.ElicitRequest(params=types.ElicitRequestFormParams(
            message="name?", requested_schema={"type": "object", "properties": {}}))},
        request_state="alice-server-state",
    )  # fmt: skip
    answers: Any = {"q": types.ElicitResult(action="accept", content={})}

    def client(token: str) -> Client:
        http = httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=30)
        return Client(streamable_http_client(url(door), http_client=http), mode=MODERN)

    async with client("mcpr_alice") as alice:
        first = await alice.session.call_tool("get_current_time", {}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult) and first.request_state
        token = first.request_state
    async with client("mcpr_bob") as bob:
        with pytest.raises(MCPError) as stolen:
            await bob.session.call_tool("get_current_time", {}, input_responses=answers, request_state=token)
        assert stolen.value.error.code == types.INVALID_PARAMS and "another caller" in stolen.value.error.message
        assert "alice" not in stolen.value.error.message
        with pytest.raises(MCPError) as elsewhere:  # nor for another request of its own
            await bob.session.get_prompt("greet", {}, request_state=token)
        assert elsewhere.value.error.code == types.INVALID_PARAMS
    assert notes[-1][0] == "validation" and notes[-1][2] == "bob"
    assert all("alice-server-state" not in json.dumps(note[3]) for note in notes)
    async with client("mcpr_alice") as alice:  # still good for its owner, once
        done = await alice.session.call_tool("get_current_time", {}, input_responses=answers, request_state=token)
        assert "state=alice-server-state" in done.content[0].text  # type: ignore[union-attr]
    assert all(call["caller"] != "bob" or call["exchange"].request_state is None for call in manager.calls)


# -------------------------------------------------------------------------------------------- hostile bodies


async def test_hostile_bodies_are_clear_errors(door: RunningDoor, http: httpx2.AsyncClient) -> None:
    session = await _session(http, door)
    deep = '{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"x","arguments":' + '{"a":' * 5000
    deep += "1" + "}" * 5000 + "}}"
    bodies = {
        "deep": (deep.encode(), 400, -32700),
        "non-utf-8": (b'{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"x":"\xff\xfe"}}', 400, -32700),
        "not json": (b"{'jsonrpc': '2.0'", 400, -32700),
        "huge": (b'{"x":"' + b"a" * 100_000 + b'"}', 413, types.INVALID_REQUEST),
    }
    for name, (body, status, code) in bodies.items():
        for headers in (session, _stateless("tools/list")):
            reply = await http.post(url(door), content=body, headers=headers)
            assert reply.status_code == status, (name, reply.text[:200])
            assert _error(reply)["code"] == code, name
    await _still_serving(http, door)


async def test_a_chunked_body_past_the_cap_is_413_without_a_length(door: RunningDoor, http: httpx2.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield b" " * 1024

    reply = await http.post(url(door), content=chunks(), headers=ALICE)
    assert reply.status_code == 413 and _error(reply)["code"] == types.INVALID_REQUEST


async def test_a_request_with_an_object_id_is_refused(door: RunningDoor, http: httpx2.AsyncClient) -> None:
    session = await _session(http, door)
    kinds = {"an object": {"x": 1}, "an array": [1], "a boolean": True, "null": None, "a number with a point": 2.5}
    for kind, value in kinds.items():
        for headers in (session, ALICE):  # in a session and before one
            reply = await http.post(url(door), json={**LISTING, "id": value}, headers=headers)
            assert reply.status_code == 400, kind
            error = _error(reply)
            assert error["code"] == types.INVALID_REQUEST and kind in error["message"], error
            assert reply.json()["id"] is None
    answer = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "could not read your request"}}
    accepted = await http.post(url(door), json=answer, headers=session)  # the one place JSON-RPC allows a null id
    assert accepted.status_code == 202


async def test_slow_bodies_do_not_hold_up_another_caller(door: RunningDoor, http: httpx2.AsyncClient) -> None:
    head = (f"POST /mcp/time HTTP/1.1\r\nHost: 127.0.0.1:{door.port}\r\nAuthorization: Bearer mcpr_alice\r\n"
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            "Content-Length: 60000\r\n\r\n{").encode()  # fmt: skip
    slow = []
    try:
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", door.port))
            sock.sendall(head)
            slow.append(sock)
        await asyncio.sleep(0)
        await _still_serving(http, door)
        reply = await http.post(url(door), json=INIT, headers=BOB)
        assert reply.status_code == 200
    finally:
        for sock in slow:
            sock.close()


async def test_many_held_streams_and_a_stop_end_cleanly(manager: FakeManager) -> None:
    running = await _door(manager, tokens=True)
    http = httpx2.AsyncClient(timeout=30)
    held = []
    for _ in range(20):
        session = await _session(http, running)
        stream = http.stream("GET", url(running), headers={**session, "accept": "text/event-stream"})
        held.append((stream, await stream.__aenter__()))
    assert all(answer.status_code == 200 for _, answer in held)
    second = await http.get(url(running), headers={**session, "accept": "text/event-stream"})
    assert second.status_code == 409  # one standalone stream per session
    await _still_serving(http, running)
    await running.stop()
    for stream, _ in held:
        await stream.__aexit__(None, None, None)
    await http.aclose()
    assert len(manager.closed) == len(manager.opens) and len(running.app.draining) == 0


async def test_input_responses_without_the_sealed_state_are_refused(door: RunningDoor, http: httpx2.AsyncClient,
                                                                    manager: FakeManager) -> None:  # fmt: skip
    """Every input-required result of the door carries a sealed state: responses without one answer no round."""
    answers = {"q": {"action": "accept", "content": {"name": "x"}}}
    call = {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
            "params": {"name": "get_current_time", "_meta": ENVELOPE, "inputResponses": answers}}  # fmt: skip
    for _ in range(2):
        reply = await http.post(url(door), json=call, headers=_stateless("tools/call", "get_current_time"))
        assert "error" in reply.json() and reply.json()["error"]["code"] == types.INVALID_PARAMS
    assert all(call["exchange"].input_responses is None for call in manager.calls)


async def test_a_stateless_caller_past_its_quota_gets_a_jsonrpc_error(door: RunningDoor, http: httpx2.AsyncClient,
                                                                      manager: FakeManager) -> None:  # fmt: skip
    from runner.errors import QuotaExceeded

    manager.open_error = QuotaExceeded("caller 'alice' has 10 sessions open, its limit is 10")
    reply = await http.post(
        url(door), json={**LISTING, "params": {"_meta": ENVELOPE}}, headers=_stateless("tools/list")
    )
    error = _error(reply)
    assert error == {"code": -32004, "message": manager.open_error.message, "data": {"status": "RESOURCE_EXHAUSTED"}}
    assert reply.status_code == 429  # as a refused initialize
    manager.open_error = None
    for verb in ("GET", "DELETE"):  # the stateless era is POST only
        refused = await http.request(
            verb, url(door), headers={**_stateless("tools/list"), "accept": "text/event-stream"}
        )
        assert refused.status_code == 405


async def test_deleting_a_session_with_a_call_in_flight_cancels_the_call(door: RunningDoor, http: httpx2.AsyncClient,
                                                                         manager: FakeManager) -> None:  # fmt: skip
    session = await _session(http, door)
    manager.call_gate = asyncio.Event()
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "get_current_time"}}
    in_flight = asyncio.create_task(http.post(url(door), json=call, headers=session))
    while not manager.calls:
        await asyncio.sleep(0.01)
    deleted = await http.delete(url(door), headers=session)
    assert deleted.status_code == 200
    ended = await in_flight
    assert manager.cancelled == ["get_current_time"] and manager.closed == ["s1"]
    answers = [json.loads(line[6:]) for line in ended.text.splitlines() if line.startswith("data: ")]
    answers = [message for message in answers if message.get("id") == 7]
    assert ended.status_code == 200 and len(answers) == 1, ended.text  # the stream had begun
    assert "the session was deleted" in answers[0]["error"]["message"]
    assert answers[0]["error"]["data"] == {"status": "FAILED_PRECONDITION"}


async def test_an_answered_session_request_gets_its_answer_alone(door: RunningDoor, http: httpx2.AsyncClient) -> None:
    session = await _session(http, door)
    call = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "get_current_time"}}
    reply = await http.post(url(door), json=call, headers=session)
    messages = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: ")]
    assert [("result" in m, m.get("id")) for m in messages if "id" in m] == [(True, 8)], reply.text


async def test_rebinding_and_content_type_refusals_are_jsonrpc_errors(door: RunningDoor, http: httpx2.AsyncClient,
                                                                      manager: FakeManager) -> None:  # fmt: skip
    refusals = [
        ({**ALICE, "host": "localhost.evil.example"}, 421, "PERMISSION_DENIED"),
        ({**ALICE, "host": "127.0.0.1:80@evil.example"}, 421, "PERMISSION_DENIED"),  # only a numeric port
        ({**ALICE, "host": "localhost:http"}, 421, "PERMISSION_DENIED"),
        ({**ALICE, "origin": "null"}, 403, "PERMISSION_DENIED"),
        ({**ALICE, "origin": "http://localhost.evil.example"}, 403, "PERMISSION_DENIED"),
        ({**ALICE, "origin": "http://127.0.0.1:80@evil.example"}, 403, "PERMISSION_DENIED"),
        ({**ALICE, "content-type": "text/plain"}, 400, "INVALID_ARGUMENT"),
    ]
    for headers, status, grpc_status in refusals:
        reply = await http.post(url(door), content=json.dumps(INIT), headers=headers)
        assert reply.status_code == status
        assert manager.opens == []
        error = _error(reply)
        assert error["code"] == types.INVALID_REQUEST and error["data"] == {"status": grpc_status}
    for host, origin in (("localhost", "http://localhost"), ("127.0.0.1:1", "https://127.0.0.1:65535"),
                         ("[::1]:8080", "http://[::1]:8080")):  # fmt: skip
        reply = await http.post(url(door), json=INIT, headers={**ALICE, "host": host, "origin": origin})
        assert reply.status_code == 200, (host, reply.text)


async def test_a_flood_of_requests_from_one_caller_leaves_another_served(
    door: RunningDoor, manager: FakeManager
) -> None:
    listing = {**LISTING, "params": {"_meta": ENVELOPE}}
    manager.call_gate = asyncio.Event()  # alice's calls pile up in the sandbox
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": {"name": "get_current_time", "arguments": {}, "_meta": ENVELOPE}}  # fmt: skip
    limits = httpx2.Limits(max_connections=300)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as alice, httpx2.AsyncClient(timeout=60) as bob:
        calls = [asyncio.create_task(alice.post(url(door), json=call, headers=_stateless(
            "tools/call", "get_current_time"))) for _ in range(100)]  # fmt: skip
        lists = [alice.post(url(door), json=listing, headers=_stateless("tools/list")) for _ in range(100)]
        listed = await asyncio.gather(*lists)
        assert {reply.status_code for reply in listed} == {200}
        opened = await bob.post(url(door), json=INIT, headers=BOB)
        assert opened.status_code == 200
        manager.call_gate.set()
        answered = await asyncio.gather(*calls)
    assert {reply.status_code for reply in answered} == {200}
    assert [(o.caller, o.protocol) for o in manager.opens] == [("alice", MODERN), ("bob", "2025-11-25")]
