"""The agent's stdlib MCP client, in process: what it sends, what it makes of each line a server writes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from runner.agent.client import MAX_SERVER_REQUESTS, PROTOCOL_VERSION, McpClient, RemoteError

JSON = dict[str, Any]


class Sink:
    """The server's stdin: records each message; ``blocked`` makes drain wait, as a server that stopped reading."""

    def __init__(self) -> None:
        self.sent: list[JSON] = []
        self.blocked = False
        self._unblocked = asyncio.Event()

    def write(self, data: bytes) -> None:
        assert data.endswith(b"\n") and data.count(b"\n") == 1
        self.sent.append(json.loads(data))

    async def drain(self) -> None:
        if self.blocked:
            await self._unblocked.wait()


class Server:
    """One client under test, with what it reported broken."""

    def __init__(self) -> None:
        self.sink = Sink()
        self.violations: list[str] = []
        self.client = McpClient(self.sink, self.violations.append)

    def say(self, message: JSON | bytes) -> None:
        self.client.received(message if isinstance(message, bytes) else json.dumps(message).encode())

    def answer(self, request_id: object, result: JSON) -> None:
        self.say({"jsonrpc": "2.0", "id": request_id, "result": result})

    async def last_request(self) -> JSON:
        for _ in range(10):
            await asyncio.sleep(0)
        return self.sink.sent[-1]


@pytest.fixture
def server() -> Server:
    return Server()


async def test_the_handshake_asks_for_nothing_and_hands_on_the_servers_answer_raw(server: Server) -> None:
    init = asyncio.ensure_future(server.client.initialize())
    request = await server.last_request()
    assert request == {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},  # no roots, sampling or elicitation
            "clientInfo": {"name": "mcp-sandbox-runner-agent", "version": "1.0.0"},
        },
    }
    raw = {"protocolVersion": "2025-06-18", "capabilities": {"x-odd": [1]}, "serverInfo": {"name": "s"}, "extra": 1}
    server.answer(1, raw)
    assert await init == raw
    assert server.sink.sent[-1] == {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert server.violations == []


async def test_an_initialize_answered_with_something_else_than_an_object_is_a_violation(server: Server) -> None:
    init = asyncio.ensure_future(server.client.initialize())
    await server.last_request()
    server.answer(1, ["not", "an", "object"])  # type: ignore[arg-type]
    assert server.violations == ["MCP server broke the protocol: its answer to request id 1 is not a result object"]
    init.cancel()


async def test_requests_get_the_clients_own_ids_and_answers_find_their_request(server: Server) -> None:
    first = asyncio.ensure_future(server.client.request("tools/list", {"cursor": "c"}))
    second = asyncio.ensure_future(server.client.request("ping", {}))
    await server.last_request()
    assert [(m["id"], m["method"], m["params"]) for m in server.sink.sent] == [
        (1, "tools/list", {"cursor": "c"}),
        (2, "ping", {}),
    ]
    server.answer("2", {})  # an id echoed as a string still finds its request
    server.answer(1, {"tools": []})
    assert await first == {"tools": []} and await second == {}
    server.say({"jsonrpc": "2.0", "id": 3, "error": {"code": -32602, "message": "no"}})  # never sent
    assert server.violations == [
        "MCP server broke the protocol: it answered request id 3, which the agent never sent "
        "(or which was already answered)"
    ]


async def test_an_error_answer_raises_with_its_code_and_message(server: Server) -> None:
    call = asyncio.ensure_future(server.client.request("tools/call", {"name": "x"}))
    await server.last_request()
    server.say({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "Unknown tool: x", "data": 1}})
    with pytest.raises(RemoteError) as caught:
        await call
    assert (caught.value.code, caught.value.message) == (-32602, "Unknown tool: x")


async def test_a_second_answer_is_a_violation(server: Server) -> None:
    call = asyncio.ensure_future(server.client.request("ping", {}))
    await server.last_request()
    server.answer(1, {})
    assert await call == {}
    server.answer(1, {})
    assert server.violations and "answered request id 1," in server.violations[0]


async def test_progress_is_asked_for_with_the_requests_id_and_relayed_while_it_runs(server: Server) -> None:
    heard: list[tuple[float, float | None, str | None]] = []
    params = {"name": "slow", "arguments": {}, "_meta": {"trace": "t"}}
    call = asyncio.ensure_future(server.client.request("tools/call", params, lambda *a: heard.append(a)))
    request = await server.last_request()
    assert request["params"]["_meta"] == {"trace": "t", "progressToken": 1}
    assert params["_meta"] == {"trace": "t"}, "the caller's params are not changed"
    for update in (
        {"progressToken": 1, "progress": 1, "total": 3, "message": "one"},
        {"progressToken": 1, "progress": 2},
        {"progressToken": 1, "progress": "two"},  # not a number: dropped
        {"progressToken": 1, "progress": True},  # nor is a boolean
        {"progressToken": 2, "progress": 9},  # someone else's token: dropped
    ):
        server.say({"jsonrpc": "2.0", "method": "notifications/progress", "params": update})
    server.answer(1, {"content": []})
    await call
    server.say({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 3}})
    assert heard == [(1.0, 3.0, "one"), (2.0, None, None)]
    assert server.violations == []


