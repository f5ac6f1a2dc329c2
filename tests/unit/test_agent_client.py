"""The agent's stdlib MCP client, in process: what it sends, what it makes of each line a server writes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from runner.agent.client import MAX_SERVER_REQUESTS, PROTOCOL_VERSION, McpClient, RemoteError

JSON = dict[str, Any]


class Server:
    """One client under test: what it sent (and which of that the server has "read"), and what broke."""

    def __init__(self) -> None:
        self.sent: list[JSON] = []
        self.reading = True  # False: the server stopped reading, so nothing sent leaves the agent
        self.unwritten: list[Callable[[], None]] = []
        self.violations: list[str] = []
        self.client = McpClient(self.send, self.violations.append)

    def send(self, data: bytes, on_written: Callable[[], None] | None) -> None:
        assert data.endswith(b"\n") and data.count(b"\n") == 1
        self.sent.append(json.loads(data))
        if on_written is not None:
            if self.reading:
                on_written()
            else:
                self.unwritten.append(on_written)

    def say(self, message: JSON | bytes) -> None:
        self.client.received(message if isinstance(message, bytes) else json.dumps(message).encode())

    def answer(self, request_id: object, result: object) -> None:
        self.say({"jsonrpc": "2.0", "id": request_id, "result": result})


class Outcome:
    """Collects what one request's ``on_done`` heard."""

    def __init__(self) -> None:
        self.heard: list[JSON | RemoteError] = []

    def __call__(self, outcome: JSON | RemoteError) -> None:
        self.heard.append(outcome)


@pytest.fixture
def server() -> Server:
    return Server()


def test_the_handshake_declares_what_the_host_can_relay_and_hands_on_the_servers_answer_raw(server: Server) -> None:
    init = Outcome()
    server.client.initialize(init)
    assert server.sent == [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                # What the host's caller may answer through the agent (it may still decline each request).
                "capabilities": {
                    "sampling": {},
                    "elicitation": {"form": {}, "url": {}},
                    "roots": {"listChanged": True},
                },
                "clientInfo": {"name": "mcp-sandbox-runner-agent", "version": "1.0.0"},
            },
        }
    ]
    assert init.heard == []
    raw = {"protocolVersion": "2025-06-18", "capabilities": {"x-odd": [1]}, "serverInfo": {"name": "s"}, "extra": 1}
    server.answer(1, raw)
    assert init.heard == [raw]
    assert server.sent[-1] == {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert server.violations == []


def test_a_refused_initialize_is_not_acknowledged(server: Server) -> None:
    init = Outcome()
    server.client.initialize(init)
    server.say({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "Unsupported protocol version"}})
    [error] = init.heard
    assert isinstance(error, RemoteError) and (error.code, error.message) == (-32602, "Unsupported protocol version")
    assert [m.get("method") for m in server.sent] == ["initialize"]


def test_an_initialize_answered_with_something_else_than_an_object_is_a_violation(server: Server) -> None:
    init = Outcome()
    server.client.initialize(init)
    server.answer(1, ["not", "an", "object"])
    assert server.violations == ["MCP server broke the protocol: its answer to request id 1 is not a result object"]
    assert init.heard == []


@pytest.mark.parametrize("version", ["2026-07-28", "1999-01-01", None, 20251125])
def test_an_initialize_answered_with_a_version_the_agent_does_not_speak_ends_the_session(
    server: Server, version: object
) -> None:
    """The spec: a client that does not support the server's version disconnects (the SDK raised here). The lean
    client handed the answer on as ready, and the session ran on a revision nobody had agreed on."""
    init = Outcome()
    server.client.initialize(init)
    answer = {"capabilities": {}, "serverInfo": {"name": "s", "version": "1"}}
    server.answer(1, answer if version is None else {"protocolVersion": version, **answer})
    assert init.heard == []
    assert [m.get("method") for m in server.sent] == ["initialize"], "no notifications/initialized"
    [violation] = server.violations
    assert f"protocol version {version!r}" in violation and "does not speak" in violation


