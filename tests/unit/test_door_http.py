"""The HTTP door against a fake SessionManager: the SDK's own client in both eras, over uvicorn on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from runner.api.auth import hash_token
from runner.certs import make_dev_certs
from runner.config import AuthConfig, McpHttpConfig, TlsConfig
from runner.door.http import DoorApp, RunningDoor, _bind, start_door
from runner.door.identity import HttpAuthenticator
from runner.errors import PermissionDenied, QuotaExceeded
from tests.unit.door_fakes import FakeManager

TOKENS = {"mcpr_alice": "alice", "mcpr_bob": "bob"}
JSON_SSE = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}

notes: list[tuple[str, str, str, Any]] = []


async def _door(manager: FakeManager, *, tokens: bool = False, max_body: int = 4 * 1024**2) -> RunningDoor:
    owners = {hash_token(token): caller for token, caller in TOKENS.items()}
    config = McpHttpConfig(listen="127.0.0.1:0", max_body_bytes=max_body)
    app = DoorApp(manager, config, ["time"], HttpAuthenticator(AuthConfig(tokens=tokens), owners.get),
                  lambda *note: notes.append(note))
    return await start_door(app, "127.0.0.1:0", tls=None, grace=1)


@pytest.fixture
async def manager() -> FakeManager:
    return FakeManager()


@pytest.fixture
async def door(manager: FakeManager) -> AsyncIterator[RunningDoor]:
    running = await _door(manager)
    yield running
    await running.stop()


def url(door: RunningDoor, profile: str = "time") -> str:
    return f"http://127.0.0.1:{door.port}/mcp/{profile}"


def client(door: RunningDoor, mode: str, token: str | None = None, profile: str = "time") -> Client:
    headers = {"authorization": f"Bearer {token}"} if token else None
    http = httpx2.AsyncClient(headers=headers, timeout=30)
    return Client(streamable_http_client(url(door, profile), http_client=http), mode=mode)  # type: ignore[arg-type]


async def test_stateful_session_opens_one_sandbox_and_delete_closes_it(door: RunningDoor, manager: FakeManager) -> None:
    async with client(door, "legacy") as mcp:
        assert mcp.server_info is not None and mcp.server_info.name == "mcp-runner/time"
        assert "mcp-time" in (mcp.server_info.title or "")
        assert mcp.server_capabilities.tools is not None and mcp.server_capabilities.experimental is None
        assert mcp.instructions == "tell the time"
        tools = await mcp.list_tools()
        assert [t.name for t in tools.tools] == ["get_current_time"]
        result = await mcp.call_tool("get_current_time", {"timezone": "UTC"})
        assert "get_current_time" in result.content[0].text  # type: ignore[union-attr]
    assert [(o.caller, o.door, o.protocol) for o in manager.opens] == [("anonymous", "mcp-http", "2025-11-25")]
    assert manager.closed == ["s1"]
    assert len(door.app.sessions) == 0


async def test_stateless_requests_share_the_callers_lease(door: RunningDoor, manager: FakeManager) -> None:
    async with client(door, "2026-07-28") as mcp:
        await mcp.list_tools()
        await mcp.call_tool("get_current_time", {})
        await mcp.call_tool("get_current_time", {"timezone": "UTC"})
    assert [(o.door, o.protocol) for o in manager.opens] == [("mcp-http", "2026-07-28")]
    assert {call["session"] for call in manager.calls} == {"s1"}
    assert len(door.app.leases) == 1


async def test_leases_are_per_caller(manager: FakeManager) -> None:
    running = await _door(manager, tokens=True)
    try:
        for token in ("mcpr_alice", "mcpr_bob", "mcpr_alice"):
            async with client(running, "2026-07-28", token) as mcp:
                await mcp.call_tool("get_current_time", {})
        assert [o.caller for o in manager.opens] == ["alice", "bob"]
    finally:
        await running.stop()
    assert sorted(manager.closed) == ["s1", "s2"]  # the service's stop closes every lease


async def test_missing_or_wrong_token_is_401_with_a_challenge(manager: FakeManager) -> None:
    running = await _door(manager, tokens=True)
    try:
        async with httpx2.AsyncClient() as http:
            for headers in ({}, {"authorization": "Bearer mcpr_nobody"}, {"authorization": "Basic x"}):
                reply = await http.post(url(running), json=INIT, headers={**JSON_SSE, **headers})
                assert reply.status_code == 401
                assert reply.headers["www-authenticate"].startswith("Bearer")
                assert reply.json()["error"]["data"]["status"] == "UNAUTHENTICATED"
        assert manager.opens == []
    finally:
        await running.stop()


async def test_dns_rebinding_host_and_origin(door: RunningDoor) -> None:
    async with httpx2.AsyncClient() as http:
        reply = await http.post(url(door), json=INIT, headers={**JSON_SSE, "host": "evil.example:80"})
        assert reply.status_code == 421
        reply = await http.post(url(door), json=INIT, headers={**JSON_SSE, "origin": "http://evil.example"})
        assert reply.status_code == 403


async def test_unknown_profile_is_404_with_a_jsonrpc_error(door: RunningDoor, manager: FakeManager) -> None:
    async with httpx2.AsyncClient() as http:
        reply = await http.post(url(door, "nope"), json=INIT, headers=JSON_SSE)
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert "no profile named 'nope'" in error["message"] and "time" in error["message"]
    assert manager.opens == []


async def test_body_over_the_cap_is_413(manager: FakeManager) -> None:
    running = await _door(manager, max_body=1024)
    try:
        async with httpx2.AsyncClient() as http:
            big = {**INIT, "params": {**INIT["params"], "pad": "x" * 2048}}  # type: ignore[dict-item]
            reply = await http.post(url(running), content=json.dumps(big), headers=JSON_SSE)
        assert reply.status_code == 413
        assert manager.opens == []
    finally:
        await running.stop()


async def test_another_callers_session_is_not_found(manager: FakeManager) -> None:
    running = await _door(manager, tokens=True)
    try:
        async with httpx2.AsyncClient() as http:
            alice = {**JSON_SSE, "authorization": "Bearer mcpr_alice"}
            opened = await http.post(url(running), json=INIT, headers=alice)
            assert opened.status_code == 200
            session = opened.headers["mcp-session-id"]
            probe = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
            headers = {**JSON_SSE, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
            theirs = await http.post(url(running), json=probe, headers={**headers, "authorization": "Bearer mcpr_bob"})
            made_up = await http.post(url(running), json=probe, headers={
                **headers, "mcp-session-id": "0" * 32, "authorization": "Bearer mcpr_bob"})
        assert theirs.status_code == made_up.status_code == 404
        assert theirs.json()["error"]["message"] == made_up.json()["error"]["message"]
    finally:
        await running.stop()


async def test_refused_open_is_a_jsonrpc_error_and_no_session(door: RunningDoor, manager: FakeManager) -> None:
    manager.open_error = QuotaExceeded("caller 'anonymous' has 10 sessions open, its limit is 10")
    async with httpx2.AsyncClient() as http:
        reply = await http.post(url(door), json=INIT, headers=JSON_SSE)
    assert reply.status_code == 429
    assert "mcp-session-id" not in reply.headers
    assert reply.json() == {"jsonrpc": "2.0", "id": 1, "error": {
        "code": -32004, "message": manager.open_error.message, "data": {"status": "RESOURCE_EXHAUSTED"}}}


async def test_runner_errors_become_jsonrpc_errors(door: RunningDoor, manager: FakeManager) -> None:
    manager.call_error = PermissionDenied("caller 'anonymous' may not call 'get_current_time' (rule: deny all)")
    for mode in ("legacy", "2026-07-28"):
        async with client(door, mode) as mcp:
            with pytest.raises(MCPError) as raised:
                await mcp.call_tool("get_current_time", {})
        assert raised.value.error.code == -32003
        assert raised.value.error.message == manager.call_error.message


async def test_approval_without_elicitation_names_the_id_and_the_retry_claims_it(
    door: RunningDoor, manager: FakeManager
) -> None:
    manager.needs_approval = True
    async with client(door, "legacy") as mcp:
        with pytest.raises(MCPError) as raised:
            await mcp.call_tool("get_current_time", {"timezone": "UTC"})
        assert "apr_0123456789abcdef" in raised.value.error.message
        assert raised.value.error.data["approvalId"] == "apr_0123456789abcdef"
        await mcp.call_tool("get_current_time", {"timezone": "UTC"})
    assert [call["approval_id"] for call in manager.calls] == ["", "apr_0123456789abcdef"]


async def test_approval_with_elicitation_asks_the_user(door: RunningDoor, manager: FakeManager) -> None:
    manager.needs_approval = True
    asked: list[str] = []

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="decline")

    http = httpx2.AsyncClient(timeout=30)
    mcp = Client(streamable_http_client(url(door), http_client=http), mode="legacy", elicitation_callback=answer)
    async with mcp:
        with pytest.raises(MCPError) as raised:
            await mcp.call_tool("get_current_time", {})
    assert "apr_0123456789abcdef" in asked[0] and "mcp-runner approvals approve" in asked[0]
    assert "given up" in raised.value.error.message


async def test_input_required_state_is_sealed_and_single_use(door: RunningDoor, manager: FakeManager) -> None:
    manager.input_required = types.InputRequiredResult(
        input_requests={"q": types.ElicitRequest(params=types.ElicitRequestFormParams(
            message="name?", requested_schema={"type": "object", "properties": {}}))},
        request_state="server-state",
    )
    async with client(door, "2026-07-28") as mcp:
        first = await mcp.session.call_tool("get_current_time", {}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult)
        token = first.request_state
        assert token and "server-state" not in token
        answers = {"q": types.ElicitResult(action="accept", content={})}
        done = await mcp.session.call_tool("get_current_time", {}, input_responses=answers, request_state=token)
        assert "state=server-state" in done.content[0].text  # type: ignore[union-attr]
        with pytest.raises(MCPError) as replayed:
            await mcp.session.call_tool("get_current_time", {}, input_responses=answers, request_state=token)
        assert replayed.value.error.code == -32602 and "already used" in replayed.value.error.message
        with pytest.raises(MCPError) as tampered:
            await mcp.session.call_tool("get_current_time", {}, input_responses=answers, request_state=token[:-2])
        assert "not issued by this runner" in tampered.value.error.message
    assert [note[0] for note in notes[-2:]] == ["validation", "validation"]


async def test_client_leaving_mid_call_cancels_it(door: RunningDoor, manager: FakeManager) -> None:
    manager.call_gate = asyncio.Event()
    for mode in ("legacy", "2026-07-28"):
        async with client(door, mode) as mcp:
            call = asyncio.create_task(mcp.call_tool("get_current_time", {}))
            while len(manager.calls) < (1 if mode == "legacy" else 2):
                await asyncio.sleep(0.01)
            call.cancel()
        for _ in range(300):
            if len(manager.cancelled) == (1 if mode == "legacy" else 2):
                break
            await asyncio.sleep(0.01)
    assert manager.cancelled == ["get_current_time", "get_current_time"]


async def test_stateless_approval_is_an_input_required_elicitation(door: RunningDoor, manager: FakeManager) -> None:
    manager.needs_approval = True
    asked: list[str] = []

    async def accept(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={})

    http = httpx2.AsyncClient(timeout=30)
    mcp = Client(streamable_http_client(url(door), http_client=http), mode="2026-07-28", elicitation_callback=accept)
    async with mcp:
        result = await mcp.call_tool("get_current_time", {"timezone": "UTC"})
    assert "apr_0123456789abcdef" in asked[0]
    assert "get_current_time" in result.content[0].text  # type: ignore[union-attr]
    assert [call["approval_id"] for call in manager.calls] == ["", "apr_0123456789abcdef"]


async def test_idle_sessions_and_leases_are_closed(manager: FakeManager) -> None:
    running = await _door(manager)
    try:
        async with client(running, "2026-07-28") as mcp:
            await mcp.list_tools()
        http = httpx2.AsyncClient()
        opened = await http.post(url(running), json=INIT, headers=JSON_SSE)
        assert opened.status_code == 200 and len(running.app.sessions) == 1
        await running.app.sessions.reap(now=0.0)  # not idle yet: the clock has not moved past its last use
        await running.app.leases.reap(now=0.0)
        assert manager.closed == []
        far = 10.0**9
        for _ in range(200):  # the server may finish its side of the answer just after the client read it
            await running.app.sessions.reap(now=far)
            await running.app.leases.reap(now=far)
            if len(manager.closed) == 2:
                break
            await asyncio.sleep(0.01)
        assert sorted(manager.closed) == ["s1", "s2"]
        session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        after = await http.post(url(running), json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                                headers={**JSON_SSE, **session})
        assert after.status_code == 404  # the client starts a new session
        await http.aclose()
    finally:
        await running.stop()


async def test_a_session_whose_sandbox_ended_is_not_found(door: RunningDoor, manager: FakeManager) -> None:
    async with httpx2.AsyncClient() as http:
        opened = await http.post(url(door), json=INIT, headers=JSON_SSE)
        manager.opens[0].state = manager.opens[0].state.__class__.FAILED
        session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        after = await http.post(url(door), json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                                headers={**JSON_SSE, **session})
    assert after.status_code == 404


async def test_tls_listener_with_client_certificates(manager: FakeManager, tmp_path: Any) -> None:
    certs = make_dev_certs(tmp_path, clients=["alice"])
    owners = {hash_token(token): caller for token, caller in TOKENS.items()}
    tls = TlsConfig(cert=certs.server_cert, key=certs.server_key, client_ca=certs.ca_cert)
    app = DoorApp(manager, McpHttpConfig(listen="127.0.0.1:0"), ["time"],
                  HttpAuthenticator(AuthConfig(mtls=True, tokens=True), owners.get), lambda *note: None)
    running = await start_door(app, "127.0.0.1:0", tls=tls, grace=1)
    endpoint = f"https://127.0.0.1:{running.port}/mcp/time"
    try:
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        context.load_cert_chain(*map(str, certs.clients["alice"]))
        async with httpx2.AsyncClient(verify=context) as http:
            reply = await http.post(endpoint, json=INIT, headers={**JSON_SSE, "authorization": "Bearer mcpr_alice"})
            assert reply.status_code == 200 and manager.opens[0].caller == "alice"
        without_certificate = ssl.create_default_context(cafile=str(certs.ca_cert))
        async with httpx2.AsyncClient(verify=without_certificate) as http:
            with pytest.raises(httpx2.HTTPError):
                await http.post(endpoint, json=INIT, headers={**JSON_SSE, "authorization": "Bearer mcpr_alice"})
    finally:
        await running.stop()


async def test_stop_ends_open_streams_and_closes_the_sandboxes(manager: FakeManager) -> None:
    running = await _door(manager)
    http = httpx2.AsyncClient(timeout=30)
    opened = await http.post(url(running), json=INIT, headers=JSON_SSE)
    session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    async with http.stream("GET", url(running), headers={"accept": "text/event-stream", **session}) as stream:
        assert stream.status_code == 200
        while len(running.app.draining) == 0:
            await asyncio.sleep(0.01)
        await running.stop()  # a standalone stream never ends on its own: the stop ends it
        async for _ in stream.aiter_bytes():  # to its proper end: no connection cut mid-chunk
            pass
    await http.aclose()
    assert manager.closed == ["s1"] and len(running.app.draining) == 0


async def test_a_2025_06_18_client_gets_its_version(door: RunningDoor) -> None:
    older = {**INIT, "params": {**INIT["params"], "protocolVersion": "2025-06-18"}}  # type: ignore[dict-item]
    async with httpx2.AsyncClient() as http:
        reply = await http.post(url(door), json=older, headers=JSON_SSE)
    assert reply.status_code == 200 and reply.headers["mcp-session-id"]
    data = next(line for line in reply.text.splitlines() if line.startswith("data: {"))
    assert json.loads(data.removeprefix("data: "))["result"]["protocolVersion"] == "2025-06-18"


async def test_a_session_post_cut_mid_call_cancels_the_call(door: RunningDoor, manager: FakeManager) -> None:
    manager.call_gate = asyncio.Event()
    async with httpx2.AsyncClient(timeout=30) as http:
        opened = await http.post(url(door), json=INIT, headers=JSON_SSE)
        headers = {**JSON_SSE, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        await http.post(url(door), json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "get_current_time"}}
        leaving = httpx2.AsyncClient(timeout=30)  # no notifications/cancelled: its connection just ends
        async with leaving, leaving.stream("POST", url(door), json=call, headers=headers):
            while not manager.calls:
                await asyncio.sleep(0.01)
    for _ in range(500):
        if manager.cancelled:
            break
        await asyncio.sleep(0.01)
    assert manager.cancelled == ["get_current_time"]


def test_the_listener_sends_small_answers_at_once() -> None:
    """Without TCP_NODELAY a small answer on a kept-alive connection waited out the client's delayed ACK (40 ms)."""
    listener = _bind("127.0.0.1:0")
    try:
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        listener.close()
