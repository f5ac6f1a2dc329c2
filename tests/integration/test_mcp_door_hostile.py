"""Red team of the HTTP door on the real service and real Docker: hostile clients, a hostile server, load.

The service is this module's own (tokens for alice, bob, carol and dave; carol's call rate is tight, dave may
hold one session), its profiles the
talkback server (tests/servers/talkback_server.py), which plants a secret (``API_TOKEN``), an OSC-52 escape and a
prompt injection in what it says. Every refusal must be a clear HTTP/JSON-RPC error, nothing leaked, the service
SERVING afterwards. A test marked xfail(strict) documents a defect of the door: its reason names it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import sqlite3
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from runner.api.auth import hash_token, new_token
from runner.audit import records
from runner.audit.reading import query
from runner.audit.records import AuditQuery
from tests.integration.conftest import Service, start_service, stop_service
from tests.integration.test_mcp_http import _wait_for_port

pytestmark = pytest.mark.integration

SERVERS = Path(__file__).resolve().parent.parent / "servers"
LEAK = f"lk-{secrets.token_hex(12)}"
"""The talkback server's API_TOKEN: a profile secret, so redacted wherever it would reach a caller."""
OSC52_PAYLOAD = "cm0gLXJmIH4K"
JSON_SSE = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
LEGACY = "2025-11-25"
MODERN = "2026-07-28"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": LEGACY,
        "capabilities": {"elicitation": {}},
        "clientInfo": {"name": "red", "version": "1"},
    },
}
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/logLevel": "info",
}


@dataclass(frozen=True)
class Door:
    service: Service
    url: str
    alice: str
    bob: str
    carol: str
    dave: str

    def headers(self, token: str, **more: str) -> dict[str, str]:
        return {**JSON_SSE, "authorization": f"Bearer {token}", **more}


@pytest.fixture(scope="module")
def door(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    tmp = tmp_path_factory.mktemp("mcp-door-hostile")
    alice, bob, carol, dave = new_token(), new_token(), new_token(), new_token()
    (tmp / "leak.txt").write_text(LEAK + "\n", encoding="utf-8")
    (tmp / "policy.yaml").write_text(textwrap.dedent(f"""
        callers:
          alice: {{tokens: ["{hash_token(alice)}"], profiles: ["*"], max_sessions: 30}}
          bob: {{tokens: ["{hash_token(bob)}"], profiles: ["*"], max_sessions: 4}}
          carol: {{tokens: ["{hash_token(carol)}"], profiles: ["*"], rates: {{calls_per_s: 0.2, call_burst: 2}}}}
          dave: {{tokens: ["{hash_token(dave)}"], profiles: ["*"], max_sessions: 1}}
    """), encoding="utf-8")  # fmt: skip
    base = (
        f"image: python-servers, command: [python3, /srv/servers/talkback_server.py], "
        f"mounts: [{{source: {SERVERS}, target: /srv/servers}}], secrets: {{API_TOKEN: {{file: leak.txt}}}}"
    )
    config = tmp / "settings.yaml"
    config.write_text(
        "auth: {tokens: true}\npolicy: policy.yaml\npool: {}\nmax_sessions: 60\n"
        "mcp_http: {max_body_bytes: 262144}\n"
        f"profiles:\n  talkback: {{{base}}}\n  talkback_strict: {{{base}, sanitize: {{injection: block}}}}\n",
        encoding="utf-8",
    )
    service = start_service(tmp, f"it-red-{secrets.token_hex(4)}", config=config)
    try:
        _wait_for_port(service.mcp_listen, service)
        yield Door(service, f"http://{service.mcp_listen}/mcp/talkback", alice, bob, carol, dave)
    finally:
        stop_service(service)


def _client(door: Door, token: str, mode: str, url: str = "", **callbacks: Any) -> Client:
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=120)
    transport = streamable_http_client(url or door.url, http_client=http)
    return Client(transport, mode=mode, **callbacks)


