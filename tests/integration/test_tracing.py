"""OpenTelemetry traces from the real service (real Docker, the real ``time`` server) to a real OTLP/gRPC receiver
on loopback (tests/otlp_receiver.py): the spans' names, attributes and parent links; the caller's trace context
(gRPC metadata, the MCP door's ``_meta``, an ``initialize``'s too) as their parent; the runner's own context in the
server-bound ``_meta``; a span for every MCP request (ping, completion… through the door to the conformance
fixture server, ping over gRPC); names a caller made up (a tool, a profile) kept out of span names.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from runner.client import RunnerClient
from tests.integration.conftest import Service, start_service, stop_service
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.integration

SERVERS = Path(__file__).parent.parent / "servers"
OPEN_PARENT = "00-11111111111111111111111111111111-2222222222222222-01"
CALL_PARENT = "00-33333333333333333333333333333333-4444444444444444-01"
DOOR_PARENT = "00-55555555555555555555555555555555-6666666666666666-01"
INIT_PARENT = "00-99999999999999999999999999999999-aaaaaaaaaaaaaaaa-01"
LEVEL_PARENT = "00-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-cccccccccccccccc-01"
PING_PARENT = "00-abababababababababababababababab-cdcdcdcdcdcdcdcd-01"
COMPLETE_PARENT = "00-dddddddddddddddddddddddddddddddd-eeeeeeeeeeeeeeee-01"
MADE_UP_PARENT = "00-12121212121212121212121212121212-3434343434343434-01"


@dataclass(frozen=True)
class Traced:
    service: Service
    receiver: OtlpReceiver


@pytest.fixture(scope="module")
def traced(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    tmp = tmp_path_factory.mktemp("tracing")
    with OtlpReceiver() as receiver, pytest.MonkeyPatch.context() as env:
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
            env.delenv(name, raising=False)
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # the SDK's batch delay (5 s by default)
        config = tmp / "settings.yaml"
        tracing = {"otlp_endpoint": receiver.endpoint, "service_name": "runner-under-test",
                   "headers": {"x-collector-key": "k-123"}}  # fmt: skip
        meta_echo = {
            "image": "python-servers",
            "command": ["python3", "/srv/servers/meta_echo_server.py"],
            "mounts": [{"source": str(SERVERS), "target": "/srv/servers"}],
        }
        conformance = {  # a server offering completions, logging and subscriptions (as conformance-profiles.yaml)
            "image": "python-servers",
            "command": ["/opt/servers/bin/python3", "/srv/servers/conformance_server.py"],
            "mounts": [{"source": str(SERVERS), "target": "/srv/servers"}],
        }
        profiles = {"meta_echo": meta_echo, "conformance": conformance}
        config.write_text(yaml.safe_dump({"pool": {}, "tracing": tracing, "profiles": profiles}))
        service = start_service(tmp, f"it-trace-{secrets.token_hex(4)}", config=config)
        try:
            yield Traced(service, receiver)
        finally:
            stop_service(service)


def _one(spans: list[ReceivedSpan], name: str, kind: str = "SPAN_KIND_SERVER") -> ReceivedSpan:
    found = [s for s in spans if s.name == name and s.kind == kind]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def _children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_span_id == parent.span_id and s.trace_id == parent.trace_id]


def _in_trace(trace_id: str, name: str, kind: str = "SPAN_KIND_SERVER") -> Callable[[list[ReceivedSpan]], bool]:
    return lambda spans: any(s.trace_id == trace_id and s.name == name and s.kind == kind for s in spans)


def test_open_and_call_arrive_as_spans_under_the_callers_trace(traced: Traced) -> None:
    address = traced.service.address
    with RunnerClient(address, metadata=[("traceparent", OPEN_PARENT)]) as opener:
        opened = opener.open_session("time")
    with RunnerClient(address, metadata=[("traceparent", CALL_PARENT)]) as caller:
        result = caller.call_tool(opened.session_id, "get_current_time", {"timezone": "UTC"})
        caller.close_session(opened.session_id)
    assert not result.is_error

    call_trace = CALL_PARENT.split("-")[1]
    spans = traced.receiver.wait_for(_in_trace(call_trace, "tools/call get_current_time", "SPAN_KIND_CLIENT"))
    spans = traced.receiver.wait_for(_in_trace(OPEN_PARENT.split("-")[1], "open time"))

    opening = _one(spans, "open time")
    assert opening.trace_id == OPEN_PARENT.split("-")[1] and opening.parent_span_id == OPEN_PARENT.split("-")[2]
    assert opening.attributes["mcp.session.id"] == opened.session_id
    assert opening.attributes["rpc.system"] == "grpc" and opening.attributes["rpc.method"] == "OpenSession"
    assert opening.status == "STATUS_CODE_UNSET"
    assert opening.resource["service.name"] == "runner-under-test"
    (start,) = [s for s in _children(spans, opening) if s.name == "sandbox start"]
    # Docker starting the container, then the agent's handshake with the server inside it.
    assert sorted(s.name for s in _children(spans, start)) == ["agent handshake", "container start"]

    request = [s for s in spans if s.trace_id == call_trace and s.kind == "SPAN_KIND_SERVER"]
    assert [s.name for s in request] == ["tools/call get_current_time"]
    call = request[0]
    assert call.parent_span_id == CALL_PARENT.split("-")[2]
    assert call.attributes["mcp.method.name"] == "tools/call"
    assert call.attributes["gen_ai.tool.name"] == "get_current_time"
    assert call.attributes["gen_ai.operation.name"] == "execute_tool"
    assert call.attributes["mcp.session.id"] == opened.session_id
    assert call.attributes["mcp.protocol.version"] == opened.server.protocol_version
    assert call.attributes["rpc.system"] == "grpc" and call.attributes["rpc.method"] == "CallTool"
    steps = [s.name for s in _children(spans, call)]
    for step in ("validate arguments", "tools/call get_current_time", "validate result", "sanitize", "audit write"):
        assert step in steps, steps
    assert all(m.get("x-collector-key") == "k-123" for m in traced.receiver.metadata())


def test_a_refused_call_is_an_error_span_with_its_status(traced: Traced) -> None:
    parent = "00-77777777777777777777777777777777-8888888888888888-01"
    client = RunnerClient(traced.service.address, metadata=[("traceparent", parent)])
    with client, pytest.raises(Exception, match="no session"):
        client.call_tool("0123456789abcdef", "get_current_time", {})
    spans = traced.receiver.wait_for(_in_trace(parent.split("-")[1], "tools/call"))
    # No session, so no tool the server listed: the name the caller sent is an attribute, never the span's name.
    refused = _one([s for s in spans if s.trace_id == parent.split("-")[1]], "tools/call")
    assert refused.status == "STATUS_CODE_ERROR" and refused.status_message == "NOT_FOUND"
    assert refused.attributes["error.type"] == "SessionNotFound"
    assert refused.attributes["gen_ai.tool.name"] == "get_current_time"


def test_names_a_caller_made_up_never_name_spans(traced: Traced) -> None:
    made_up = f"made-up-{secrets.token_hex(8)}"  # a new name each time: one span name each, unless kept out
    with RunnerClient(traced.service.address, metadata=[("traceparent", MADE_UP_PARENT)]) as client:
        opened = client.open_session("time")
        with pytest.raises(Exception, match="has no tool"):
            client.call_tool(opened.session_id, made_up, {})
        with pytest.raises(Exception, match="no profile named"):
            client.open_session("no-such-profile-" + secrets.token_hex(4))
        client.close_session(opened.session_id)
    t = MADE_UP_PARENT.split("-")[1]
    expected = {"tools/call", "open", "open time"}
    spans = traced.receiver.wait_for(lambda got: expected <= {s.name for s in got if s.trace_id == t})
    mine = [s for s in spans if s.trace_id == t and s.kind == "SPAN_KIND_SERVER"]
    assert sorted(s.name for s in mine) == ["open", "open time", "tools/call"]
    call = _one(mine, "tools/call")
    assert call.status_message == "NOT_FOUND" and call.attributes["error.type"] == "ToolNotFound"
    named = call.attributes["gen_ai.tool.name"]
    assert named == made_up
    refused_open = _one(mine, "open")
    assert refused_open.status_message == "NOT_FOUND" and "mcp_runner.profile" not in refused_open.attributes
    assert _one(mine, "open time").attributes["mcp_runner.profile"] == "time"


def test_the_server_gets_the_runners_span_as_traceparent_in_meta(traced: Traced) -> None:
    malformed = "00-zzzz-1-01"  # ignored: the call is served, its trace the runner's own
    with RunnerClient(traced.service.address, metadata=[("traceparent", malformed)]) as client:
        opened = client.open_session("meta_echo")
        result = client.call_tool(opened.session_id, "meta", {})
        client.close_session(opened.session_id)
    meta = json.loads(result.content[0].text)
    version, trace_id, span_id, _flags = meta["traceparent"].split("-")
    assert version == "00"
    spans = traced.receiver.wait_for(_in_trace(trace_id, "tools/call meta", "SPAN_KIND_CLIENT"))
    client_span = _one([s for s in spans if s.trace_id == trace_id], "tools/call meta", "SPAN_KIND_CLIENT")
    assert client_span.span_id == span_id  # the server's parent: the runner's request to it
    request = _one([s for s in spans if s.trace_id == trace_id], "tools/call meta")
    assert client_span.parent_span_id == request.span_id and request.parent_span_id == ""


def _wait_for_port(listen: str) -> None:
    host, _, port = listen.rpartition(":")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((host, int(port))) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the MCP door did not listen on {listen}")


async def test_the_mcp_doors_meta_traceparent_is_the_parent(traced: Traced) -> None:
    _wait_for_port(traced.service.mcp_listen)
    http = httpx2.AsyncClient(timeout=60)
    url = f"http://{traced.service.mcp_listen}/mcp/time"
    async with Client(streamable_http_client(url, http_client=http), mode="legacy") as mcp:  # type: ignore[arg-type]
        result = await mcp.call_tool("get_current_time", {"timezone": "UTC"}, meta={"traceparent": DOOR_PARENT})
    assert not result.is_error
    trace_id = DOOR_PARENT.split("-")[1]
    spans = traced.receiver.wait_for(_in_trace(trace_id, "tools/call get_current_time"))
    call = _one([s for s in spans if s.trace_id == trace_id], "tools/call get_current_time")
    assert call.parent_span_id == DOOR_PARENT.split("-")[2]
    assert call.attributes["mcp.protocol.version"] == "2025-11-25"  # the client's, at the door
    assert "jsonrpc.request.id" in call.attributes and "rpc.system" not in call.attributes


def _answer(reply: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC answer of a POST to the door, sent as JSON or as the last event of an SSE stream."""
    assert reply.status_code == 200, reply.text
    if reply.headers["content-type"].startswith("text/event-stream"):
        events = [line[len("data:") :].strip() for line in reply.text.splitlines() if line.startswith("data:")]
        answer: dict[str, Any] = json.loads(events[-1])
    else:
        answer = reply.json()
    assert "result" in answer, answer
    return answer


