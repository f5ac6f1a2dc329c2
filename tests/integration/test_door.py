"""The door against the real service: caller input the runner cannot hold is INVALID_ARGUMENT before anything
reaches a server, and a real server's invalid results are FAILED_PRECONDITION; never INTERNAL or UNKNOWN, the
service stays SERVING and its log holds no traceback.

The service is this module's own (its own instance, config and log), so the log it checks is only its own;
its ``door_results`` profile runs a small stdlib MCP server, written below, that answers each tool with one
kind of invalid result.
"""

from __future__ import annotations

import json
import secrets
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api._proto.mcp_runner.v1 import runner_pb2_grpc
from runner.audit import records
from runner.client import RunnerClient
from tests.integration.conftest import Service, start_service, stop_service

pytestmark = pytest.mark.integration

SERVERS = Path(__file__).resolve().parent.parent / "servers"

# Each tool's answer is written as raw JSON text, so it can hold what Python's json would not write.
BAD_SERVER = r'''
import json, sys

RESULTS = {
    "unknown_type": '{"content":[{"type":"video","data":"eA=="}]}',
    "missing_field": '{"content":[{"type":"text"}]}',
    "not_a_list": '{"content":"text"}',
    "not_finite": '{"content":[{"type":"text","text":"x"}],"structuredContent":{"n":1e999}}',
    "lone_surrogate": '{"content":[{"type":"text","text":"a\\ud800b"}]}',
    "huge_size": '{"content":[{"type":"resource_link","uri":"file:///a","name":"a","size":%d}]}' % 2**70,
    "too_deep": '{"content":[],"structuredContent":{"d":%s}}' % ("[" * 100 + "]" * 100),
}

def send(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()

for line in sys.stdin:
    if not line.strip():
        continue
    msg = json.loads(line)
    if "id" not in msg:
        continue
    rid, method = json.dumps(msg["id"]), msg.get("method")
    if method == "initialize":
        result = json.dumps({"protocolVersion": msg["params"].get("protocolVersion", "2025-06-18"),
                             "capabilities": {"tools": {}}, "serverInfo": {"name": "door-results", "version": "1"}})
    elif method == "tools/list":
        result = json.dumps({"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in RESULTS]})
    elif method == "tools/call":
        result = RESULTS[msg["params"]["name"]]
    else:
        result = "{}"
    send('{"jsonrpc":"2.0","id":%s,"result":%s}' % (rid, result))
'''