def _text(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


def _assert_clean(text: str, where: str, *, quoted: bool = False) -> None:
    """No secret, no live escape; ``quoted``: the escape may be there made inert (``repr``'s ``\\x1b``)."""
    assert LEAK not in text, f"the secret reached {where}: {text[:300]!r}"
    assert "\x1b" not in text and "\x07" not in text, f"an escape reached {where}"
    assert quoted or OSC52_PAYLOAD not in text, f"the escape's payload reached {where}"


def _assert_serving(door: Door) -> None:
    assert door.service.healthy(), door.service.log()[-3000:]
    assert door.service.process.poll() is None


def _no_traceback(door: Door, *bodies: str) -> None:
    for body in bodies:
        assert "Traceback" not in body and 'File "' not in body, body[:500]
    assert "Traceback" not in door.service.log(), door.service.log()[-3000:]


@dataclass
class RawSession:
    http: httpx2.AsyncClient
    url: str
    headers: dict[str, str]

    async def post(self, message: Any) -> httpx2.Response:
        return await self.http.post(self.url, json=message, headers=self.headers)


@pytest.fixture
async def raw(door: Door) -> AsyncIterator[RawSession]:
    """A stateful session of alice driven by hand (initialize, initialized), deleted at the end."""
    async with httpx2.AsyncClient(timeout=120) as http:
        opened = await http.post(door.url, json=INIT, headers=door.headers(door.alice))
        assert opened.status_code == 200, opened.text
        session = RawSession(
            http,
            door.url,
            door.headers(
                door.alice, **{"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": LEGACY}
            ),
        )
        await session.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        try:
            yield session
        finally:
            await http.delete(door.url, headers=session.headers)


def _sse_results(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: {")]


async def _cut_mid_call(http_url: str, headers: dict[str, str], call: dict[str, Any]) -> None:
    """POSTs ``call``, reads up to its first SSE event (the tool is running in the sandbox), then just leaves."""
    async with (
        httpx2.AsyncClient(timeout=120) as leaving,
        leaving.stream("POST", http_url, json=call, headers=headers) as answer,
    ):
        assert answer.status_code == 200
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                assert "waiting for notifications/cancelled" in line
                break


async def _cancellations(call: Any) -> list[Any]:
    """The request ids the sandboxed server was told were cancelled, once it was told of one (bounded polling)."""
    seen: list[Any] = []
    for _ in range(100):
        seen = json.loads(_text(await call()))
        if seen:
            return seen
        await asyncio.sleep(0.1)
    return seen


# ------------------------------------------------------------------------------------------------ client leaving


async def test_a_session_client_leaving_mid_call_cancels_the_call_in_the_sandbox(door: Door, raw: RawSession) -> None:
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "wait", "arguments": {}}}
    await _cut_mid_call(raw.url, raw.headers, call)

    async def cancellations() -> types.CallToolResult:
        answer = await raw.post({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                                 "params": {"name": "cancellations", "arguments": {}}})  # fmt: skip
        return types.CallToolResult.model_validate(_sse_results(answer.text)[-1]["result"])

    assert len(await _cancellations(cancellations)) == 1
    _assert_serving(door)


async def test_a_stateless_client_leaving_mid_call_cancels_the_call_in_the_sandbox(door: Door) -> None:
    headers = door.headers(door.bob, **{"mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": "wait"})
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "wait", "arguments": {}, "_meta": ENVELOPE}}  # fmt: skip
    await _cut_mid_call(door.url, headers, call)
    async with _client(door, door.bob, MODERN) as mcp:
        assert len(await _cancellations(lambda: mcp.call_tool("cancellations", {}))) == 1
    _assert_serving(door)


# ------------------------------------------------------------------------------------------ a server talking back