@pytest.mark.parametrize("version", ["2024-11-05", "2025-03-26", "2025-06-18", PROTOCOL_VERSION])
def test_an_initialize_answered_with_an_older_handshake_version_is_accepted(server: Server, version: str) -> None:
    init = Outcome()
    server.client.initialize(init)
    server.answer(1, {"protocolVersion": version, "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})
    assert len(init.heard) == 1 and server.violations == []
    assert server.sent[-1] == {"jsonrpc": "2.0", "method": "notifications/initialized"}


def test_requests_get_the_clients_own_ids_and_answers_find_their_request(server: Server) -> None:
    first, second = Outcome(), Outcome()
    assert server.client.request("tools/list", {"cursor": "c"}, first) == 1
    assert server.client.request("ping", {}, second) == 2
    assert [(m["id"], m["method"], m["params"]) for m in server.sent] == [
        (1, "tools/list", {"cursor": "c"}),
        (2, "ping", {}),
    ]
    server.answer("2", {})  # an id echoed as a string still finds its request
    server.answer(1, {"tools": []})
    assert first.heard == [{"tools": []}] and second.heard == [{}]
    server.say({"jsonrpc": "2.0", "id": 3, "error": {"code": -32602, "message": "no"}})  # never sent
    assert server.violations == [
        "MCP server broke the protocol: it answered request id 3, which the agent never sent "
        "(or which was already answered)"
    ]


def test_an_error_answer_carries_its_code_and_message(server: Server) -> None:
    call = Outcome()
    server.client.request("tools/call", {"name": "x"}, call)
    server.say({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "Unknown tool: x", "data": 1}})
    [error] = call.heard
    assert isinstance(error, RemoteError) and (error.code, error.message) == (-32602, "Unknown tool: x")


def test_a_second_answer_is_a_violation(server: Server) -> None:
    call = Outcome()
    server.client.request("ping", {}, call)
    server.answer(1, {})
    server.answer(1, {})
    assert call.heard == [{}]
    assert server.violations and "answered request id 1," in server.violations[0]


def test_progress_is_asked_for_with_the_requests_id_and_relayed_while_it_runs(server: Server) -> None:
    heard: list[tuple[float, float | None, str | None]] = []
    params = {"name": "slow", "arguments": {}, "_meta": {"trace": "t"}}
    server.client.request("tools/call", params, Outcome(), lambda *a: heard.append(a))
    assert server.sent[-1]["params"]["_meta"] == {"trace": "t", "progressToken": 1}
    assert params["_meta"] == {"trace": "t"}, "the caller's params are not changed"
    for update in (
        {"progressToken": 1, "progress": 1, "total": 3, "message": "one"},
        {"progressToken": 1, "progress": 2.5, "message": 7},  # a message that is no text is left out
        {"progressToken": 1, "progress": "two"},  # not a number: dropped
        {"progressToken": 1, "progress": True},  # nor is a boolean
        {"progressToken": 1, "progress": 3, "total": "3"},
        {"progressToken": 2, "progress": 9},  # someone else's token: dropped
    ):
        server.say({"jsonrpc": "2.0", "method": "notifications/progress", "params": update})
    server.answer(1, {"content": []})
    server.say({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 3}})
    assert heard == [(1.0, 3.0, "one"), (2.5, None, None)]
    assert server.violations == []


@pytest.mark.parametrize(
    "numbers", [b'"progress":1e999', b'"progress":-1e999', b'"progress":1,"total":1e999', b'"progress":1' + b"0" * 400]
)
def test_progress_no_frame_can_carry_is_dropped(server: Server, numbers: bytes) -> None:
    """JSON reads 1e999 as infinity and a 400-digit integer past a float: relayed, the frame writer refused the one
    (ValueError) and float() the other (OverflowError), and the agent died of an "internal agent error"."""
    heard: list[tuple[float, float | None, str | None]] = []
    server.client.request("tools/call", {"name": "slow"}, Outcome(), lambda *a: heard.append(a))
    server.say(b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,' + numbers + b"}}")
    assert heard == [] and server.violations == []


def test_a_request_without_a_progress_sink_does_not_ask_for_progress(server: Server) -> None:
    server.client.request("tools/list", {}, Outcome())
    assert "_meta" not in server.sent[-1]["params"]


def test_cancelling_a_request_tells_the_server_and_a_late_answer_is_dropped(server: Server) -> None:
    call, heard = Outcome(), []
    request_id = server.client.request("tools/call", {"name": "slow"}, call, lambda *a: heard.append(a))
    server.client.cancel(request_id)
    assert server.sent[-1] == {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}
    server.client.cancel(request_id)  # once only
    assert len(server.sent) == 2
    server.say({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}})
    server.answer(1, {"content": []})  # late: fine, once
    assert call.heard == [] and heard == [] and server.violations == []
    server.answer(1, {"content": []})
    assert server.violations and "answered request id 1," in server.violations[0]