async def test_a_door_sessions_initialize_and_every_request_carry_the_callers_parent(traced: Traced) -> None:
    _wait_for_port(traced.service.mcp_listen)
    url = f"http://{traced.service.mcp_listen}/mcp/conformance"
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "tracing-test", "version": "1"},
        "_meta": {"traceparent": INIT_PARENT}}}  # fmt: skip
    level = {"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel",
             "params": {"level": "error", "_meta": {"traceparent": LEVEL_PARENT}}}  # fmt: skip
    complete = {"jsonrpc": "2.0", "id": 3, "method": "completion/complete", "params": {
        "ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"},
        "argument": {"name": "arg1", "value": "a"}, "_meta": {"traceparent": COMPLETE_PARENT}}}  # fmt: skip
    async with httpx2.AsyncClient(timeout=120) as http:
        reply = await http.post(url, json=initialize, headers=headers)
        _answer(reply)
        session = {**headers, "mcp-session-id": reply.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post(url, json=initialized, headers=session)).status_code == 202
        assert _answer(await http.post(url, json=level, headers=session))["result"] == {}
        assert "completion" in _answer(await http.post(url, json=complete, headers=session))["result"]
        assert (await http.delete(url, headers=session)).status_code < 300

    init_trace, level_trace, complete_trace = (p.split("-")[1] for p in (INIT_PARENT, LEVEL_PARENT, COMPLETE_PARENT))
    traced.receiver.wait_for(_in_trace(init_trace, "open conformance"))
    traced.receiver.wait_for(_in_trace(level_trace, "logging/setLevel"))
    spans = traced.receiver.wait_for(_in_trace(complete_trace, "completion/complete"))

    opening = _one([s for s in spans if s.trace_id == init_trace], "open conformance")
    assert opening.parent_span_id == INIT_PARENT.split("-")[2]  # the initialize's own _meta
    assert opening.attributes["mcp.method.name"] == "initialize" and opening.attributes["jsonrpc.request.id"] == "1"
    (start,) = [s for s in _children(spans, opening) if s.name == "sandbox start"]
    assert sorted(s.name for s in _children(spans, start)) == ["agent handshake", "container start"]
    for trace_id, parent, method in ((level_trace, LEVEL_PARENT, "logging/setLevel"),
                                     (complete_trace, COMPLETE_PARENT, "completion/complete")):  # fmt: skip
        request = _one([s for s in spans if s.trace_id == trace_id], method)
        assert request.parent_span_id == parent.split("-")[2]
        _served_with_its_steps(spans, request, opening.attributes["mcp.session.id"])


