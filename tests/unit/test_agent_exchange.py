"""The agent's client, in process: what the server asks and tells the client (relayed to the host), the host's
answers, and the 2026-07-28 era (discover, the per-request envelope). Host frames that carry them are parsed here too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import mcp_types
import pytest
from mcp_types.methods import validate_client_request
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from runner.agent import era
from runner.agent.client import MAX_SERVER_REQUESTS, McpClient, RemoteError
from runner.agent.frames import METHODS, AnswerFrame, RequestFrame, parse_host_frame
from tests.unit.agent_driver import PYTHON, AgentProcess

JSON = dict[str, Any]
CANNOT_CARRY = "a number JSON cannot carry (inf, NaN)"
ROOTS = {"roots": [{"uri": "file:///work", "name": "work"}]}


class Server:
    """One client under test, with a relay: what it sent the server, what it relayed to the host."""

    def __init__(self) -> None:
        self.sent: list[JSON] = []
        self.reading = True
        self.unwritten: list[Callable[[], None]] = []
        self.violations: list[str] = []
        self.asked: list[tuple[int, str, JSON]] = []
        self.told: list[tuple[str, JSON]] = []
        self.client = McpClient(
            self.send,
            self.violations.append,
            lambda rid, method, params: self.asked.append((rid, method, params)),
            lambda method, params: self.told.append((method, params)),
        )

    def send(self, data: bytes, on_written: Callable[[], None] | None) -> None:
        self.sent.append(json.loads(data))
        if on_written is not None:
            (on_written if self.reading else lambda: self.unwritten.append(on_written))()

    def say(self, message: JSON) -> None:
        self.client.received(json.dumps(message).encode())

    def connect(self, wanted: str = era.HANDSHAKE) -> list[tuple[str, JSON | RemoteError]]:
        heard: list[tuple[str, JSON | RemoteError]] = []
        self.client.connect(wanted, lambda protocol, outcome: heard.append((protocol, outcome)))
        return heard


def initialized(server: Server) -> Server:
    server.connect()
    server.say({"jsonrpc": "2.0", "id": 1, "result": {"protocolVersion": "2025-11-25", "capabilities": {}}})
    server.sent.clear()
    return server


@pytest.fixture
def server() -> Server:
    return initialized(Server())


DISCOVERED = {
    "supportedVersions": ["2025-11-25", "2026-07-28"],
    "capabilities": {"tools": {}},
    "instructions": "Be nice.",
    "resultType": "complete",
    "cacheScope": "public",
    "ttlMs": 0,
    "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "s", "version": "2"}},
}


# -- server requests relayed to the host --------------------------------------------------


def test_sampling_elicitation_and_roots_are_relayed_under_the_clients_own_ids(server: Server) -> None:
    server.say({"jsonrpc": "2.0", "id": "abc", "method": "roots/list"})
    server.say({"jsonrpc": "2.0", "id": 7, "method": "elicitation/create", "params": {"message": "name?"}})
    server.say({"jsonrpc": "2.0", "id": 1, "method": "sampling/createMessage", "params": {"maxTokens": 5}})
    assert server.asked == [
        (1, "roots/list", {}),
        (2, "elicitation/create", {"message": "name?"}),
        (3, "sampling/createMessage", {"maxTokens": 5}),
    ]
    assert server.sent == []  # nothing answered until the host does
    assert server.client.answer(1, ROOTS)
    assert server.client.answer(2, error={"code": -1, "message": "the user said no"})
    assert server.sent == [
        {"jsonrpc": "2.0", "id": "abc", "result": ROOTS},  # the server's own id, a string as it sent it
        {"jsonrpc": "2.0", "id": 7, "error": {"code": -1, "message": "the user said no"}},
    ]
    assert server.violations == []


def test_an_answer_to_no_waiting_request_is_refused(server: Server) -> None:
    server.say({"jsonrpc": "2.0", "id": 4, "method": "roots/list"})
    assert server.client.answer(1, ROOTS)
    assert not server.client.answer(1, ROOTS)  # a second answer
    assert not server.client.answer(99, ROOTS)  # never relayed
    assert len(server.sent) == 1


def test_an_answer_after_the_server_cancelled_its_request_is_not_sent(server: Server) -> None:
    server.say({"jsonrpc": "2.0", "id": 4, "method": "elicitation/create", "params": {}})
    server.say({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 4}})
    assert not server.client.answer(1, {"action": "cancel"})
    assert server.sent == []
    server.say({"jsonrpc": "2.0", "id": 4, "method": "elicitation/create", "params": {}})  # the id is free again
    assert server.asked[-1][0] == 2 and server.violations == []


def test_cancelling_the_hosts_request_leaves_the_servers_requests_answerable(server: Server) -> None:
    call = server.client.request("tools/call", {"name": "ask"}, lambda outcome: None)
    server.say({"jsonrpc": "2.0", "id": 0, "method": "elicitation/create", "params": {}})
    server.client.cancel(call)
    assert server.client.answer(1, {"action": "decline"})  # the server may still be waiting for it
    assert server.sent[-1] == {"jsonrpc": "2.0", "id": 0, "result": {"action": "decline"}}


def test_relayed_requests_count_until_answered_and_reuse_is_a_violation(server: Server) -> None:
    for number in range(MAX_SERVER_REQUESTS):
        server.say({"jsonrpc": "2.0", "id": number, "method": "roots/list"})
    server.say({"jsonrpc": "2.0", "id": 3, "method": "roots/list"})
    assert server.violations == [
        "MCP server broke the protocol: it sent request id 3 again while the agent was still answering it"
    ]


def test_more_relayed_requests_than_the_bound_is_a_violation(server: Server) -> None:
    for number in range(MAX_SERVER_REQUESTS):
        server.say({"jsonrpc": "2.0", "id": number, "method": "sampling/createMessage", "params": {}})
    server.client.answer(1, {"role": "assistant", "content": {"type": "text", "text": "x"}, "model": "m"})
    server.say({"jsonrpc": "2.0", "id": "one more", "method": "roots/list"})
    assert server.violations == []
    server.say({"jsonrpc": "2.0", "id": "too many", "method": "roots/list"})
    assert server.violations == [
        f"MCP server broke the protocol: it sent more than {MAX_SERVER_REQUESTS} requests without reading the answers"
    ]
    assert len(server.asked) == MAX_SERVER_REQUESTS + 1


def test_other_requests_and_params_no_frame_can_hold_are_refused_by_the_agent(server: Server) -> None:
    server.say({"jsonrpc": "2.0", "id": "p", "method": "ping"})
    server.say({"jsonrpc": "2.0", "id": 1, "method": "x/unknown", "params": {}})
    server.say({"jsonrpc": "2.0", "id": 2, "method": "roots/list", "params": [1]})
    assert server.sent == [
        {"jsonrpc": "2.0", "id": "p", "result": {}},
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "Method not found"}},
        {"jsonrpc": "2.0", "id": 2, "error": {"code": -32602, "message": "Invalid params: not an object"}},
    ]
    assert server.asked == []


def test_before_the_session_is_open_nothing_is_relayed() -> None:
    server = Server()
    server.connect()
    server.say({"jsonrpc": "2.0", "id": 9, "method": "roots/list"})
    server.say({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}})
    assert server.asked == [] and server.told == []
    assert server.sent[-1] == {"jsonrpc": "2.0", "id": 9, "error": {"code": -32601, "message": "Method not found"}}


# -- notifications relayed to the host -------------------------------------------------------


def test_the_notifications_a_caller_can_use_are_relayed_and_the_rest_dropped(server: Server) -> None:
    log = {"level": "info", "data": {"n": 1}, "logger": "x"}
    server.say({"jsonrpc": "2.0", "method": "notifications/message", "params": log})
    for kind in ("tools", "resources", "prompts"):
        server.say({"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"})
    server.say({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "a://b"}})
    server.say({"jsonrpc": "2.0", "method": "notifications/elicitation/complete", "params": {"elicitationId": "e"}})
    server.say({"jsonrpc": "2.0", "method": "notifications/message", "params": "not an object"})
    assert server.told == [
        ("notifications/message", log),
        ("notifications/tools/list_changed", {}),
        ("notifications/resources/list_changed", {}),
        ("notifications/prompts/list_changed", {}),
        ("notifications/resources/updated", {"uri": "a://b"}),
    ]
    assert server.violations == [] and server.sent == []


# -- the 2026-07-28 era -----------------------------------------------------------------------


def test_the_modern_era_discovers_and_stamps_every_request_with_the_envelope() -> None:
    server = Server()
    heard = server.connect(era.MODERN)
    discover = server.sent[0]
    assert discover["method"] == "server/discover"
    envelope = discover["params"]["_meta"]
    assert envelope == {
        mcp_types.PROTOCOL_VERSION_META_KEY: "2026-07-28",
        mcp_types.CLIENT_INFO_META_KEY: {"name": "mcp-sandbox-runner-agent", "version": "1.0.0"},
        mcp_types.CLIENT_CAPABILITIES_META_KEY: era.CLIENT_CAPABILITIES,
    }
    # What the SDK's own 2026-07-28 wire types make of it: a discover request with a full envelope.
    validate_client_request("server/discover", "2026-07-28", discover["params"])
    server.say({"jsonrpc": "2.0", "id": 1, "result": DISCOVERED})
    assert heard == [
        (
            "2026-07-28",
            {
                "protocolVersion": "2026-07-28",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "s", "version": "2"},
                "instructions": "Be nice.",
            },
        )
    ]
    mcp_types.InitializeResult.model_validate(heard[0][1])
    assert server.sent[1:] == []  # no notifications/initialized: there is no handshake
    server.client.request("tools/call", {"name": "t", "_meta": {"custom": 1}}, lambda outcome: None, lambda *a: None)
    validate_client_request("tools/call", "2026-07-28", server.sent[-1]["params"])
    meta = server.sent[-1]["params"]["_meta"]
    assert meta == {**envelope, "custom": 1, "progressToken": 2}
    caller_can: JSON = {"elicitation": {"form": {}}}
    server.client.request("prompts/get", {"name": "p"}, lambda outcome: None, capabilities=caller_can)
    assert server.sent[-1]["params"]["_meta"][mcp_types.CLIENT_CAPABILITIES_META_KEY] == caller_can


def test_the_modern_era_passes_params_and_an_input_required_result_through() -> None:
    server = Server()
    server.connect(era.MODERN)
    server.say({"jsonrpc": "2.0", "id": 1, "result": DISCOVERED})
    heard: list[JSON | RemoteError] = []
    retry = {"name": "t", "inputResponses": {"k": {"action": "accept", "content": {}}}, "requestState": "s"}
    server.client.request("tools/call", retry, heard.append)
    sent = server.sent[-1]["params"]
    assert {key: sent[key] for key in retry} == retry
    input_required = {"resultType": "input_required", "inputRequests": {"k": {"method": "roots/list"}}}
    server.say({"jsonrpc": "2.0", "id": 2, "result": input_required})
    assert heard == [input_required]


def test_the_unnamed_server_of_a_discover_result_without_its_stamp() -> None:
    shaped = era.as_initialize_result({"supportedVersions": ["2026-07-28"], "capabilities": {}})
    assert shaped == {"protocolVersion": "2026-07-28", "capabilities": {}, "serverInfo": {"name": "", "version": ""}}
    assert era.MODERN in MODERN_PROTOCOL_VERSIONS


@pytest.mark.parametrize(
    "answer",
    [
        {"error": {"code": -32601, "message": "Method not found"}},
        {"error": {"code": -32602, "message": "Invalid request parameters"}},
        {"result": {"supportedVersions": ["2025-11-25"], "capabilities": {}}},
        {"result": {"supportedVersions": "2026-07-28", "capabilities": {}}},
        {"result": {"supportedVersions": ["2026-07-28"], "capabilities": None}},
    ],
)
def test_a_server_that_cannot_discover_is_initialized_instead(answer: JSON) -> None:
    server = Server()
    heard = server.connect(era.MODERN)
    server.say({"jsonrpc": "2.0", "id": 1, **answer})
    initialize = server.sent[-1]
    assert initialize["method"] == "initialize" and "_meta" not in initialize["params"]
    init_result = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "old", "version": "1"}}
    server.say({"jsonrpc": "2.0", "id": 2, "result": init_result})
    assert heard == [("2025-11-25", init_result)]
    server.client.request("tools/list", {}, lambda outcome: None)
    assert server.sent[-1]["params"] == {}  # no envelope in the handshake era


def test_the_handshake_era_is_the_default_and_an_unknown_one_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(era.PROTOCOL_ENV, raising=False)
    assert era.wanted_era() == "2025-11-25"
    monkeypatch.setenv(era.PROTOCOL_ENV, "2026-07-28")
    assert era.wanted_era() == "2026-07-28"
    monkeypatch.setenv(era.PROTOCOL_ENV, "2099-01-01")
    assert era.wanted_era() == "2025-11-25"


# -- host frames ----------------------------------------------------------------------------------


def test_answer_and_request_frames_from_the_host() -> None:
    assert parse_host_frame(b'{"type":"answer","id":3,"result":{"roots":[]}}') == AnswerFrame(3, {"roots": []})
    error = {"code": -1, "message": "no"}
    assert parse_host_frame(json.dumps({"type": "answer", "id": 3, "error": error}).encode()) == AnswerFrame(
        3, error=error
    )
    caps: JSON = {"sampling": {}}
    frame = {"type": "request", "id": 2, "method": "completion/complete", "params": {}, "capabilities": caps}
    assert parse_host_frame(json.dumps(frame).encode()) == RequestFrame(2, "completion/complete", {}, caps)
    for bad, why in [
        (b'{"type":"answer","id":3}', "needs a 'result' or an 'error'"),
        (b'{"type":"answer","id":3,"result":{},"error":{"code":1,"message":"m"}}', "not both"),
        (b'{"type":"answer","id":3,"result":[]}', "'result' is not an object"),
        (b'{"type":"answer","id":3,"error":{"code":"1","message":"m"}}', "integer 'code'"),
        (b'{"type":"answer","id":0,"result":{}}', "positive integer id"),
        (b'{"type":"request","id":1,"method":"ping","capabilities":[]}', "'capabilities' is not an object"),
    ]:
        parsed = parse_host_frame(bad)
        assert isinstance(parsed, str) and why in parsed, parsed


def test_the_methods_a_host_may_ask_for() -> None:
    assert {
        "resources/templates/list",
        "completion/complete",
        "logging/setLevel",
        "resources/subscribe",
        "resources/unsubscribe",
    } <= METHODS


# -- through the agent process: what no frame can carry --------------------------------------------

RAW_SERVER = r"""
import json, sys
def say(message):
    sys.stdout.write(json.dumps(message) + "\n"); sys.stdout.flush()