def test_without_a_relay_a_servers_ping_is_answered_and_every_other_request_refused(server: Server) -> None:
    server.say({"jsonrpc": "2.0", "id": "p", "method": "ping"})
    for number, method in enumerate(("roots/list", "sampling/createMessage", "elicitation/create", "x/unknown")):
        server.say({"jsonrpc": "2.0", "id": number, "method": method, "params": {}})
    not_found = {"code": -32601, "message": "Method not found"}
    assert server.sent == [
        {"jsonrpc": "2.0", "id": "p", "result": {}},
        *({"jsonrpc": "2.0", "id": number, "error": not_found} for number in range(4)),
    ]
    server.say({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "hi"}})
    server.say({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    assert server.violations == []


def test_a_server_request_reusing_an_id_still_being_answered_is_a_violation(server: Server) -> None:
    server.reading = False
    server.say({"jsonrpc": "2.0", "id": 0, "method": "roots/list"})
    server.say({"jsonrpc": "2.0", "id": 0, "method": "roots/list"})
    assert server.violations == [
        "MCP server broke the protocol: it sent request id 0 again while the agent was still answering it"
    ]


def test_an_id_is_free_again_once_its_answer_is_written(server: Server) -> None:
    for _ in range(3 * MAX_SERVER_REQUESTS):
        server.say({"jsonrpc": "2.0", "id": 0, "method": "ping"})
    assert server.violations == [] and len(server.sent) == 3 * MAX_SERVER_REQUESTS


def test_more_unanswered_server_requests_than_the_bound_is_a_violation(server: Server) -> None:
    server.reading = False
    for number in range(MAX_SERVER_REQUESTS):
        server.say({"jsonrpc": "2.0", "id": number, "method": "roots/list"})
    assert server.violations == []
    server.unwritten.pop()()  # one answer got out: room for one more
    server.say({"jsonrpc": "2.0", "id": "one more", "method": "roots/list"})
    assert server.violations == []
    server.say({"jsonrpc": "2.0", "id": "too many", "method": "roots/list"})
    assert server.violations == [
        f"MCP server broke the protocol: it sent more than {MAX_SERVER_REQUESTS} requests without reading the answers"
    ]


def test_a_server_request_it_cancels_no_longer_counts(server: Server) -> None:
    server.reading = False
    server.say({"jsonrpc": "2.0", "id": 5, "method": "roots/list"})
    server.say({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "5"}})
    server.say({"jsonrpc": "2.0", "id": 5, "method": "roots/list"})
    assert server.violations == []


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"hello", "is not a JSON-RPC message (Expecting value"),
        (b'{"jsonrpc":"2.0","id":1,"result":{"x":NaN}}', "is not a JSON-RPC message (NaN is not JSON)"),
        (b"[" * 100_000 + b"]" * 100_000, "is not a JSON-RPC message"),
        (b"\xff\xfe", "is not a JSON-RPC message"),
        (b"[1]", "not a JSON-RPC 2.0 object"),
        (b'{"id":1,"result":{}}', "not a JSON-RPC 2.0 object"),
        (b'{"jsonrpc":"2.0","id":1}', "no method, result or error"),
        (b'{"jsonrpc":"2.0","method":7}', "its method is no string"),
        (b'{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"m"}}', "both a result and an error"),
        (b'{"jsonrpc":"2.0","id":1,"error":{"code":"1","message":"m"}}', "no integer code and text message"),
        (b'{"jsonrpc":"2.0","id":1,"error":{"code":true,"message":"m"}}', "no integer code and text message"),
        (b'{"jsonrpc":"2.0","id":1,"result":null}', "is not a result object"),
        (b'{"jsonrpc":"2.0","id":null,"result":{}}', "answered request id None"),
        (b'{"jsonrpc":"2.0","id":1.0,"result":{}}', "answered request id 1.0"),
        (b'{"jsonrpc":"2.0","id":[1],"method":"ping"}', "which is no string or integer"),
    ],
)
def test_lines_that_break_the_protocol(server: Server, line: bytes, problem: str) -> None:
    server.client.request("ping", {}, Outcome())
    server.say(line)
    assert len(server.violations) == 1 and problem in server.violations[0], server.violations
    assert server.violations[0].startswith("MCP server broke the protocol: ")
    server.say(b"more garbage")  # nothing more is read once broken
    assert len(server.violations) == 1


def test_an_error_about_no_request_and_blank_lines_are_ignored(server: Server) -> None:
    server.say({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}})
    server.say(b"   ")
    assert server.violations == [] and server.sent == []


def test_a_long_id_is_quoted_in_whole_words(server: Server) -> None:
    server.answer("x " * 30 + "ghp_" + "a" * 36, {})
    assert "ghp_" not in server.violations[0] or "a" * 36 in server.violations[0]