@pytest.mark.parametrize("mode", ["legacy", MODERN])
async def test_a_flood_of_logs_and_list_changes_reaches_the_client_redacted(door: Door, mode: str) -> None:
    logs: list[types.LoggingMessageNotificationParams] = []
    others: list[Any] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async def on_message(message: Any) -> None:
        others.append(message)

    async with _client(
        door, door.alice, mode, logging_callback=on_log, message_handler=on_message, log_level="info"
    ) as mcp:
        result = await mcp.call_tool("chatter", {"n": 300})
        assert _text(result) == '"said 300"'
        again = await mcp.call_tool("cancellations", {})  # the session is still usable
        assert not again.is_error
    chatter = [log for log in logs if isinstance(log.data, dict) and "token" in log.data]
    assert chatter, "no log message of the server reached the client"
    assert len(chatter) <= 300
    for log in chatter:
        _assert_clean(json.dumps(log.data) + str(log.logger), "the client in a log message")
        assert log.data["token"] == "[REDACTED:secret]"
    _assert_clean(repr(others), "the client in a notification")
    _assert_clean(door.service.log(), "the service log")
    _assert_serving(door)


async def test_a_blocking_profile_keeps_the_injection_from_the_client(door: Door) -> None:
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    url = door.url.rsplit("/", 1)[0] + "/talkback_strict"
    async with _client(door, door.alice, "legacy", url, logging_callback=on_log, log_level="info") as mcp:
        await mcp.call_tool("chatter", {"n": 3})
    assert all("Ignore all previous instructions" not in json.dumps(log.data) for log in logs), logs[:1]


async def test_hundreds_of_server_requests_end_that_session_alone(door: Door) -> None:
    """A server sending more than 64 requests without reading the answers breaks the protocol: its session ends."""
    asked = 0

    async def accept(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        nonlocal asked
        asked += 1
        return types.ElicitResult(action="accept", content={})

    async with _client(door, door.alice, "legacy", elicitation_callback=accept) as mcp:
        with pytest.raises(MCPError) as ended:
            await mcp.call_tool("ask_many", {"n": 300})
        assert "more than 64 requests" in ended.value.error.message
        assert asked <= 64
        with pytest.raises(MCPError):  # its sandbox is gone
            await mcp.call_tool("cancellations", {})
    _no_traceback(door, ended.value.error.message)
    async with _client(door, door.alice, "legacy") as mcp:  # a new session is served
        assert not (await mcp.call_tool("cancellations", {})).is_error
    _assert_serving(door)


async def test_a_stray_answer_from_the_server_ends_its_session_and_leaks_nothing(door: Door) -> None:
    async with _client(door, door.alice, "legacy") as mcp:
        with pytest.raises(MCPError) as ended:
            await mcp.call_tool("stray_answer", {})
    message = ended.value.error.message
    assert "never sent" in message
    _assert_clean(message + json.dumps(ended.value.error.data), "the client in the session's end", quoted=True)
    _assert_clean(door.service.log(), "the service log", quoted=True)
    with sqlite3.connect(f"file:{door.service.audit_db}?mode=ro", uri=True) as db:
        for row in db.execute("SELECT * FROM records"):
            _assert_clean(" ".join(map(str, row)), "the audit log", quoted=True)
    _assert_serving(door)


async def test_an_elicitation_answer_breaking_its_schema_is_refused_to_the_server(door: Door) -> None:
    async def nameless(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"age": 3})

    async with _client(door, door.alice, "legacy", elicitation_callback=nameless) as mcp:
        answer = json.loads(_text(await mcp.call_tool("ask_name", {})))
    assert "result" not in answer and answer["error"]["code"] == -32602, answer
    server_requests = query(door.service.audit_db, AuditQuery(caller="alice", kinds=(records.SERVER_REQUEST,)))
    assert server_requests, "the server's request and the refused answer were not audited"