async def test_a_request_without_a_progress_sink_does_not_ask_for_progress(server: Server) -> None:
    call = asyncio.ensure_future(server.client.request("tools/list", {}))
    assert "_meta" not in (await server.last_request())["params"]
    call.cancel()


async def test_cancelling_a_request_tells_the_server_and_a_late_answer_is_dropped(server: Server) -> None:
    call = asyncio.ensure_future(server.client.request("tools/call", {"name": "slow"}, lambda *a: None))
    await server.last_request()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert server.sink.sent[-1] == {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}
    server.say({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}})
    server.answer(1, {"content": []})  # late: fine, once
    assert server.violations == []
    server.answer(1, {"content": []})
    assert server.violations and "answered request id 1," in server.violations[0]


async def test_a_servers_ping_is_answered_and_every_other_request_refused(server: Server) -> None:
    server.say({"jsonrpc": "2.0", "id": "p", "method": "ping"})
    for number, method in enumerate(("roots/list", "sampling/createMessage", "elicitation/create", "x/unknown")):
        server.say({"jsonrpc": "2.0", "id": number, "method": method, "params": {}})
    await server.last_request()
    not_found = {"code": -32601, "message": "Method not found"}
    assert server.sink.sent == [
        {"jsonrpc": "2.0", "id": "p", "result": {}},
        *({"jsonrpc": "2.0", "id": number, "error": not_found} for number in range(4)),
    ]
    server.say({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "hi"}})
    server.say({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    assert server.violations == []


async def test_server_requests_left_unread_are_bounded(server: Server) -> None:
    server.sink.blocked = True  # the server stopped reading: no answer is ever written out
    for number in range(MAX_SERVER_REQUESTS):
        server.say({"jsonrpc": "2.0", "id": number, "method": "roots/list"})
    await server.last_request()
    assert server.violations == []
    server.say({"jsonrpc": "2.0", "id": 0, "method": "roots/list"})
    assert server.violations == [
        "MCP server broke the protocol: it sent request id 0 again while the agent was still answering it"
    ]


async def test_more_unanswered_server_requests_than_the_bound_is_a_violation(server: Server) -> None:
    server.sink.blocked = True
    for number in range(MAX_SERVER_REQUESTS + 1):
        server.say({"jsonrpc": "2.0", "id": number, "method": "roots/list"})
    assert server.violations == [
        f"MCP server broke the protocol: it sent more than {MAX_SERVER_REQUESTS} requests without reading the answers"
    ]


async def test_a_server_request_it_cancels_no_longer_counts(server: Server) -> None:
    server.sink.blocked = True
    server.say({"jsonrpc": "2.0", "id": 5, "method": "roots/list"})
    server.say({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}})
    server.say({"jsonrpc": "2.0", "id": 5, "method": "roots/list"})
    assert server.violations == []


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"hello", "is not a JSON-RPC message (Expecting value"),
        (b'{"jsonrpc":"2.0","id":1,"result":{"x":NaN}}', "is not a JSON-RPC message (NaN is not JSON)"),
        (b"[" * 100_000 + b"]" * 100_000, "is not a JSON-RPC message"),
        (b"[1]", "not a JSON-RPC 2.0 object"),
        (b'{"id":1,"result":{}}', "not a JSON-RPC 2.0 object"),
        (b'{"jsonrpc":"2.0","id":1}', "no method, result or error"),
        (b'{"jsonrpc":"2.0","method":7}', "its method is no string"),
        (b'{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"m"}}', "both a result and an error"),
        (b'{"jsonrpc":"2.0","id":1,"error":{"code":"1","message":"m"}}', "no integer code and text message"),
        (b'{"jsonrpc":"2.0","id":1,"result":null}', "is not a result object"),
        (b'{"jsonrpc":"2.0","id":null,"result":{}}', "answered request id None"),
        (b'{"jsonrpc":"2.0","id":[1],"method":"ping"}', "which is no string or integer"),
    ],
)
async def test_lines_that_break_the_protocol(server: Server, line: bytes, problem: str) -> None:
    call = asyncio.ensure_future(server.client.request("ping", {}))
    await server.last_request()
    server.say(line)
    call.cancel()
    assert len(server.violations) == 1 and problem in server.violations[0], server.violations
    assert server.violations[0].startswith("MCP server broke the protocol: ")
    server.say(b"more garbage")  # nothing more is read once broken
    assert len(server.violations) == 1


async def test_an_error_about_no_request_and_blank_lines_are_ignored(server: Server) -> None:
    server.say({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}})
    server.say(b"   ")
    assert server.violations == []


async def test_a_long_id_is_quoted_in_whole_words(server: Server) -> None:
    server.answer("x " * 30 + "ghp_" + "a" * 36, {})
    assert "ghp_" not in server.violations[0] or "a" * 36 in server.violations[0]