def _served_with_its_steps(spans: list[ReceivedSpan], request: ReceivedSpan, session_id: str) -> None:
    """``request`` answered, in ``session_id``, with its request to the server and its audit write as steps."""
    assert request.status == "STATUS_CODE_UNSET" and request.attributes["mcp.session.id"] == session_id
    steps = _children(spans, request)
    assert [s.name for s in steps if s.kind == "SPAN_KIND_CLIENT"] == [request.name]  # the request to the server
    assert "audit write" in {s.name for s in steps}


def test_a_grpc_ping_is_a_request_span_with_its_request_to_the_server(traced: Traced) -> None:
    with RunnerClient(traced.service.address, metadata=[("traceparent", PING_PARENT)]) as client:
        opened = client.open_session("conformance")
        client.ping(opened.session_id)
        client.close_session(opened.session_id)
    # The session's ping (the protocol RPCs do not pass the caller's traceparent on yet: runner/api/protocol_rpcs.py).
    spans = traced.receiver.wait_for(
        lambda got: any(s.name == "ping" and s.attributes.get("mcp.session.id") == opened.session_id for s in got)
    )
    (ping,) = [s for s in spans if s.name == "ping" and s.attributes.get("mcp.session.id") == opened.session_id]
    assert ping.kind == "SPAN_KIND_SERVER" and ping.attributes["mcp.method.name"] == "ping"
    _served_with_its_steps(spans, ping, opened.session_id)