async def test_a_stateless_answer_breaking_its_schema_is_refused_and_the_state_still_good(door: Door) -> None:
    """A 2026-07-28 client on a 2025-only server: the elicitation is an input-required round; a bad answer is
    refused to the client by name, the sealed state not used up by it."""

    async def unused(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        raise AssertionError("the rounds are answered by hand here")

    async with _client(door, door.alice, MODERN, elicitation_callback=unused) as mcp:  # it declares elicitation
        asked = await mcp.session.call_tool("ask_name", {}, allow_input_required=True)
        assert isinstance(asked, types.InputRequiredResult) and asked.request_state
        (key,) = asked.input_requests or {}
        bad: Any = {key: types.ElicitResult(action="accept", content={"age": 3})}
        with pytest.raises(MCPError) as refused:
            await mcp.session.call_tool("ask_name", {}, input_responses=bad, request_state=asked.request_state)
        assert refused.value.error.code == -32602 and "requestedSchema" in refused.value.error.message
        good: Any = {key: types.ElicitResult(action="accept", content={"name": "ada"})}
        done = await mcp.session.call_tool("ask_name", {}, input_responses=good, request_state=asked.request_state)
        assert isinstance(done, types.CallToolResult)
        assert json.loads(_text(done))["result"]["content"] == {"name": "ada"}
        with pytest.raises(MCPError) as replayed:
            await mcp.session.call_tool("ask_name", {}, input_responses=good, request_state=asked.request_state)
        assert "already used" in replayed.value.error.message
    _assert_serving(door)


async def test_garbage_from_the_server_never_reaches_the_client(door: Door) -> None:
    asked: list[Any] = []

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action="decline")

    async def sample(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append(params)
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="x"), model="m")

    async with _client(door, door.alice, "legacy", elicitation_callback=elicit, sampling_callback=sample) as mcp:
        answers = json.loads(_text(await mcp.call_tool("garbage", {})))  # refused on the host, to the server
        assert not (await mcp.call_tool("cancellations", {})).is_error
    assert asked == []
    assert all("error" in answer for answer in answers), answers
    _assert_clean(json.dumps(answers), "the server's garbage answers")
    _assert_serving(door)


async def test_a_result_breaking_its_output_schema_is_refused_as_on_grpc(door: Door) -> None:
    with door.service.client(token=door.alice) as client, client.session("talkback") as opened:
        with pytest.raises(grpc.RpcError) as refused:
            client.call_tool(opened.session_id, "bad_output", {})
        grpc_code = refused.value.code()
    assert grpc_code == grpc.StatusCode.FAILED_PRECONDITION
    for mode in ("legacy", MODERN):
        async with _client(door, door.alice, mode) as mcp:
            with pytest.raises(MCPError) as door_refused:
                await mcp.call_tool("bad_output", {})
        error = door_refused.value.error
        assert error.code == -32006 and error.data == {"status": "FAILED_PRECONDITION"}, error
        assert "breaks its outputSchema" in error.message


# ------------------------------------------------------------------------------------------------ hostile clients


async def test_hostile_bodies_get_clear_errors_and_nothing_leaks(door: Door, raw: RawSession) -> None:
    nested: Any = 1
    for _ in range(900):  # under the parser's recursion limit: it reaches the runner's own checks
        nested = {"a": nested}
    attempts = {
        "huge": (b'{"x":"' + b"a" * 300_000 + b'"}', (413,)),
        "non-utf-8": (b'{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"x":"\xff\xfe"}}', (400,)),
        "batch": (json.dumps([{"jsonrpc": "2.0", "id": 4, "method": "tools/list"}]).encode(), (400,)),
        "deep": (json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                             "params": {"name": "wait", "arguments": nested}}).encode(), (200, 400)),
    }  # fmt: skip
    for name, (body, statuses) in attempts.items():
        answer = await raw.http.post(raw.url, content=body, headers=raw.headers)
        assert answer.status_code in statuses, (name, answer.status_code, answer.text[:300])
        errors = [m for m in ([answer.json()] if answer.headers.get("content-type", "").startswith("application/json")
                              else _sse_results(answer.text)) if "error" in m]  # fmt: skip
        assert errors, (name, answer.text[:300])
        _no_traceback(door, answer.text)
    listed = await raw.post({"jsonrpc": "2.0", "id": 6, "method": "tools/list"})
    assert "cancellations" in listed.text
    _assert_serving(door)


