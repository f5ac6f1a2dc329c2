"""OpenTelemetry traces from the real service (real Docker, the real ``time`` server) to a real OTLP/gRPC receiver
on loopback (tests/otlp_receiver.py): the spans' names, attributes and parent links; the caller's trace context
(gRPC metadata, the MCP door's ``_meta``) as their parent; the runner's own context in the server-bound ``_meta``.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

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
        config.write_text(yaml.safe_dump({"pool": {}, "tracing": tracing, "profiles": {"meta_echo": meta_echo}}))
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
    assert [s.name for s in _children(spans, start)] == ["agent handshake"]

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
    spans = traced.receiver.wait_for(_in_trace(parent.split("-")[1], "tools/call get_current_time"))
    refused = _one([s for s in spans if s.trace_id == parent.split("-")[1]], "tools/call get_current_time")
    assert refused.status == "STATUS_CODE_ERROR" and refused.status_message == "NOT_FOUND"
    assert refused.attributes["error.type"] == "SessionNotFound"


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
