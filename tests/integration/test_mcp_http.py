"""The HTTP door against the real service and real Docker: the SDK's own client, both protocol eras, the ``time``
profile, bearer tokens under a policy file.

The service is this module's own, its door on a free loopback port: alice and bob may use ``time``.
"""

from __future__ import annotations

import secrets
import socket
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api.auth import hash_token, new_token
from runner.audit import records
from runner.audit.reading import query
from runner.audit.records import AuditQuery
from tests.integration.conftest import Service, start_service, stop_service

pytestmark = pytest.mark.integration

JSON_SSE = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "it", "version": "1"}}}  # fmt: skip


@dataclass(frozen=True)
class Door:
    service: Service
    url: str
    alice: str
    bob: str


def _wait_for_port(listen: str, service: Service) -> None:
    host, _, port = listen.rpartition(":")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((host, int(port))) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the service's MCP door did not listen on {listen}:\n{service.log()}")


@pytest.fixture(scope="module")
def door(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    tmp = tmp_path_factory.mktemp("mcp-http")
    alice, bob = new_token(), new_token()
    (tmp / "policy.yaml").write_text(textwrap.dedent(f"""
        callers:
          alice: {{tokens: ["{hash_token(alice)}"], profiles: [time]}}
          bob: {{tokens: ["{hash_token(bob)}"], profiles: [time], max_sessions: 1}}
    """), encoding="utf-8")  # fmt: skip
    config = tmp / "settings.yaml"
    config.write_text("auth: {tokens: true}\npolicy: policy.yaml\npool: {}\n", encoding="utf-8")
    service = start_service(tmp, f"it-http-{secrets.token_hex(4)}", config=config)
    try:
        _wait_for_port(service.mcp_listen, service)
        yield Door(service, f"http://{service.mcp_listen}/mcp/time", alice, bob)
    finally:
        stop_service(service)


def _client(door: Door, token: str, mode: str) -> Client:
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=60)
    return Client(streamable_http_client(door.url, http_client=http), mode=mode)  # type: ignore[arg-type]


def _live_sessions(door: Door) -> set[str]:
    with door.service.client(token=door.alice) as client:
        return {
            s.session_id for s in client.list_sessions()
            if s.profile == "time" and s.state in (pb.SESSION_STATE_STARTING, pb.SESSION_STATE_READY)
        }  # fmt: skip


def _containers_of(door: Door, session_id: str) -> list[str]:
    return [c.id for c in door.service.containers() if c.labels.get("mcp-runner.session") == session_id]


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
async def test_both_eras_list_and_call_the_time_server(door: Door, mode: str) -> None:
    async with _client(door, door.alice, mode) as mcp:
        if mode == "legacy":  # a 2026-07-28 client pinned to its era learns the server from results' _meta
            assert mcp.server_info is not None and mcp.server_info.name == "mcp-runner/time"
        tools = await mcp.list_tools()
        assert "get_current_time" in [tool.name for tool in tools.tools]
        result = await mcp.call_tool("get_current_time", {"timezone": "UTC"})
        assert not result.is_error
        assert "UTC" in result.content[0].text  # type: ignore[union-attr]


async def test_delete_closes_the_sandbox(door: Door) -> None:
    before = _live_sessions(door)
    async with _client(door, door.alice, "legacy") as mcp:
        await mcp.list_tools()
        opened = _live_sessions(door) - before
        assert len(opened) == 1
        (session_id,) = opened
        assert _containers_of(door, session_id)
    # The client's exit sent DELETE: the sandbox is closed and its container removed.
    deadline = time.monotonic() + 30
    while (session_id in _live_sessions(door) or _containers_of(door, session_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_id not in _live_sessions(door)
    assert _containers_of(door, session_id) == []
    opens = query(door.service.audit_db, AuditQuery(session_id=session_id, kinds=(records.SESSION_OPEN,)))
    assert opens and opens[0].data["door"] == "mcp-http" and opens[0].caller == "alice"
    requests = query(door.service.audit_db, AuditQuery(session_id=session_id, kinds=(records.REQUEST,)))
    assert requests and all(record.data.get("door") == "mcp-http" for record in requests)


async def test_a_bad_token_is_401_and_a_wrong_host_is_refused(door: Door) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        for headers in ({}, {"authorization": f"Bearer {new_token()}"}):
            reply = await http.post(door.url, json=INIT, headers={**JSON_SSE, **headers})
            assert reply.status_code == 401
            assert reply.headers["www-authenticate"].startswith("Bearer")
        wrong_host = {**JSON_SSE, "authorization": f"Bearer {door.alice}", "host": "attacker.example:80"}
        reply = await http.post(door.url, json=INIT, headers=wrong_host)
        assert reply.status_code in (403, 421)


async def test_another_callers_session_is_not_found(door: Door) -> None:
    async with httpx2.AsyncClient(timeout=60) as http:
        alice = {**JSON_SSE, "authorization": f"Bearer {door.alice}"}
        opened = await http.post(door.url, json=INIT, headers=alice)
        assert opened.status_code == 200
        session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        bob = {**JSON_SSE, **session, "authorization": f"Bearer {door.bob}"}
        theirs = await http.post(door.url, json=listing, headers=bob)
        assert theirs.status_code == 404
        assert "get_current_time" not in theirs.text
        ended = await http.delete(door.url, headers={**alice, **session})
        assert ended.status_code == 200


async def test_a_flood_of_sessions_meets_the_callers_quota(door: Door) -> None:
    bob = {**JSON_SSE, "authorization": f"Bearer {door.bob}"}
    async with httpx2.AsyncClient(timeout=60) as http:
        first = await http.post(door.url, json=INIT, headers=bob)
        assert first.status_code == 200
        session = {"mcp-session-id": first.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        try:
            second = await http.post(door.url, json=INIT, headers=bob)
            assert second.status_code == 429 and "mcp-session-id" not in second.headers
            error = second.json()["error"]
            assert error["data"]["status"] == "RESOURCE_EXHAUSTED" and "1" in error["message"]
        finally:
            await http.delete(door.url, headers={**bob, **session})