async def test_slow_bodies_and_held_streams_leave_the_door_to_other_callers(door: Door) -> None:
    host, _, port = door.service.mcp_listen.rpartition(":")
    slow: list[socket.socket] = []
    head = (f"POST /mcp/talkback HTTP/1.1\r\nHost: {door.service.mcp_listen}\r\nAuthorization: Bearer {door.alice}\r\n"
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            "Content-Length: 100000\r\n\r\n{").encode()  # fmt: skip
    async with httpx2.AsyncClient(timeout=120) as http:
        streams: list[Any] = []
        try:
            for _ in range(40):  # slowloris: bodies announced and never sent
                sock = socket.create_connection((host, int(port)))
                sock.sendall(head)
                slow.append(sock)
            for _ in range(10):  # sessions whose GET stream stays open
                opened = await http.post(door.url, json=INIT, headers=door.headers(door.alice))
                assert opened.status_code == 200
                session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": LEGACY}
                get = http.stream("GET", door.url, headers={**door.headers(door.alice), **session,
                                                            "accept": "text/event-stream"})  # fmt: skip
                streams.append((session, get, await get.__aenter__()))
            async with _client(door, door.bob, "legacy") as mcp:  # another caller is served meanwhile
                assert not (await mcp.call_tool("cancellations", {})).is_error
            _assert_serving(door)
        finally:
            for sock in slow:
                sock.close()
            for session, get, _ in streams:
                await get.__aexit__(None, None, None)
                await http.delete(door.url, headers={**door.headers(door.alice), **session})


async def test_another_callers_session_cannot_be_deleted_or_used(door: Door, raw: RawSession) -> None:
    session = {k: v for k, v in raw.headers.items() if k.startswith("mcp-")}
    async with httpx2.AsyncClient(timeout=60) as http:
        deleted = await http.delete(door.url, headers=door.headers(door.bob, **session))
        listed = await http.post(door.url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                                 headers=door.headers(door.bob, **session))  # fmt: skip
        streamed = await http.get(door.url, headers=door.headers(door.bob, **session, accept="text/event-stream"))
    assert deleted.status_code == listed.status_code == streamed.status_code == 404
    for answer in (deleted, listed, streamed):
        assert "alice" not in answer.text and "talkback" not in answer.text
    still = await raw.post({"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
    assert still.status_code == 200 and "cancellations" in still.text


async def test_a_flood_of_calls_meets_the_callers_rate_and_others_are_unaffected(door: Door) -> None:
    refused: list[MCPError] = []
    async with _client(door, door.carol, "legacy") as mcp:
        for _ in range(8):
            try:
                await mcp.call_tool("cancellations", {})
            except MCPError as exc:
                refused.append(exc)
    assert refused, "carol's calls were never limited"
    assert {exc.error.code for exc in refused} == {-32004}
    assert all(exc.error.data["status"] == "RESOURCE_EXHAUSTED" and exc.error.data["retryAfterMs"] > 0
               for exc in refused)  # fmt: skip
    async with _client(door, door.bob, MODERN) as mcp:
        assert not (await mcp.call_tool("cancellations", {})).is_error


async def test_guessed_session_ids_are_audited_and_throttled_as_on_grpc(door: Door) -> None:
    answers: list[int] = []
    since = time.time()
    async with httpx2.AsyncClient(timeout=60) as http:
        for _ in range(30):  # past the default refusal burst (20)
            guess = {"mcp-session-id": secrets.token_hex(16), "mcp-protocol-version": LEGACY}
            answer = await http.post(door.url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                                     headers=door.headers(door.bob, **guess))  # fmt: skip
            answers.append(answer.status_code)
            if answer.status_code == 429:
                assert int(answer.headers["retry-after"]) >= 1
                assert answer.json()["error"]["data"]["status"] == "RESOURCE_EXHAUSTED"
    assert set(answers) <= {404, 429}
    assert 429 in answers, "a caller guessing session ids was never throttled"
    refusals = query(door.service.audit_db, AuditQuery(caller="bob", since=since))
    guesses = [r for r in refusals if r.kind == records.REQUEST]
    assert len(guesses) == answers.count(404), "each guess answered 404 is on record, those throttled are not"
    assert {(r.data["method"], r.data["door"], r.data["outcome"]) for r in guesses} == {("tools/list", "mcp-http",
                                                                                          "error")}  # fmt: skip
    assert records.THROTTLE in {r.kind for r in refusals}  # a short note per run of throttled refusals


async def test_an_unknown_profile_is_audited_as_on_grpc(door: Door) -> None:
    since = time.time()
    with door.service.client(token=door.carol) as client, pytest.raises(grpc.RpcError):
        client.open_session("no-such-profile")
    (by_grpc,) = query(door.service.audit_db, AuditQuery(caller="carol", since=since))
    since = time.time()
    async with httpx2.AsyncClient(timeout=60) as http:  # carol: bob may be throttled by the test above
        refused = await http.post(door.url.rsplit("/", 1)[0] + "/no-such-profile", json=INIT,
                                  headers=door.headers(door.carol))  # fmt: skip
    assert refused.status_code == 404
    (by_door,) = query(door.service.audit_db, AuditQuery(caller="carol", since=since))
    assert (by_door.kind, by_door.data["outcome"], by_door.data["profile"]) == (
        by_grpc.kind, by_grpc.data["outcome"], by_grpc.data["profile"])
    assert by_door.data["door"] == "mcp-http"


async def test_a_call_in_flight_when_its_session_is_deleted_is_answered(door: Door) -> None:
    async with httpx2.AsyncClient(timeout=120) as http:
        opened = await http.post(door.url, json=INIT, headers=door.headers(door.alice))
        session = door.headers(door.alice, **{"mcp-session-id": opened.headers["mcp-session-id"],
                                              "mcp-protocol-version": LEGACY})  # fmt: skip
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "wait", "arguments": {}}}
        async with http.stream("POST", door.url, json=call, headers=session) as answer:
            lines = answer.aiter_lines()
            async for line in lines:
                if line.startswith("data: "):  # the tool runs in the sandbox
                    break
            deleted = await http.delete(door.url, headers=session)
            assert deleted.status_code == 200
            rest = [json.loads(line[len("data: ") :]) async for line in lines if line.startswith("data: ")]
    (ended,) = [message for message in rest if message.get("id") == 7]
    assert "the session was deleted" in ended["error"]["message"], ended
    assert ended["error"]["data"] == {"status": "FAILED_PRECONDITION"}
    _assert_serving(door)