for line in sys.stdin:
    message = json.loads(line)
    if message.get("method") == "initialize":
        say({"jsonrpc": "2.0", "id": message["id"], "result": {"protocolVersion": "2025-11-25", "capabilities": {}}})
    elif message.get("method") == "tools/call":
        call = message["id"]
        sys.stdout.write('{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":1e999}}\n')
        sys.stdout.write('{"jsonrpc":"2.0","id":"r","method":"roots/list","params":{"x":1e999}}\n')
        sys.stdout.flush()
    elif message.get("id") == "r":
        say({"jsonrpc": "2.0", "id": call, "result": {"content": [], "answer": message}})
"""


async def test_a_server_request_no_frame_can_carry_is_refused_and_such_a_notification_dropped() -> None:
    agent = await AgentProcess.start(command=[PYTHON, "-c", RAW_SERVER])
    try:
        await agent.ready()
        await agent.request(1, "tools/call", {"name": "t", "arguments": {}})
        frame = await agent.recv()  # neither the notification nor the request came first
        assert frame["type"] == "result" and frame["id"] == 1
        assert frame["result"]["answer"]["error"] == {"code": -32602, "message": "Invalid params: " + CANNOT_CARRY}
        await agent.close_stdin()
        assert await agent.wait() == 0
        assert "dropped the server's notifications/message" in agent.stderr_text
    finally:
        await agent.aclose()