@pytest.fixture(scope="module")
def door(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("door")
    (tmp / "server").mkdir()
    (tmp / "server" / "bad_server.py").write_text(textwrap.dedent(BAD_SERVER), encoding="utf-8")
    config = tmp / "profiles.yaml"
    config.write_text(textwrap.dedent(f"""\
        reap_interval_s: 0.5
        max_sessions: 20
        pool: {{}}
        defaults:
          call_timeout_s: 20
        profiles:
          scripted:
            image: python-servers
            command: [python3, /srv/servers/scripted_server.py, good]
            mounts: [{{source: {json.dumps(str(SERVERS))}, target: /srv/servers}}]
          door_results:
            image: python-servers
            command: [python3, /srv/door/bad_server.py]
            mounts: [{{source: {json.dumps(str(tmp / "server"))}, target: /srv/door}}]
        """), encoding="utf-8")  # fmt: skip
    service = start_service(tmp, f"it-door-{secrets.token_hex(4)}", config=config)
    try:
        yield service
    finally:
        stop_service(service)


@pytest.fixture
def client(door: Service) -> Iterator[RunnerClient]:
    with door.client() as made:
        yield made


def code_and_details(call: object) -> tuple[grpc.StatusCode, str]:
    assert isinstance(call, grpc.RpcError)
    return call.code(), call.details() or ""  # type: ignore[attr-defined]


def still_fine(service: Service) -> None:
    assert service.healthy()
    assert "Traceback" not in service.log()


ARGUMENTS = [
    ('{"a": NaN}', "$.a: number is not finite"),
    ('{"a": [1, {"b": 1e999}]}', "$.a[1].b: number is not finite"),
    ('{"a": -Infinity}', "$.a: number is not finite"),
    ('{"text": "x\\ud800"}', "$.text: string holds a lone surrogate"),
    ('{"\\udc00": 1}', "key holds a lone surrogate"),
    ('{"a": ' + "[" * 65 + "]" * 65 + "}", "nesting is deeper than 64 levels"),
    ("[" * 100_000, "nesting is deeper than 64 levels"),
    ('{"a": {"n": 1' + "0" * 400 + "}}", "$.a.n: integer is beyond the range"),  # Infinity to most parsers
]


def test_caller_input_the_log_cannot_hold_never_reaches_the_server(door: Service, client: RunnerClient) -> None:
    with client.session("scripted") as opened, grpc.insecure_channel(door.address) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        for arguments_json, where in ARGUMENTS:
            request = pb.CallToolRequest(session_id=opened.session_id, tool="echo", arguments_json=arguments_json)
            for call in (stub.CallTool, lambda r, **kw: list(stub.CallToolStream(r, **kw))):
                with pytest.raises(grpc.RpcError) as caught:
                    call(request, timeout=20)
                code, details = code_and_details(caught.value)
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (arguments_json[:40], details)
                assert f"arguments_json: {where}" in details or where in details, details

        # Invalid UTF-8 in a string field (a lone surrogate encoded as UTF-8, a stray continuation byte).
        for method in ("OpenSession", "CallTool", "CallToolStream", "ReadResource", "GetPrompt", "DecideApproval"):
            for payload in (b"\x0a\x03\xed\xa0\x80", b"\x0a\x01\x80"):
                path = f"/mcp_runner.v1.Runner/{method}"
                with pytest.raises(grpc.RpcError) as caught:
                    if method == "CallToolStream":
                        list(channel.unary_stream(path)(payload, timeout=20))
                    else:
                        channel.unary_unary(path)(payload, timeout=20)
                code, details = code_and_details(caught.value)
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, details)
                assert "bad UTF-8" in details or "not a valid message" in details, details

        sent = list(client.query_audit(session_id=opened.session_id, kinds=[records.REQUEST_INTENT, records.REQUEST]))
        assert sent == [], [(r.kind, r.data_json[:200]) for r in sent]
        assert client.call_tool(opened.session_id, "echo", {"text": "after all that"}).text == "after all that"
        sent = list(client.query_audit(session_id=opened.session_id, kinds=[records.REQUEST_INTENT]))
        assert len(sent) == 1  # the one good call: the query does see what is sent
    still_fine(door)


@pytest.mark.parametrize(
    ("tool", "needle"),
    [
        # The agent passes results on as the server wrote them; the host parses them and refuses what does not fit.
        ("unknown_type", "not a valid MCP CallToolResult: content.0: unknown type 'video'"),
        ("missing_field", "not a valid MCP CallToolResult: content.0.text: Field required"),
        ("not_a_list", "not a valid MCP CallToolResult: content: Input should be a valid list"),
        ("lone_surrogate", "cannot be passed on: $.content[0].text: string holds a lone surrogate"),
        # 1e999 reads as infinity, which no frame can carry: the agent answers with an error naming it.
        ("not_finite", "holds a number JSON cannot carry"),
        ("huge_size", "declares a size of 1180591620717411303424 bytes"),
        ("too_deep", "$.structuredContent.d[0]"),
    ],
)
def test_a_servers_invalid_result_is_failed_precondition(
    door: Service, client: RunnerClient, tool: str, needle: str
) -> None:
    with client.session("door_results") as opened:
        with pytest.raises(grpc.RpcError) as caught:
            client.call_tool(opened.session_id, tool, {}, timeout=30)
        code, details = code_and_details(caught.value)
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        assert needle in details, details
    still_fine(door)