async def test_a_stateless_caller_past_its_quota_gets_429_as_at_initialize(door: Door) -> None:
    listing = {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": ENVELOPE}}
    stateless = door.headers(door.dave, **{"mcp-protocol-version": MODERN, "mcp-method": "tools/list"})
    async with httpx2.AsyncClient(timeout=120) as http:
        opened = await http.post(door.url, json=INIT, headers=door.headers(door.dave))  # dave's one session
        assert opened.status_code == 200
        session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": LEGACY}
        try:
            refused = await http.post(door.url, json=listing, headers=stateless)
            second = await http.post(door.url, json=INIT, headers=door.headers(door.dave))
        finally:
            await http.delete(door.url, headers=door.headers(door.dave, **session))
    assert refused.status_code == second.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == second.json()["error"]["code"] == -32004
    assert refused.json()["error"]["data"] == {"status": "RESOURCE_EXHAUSTED"}


async def test_rebinding_refusals_are_jsonrpc_errors_and_want_a_numeric_port(door: Door) -> None:
    port = door.service.mcp_listen.rpartition(":")[2]
    async with httpx2.AsyncClient(timeout=60) as http:
        for host in (f"127.0.0.1:{port}@attacker.example", "127.0.0.1:x", "attacker.example"):
            refused = await http.post(door.url, json=INIT, headers=door.headers(door.alice, host=host))
            assert refused.status_code == 421, host
            assert refused.json()["error"]["data"] == {"status": "PERMISSION_DENIED"}
        for origin in (f"http://localhost:{port}@attacker.example", "null"):
            refused = await http.post(door.url, json=INIT, headers=door.headers(door.alice, origin=origin))
            assert refused.status_code == 403, origin
            assert refused.json()["error"]["code"] == types.INVALID_REQUEST
    _assert_serving(door)
