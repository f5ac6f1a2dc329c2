"""The spans SessionManager makes (FakeBackend, a real AuditStore, an in-memory exporter): open, each request and
its steps (every MCP request, the utilities too), the request to the server carrying the trace context in
``_meta``, and span names that only ever hold a name known valid."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import mcp_types
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from runner import errors
from runner.audit.store import AuditStore
from runner.config import Profile
from runner.observe.tracing import Entering, Tracing
from runner.sandbox.base import SandboxSpec
from runner.sandbox.fake import FakeBackend, FakeIO, Handler
from runner.sessions.journal import Journal
from runner.sessions.manager import SessionManager
from tests.unit.fake_agent import TOOLS, FakeAgent, frame
from tests.unit.test_manager import LIMITS, PROFILES, SETTINGS

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UTILITY_INIT = {
    "protocolVersion": "2025-06-18",
    "capabilities": {"tools": {}, "prompts": {}, "completions": {}, "logging": {}, "resources": {"subscribe": True}},
    "serverInfo": {"name": "utility", "version": "1.0"},
}
UTILITY_RESULTS: dict[str, dict[str, Any]] = {
    "ping": {},
    "logging/setLevel": {},
    "resources/subscribe": {},
    "resources/unsubscribe": {},
    "tools/list": {"tools": TOOLS},
    "resources/templates/list": {"resourceTemplates": [{"uriTemplate": "mem://{name}", "name": "mem"}]},
    "completion/complete": {"completion": {"values": ["Ada", "Alan"]}},
}
GREETING = {"messages": [{"role": "user", "content": {"type": "text", "text": "hello"}}]}


async def utility_agent(io: FakeIO) -> int:
    """A server offering completions, logging, subscriptions and one prompt (``greet``), answering in order."""
    await io.write(frame(type="ready", initialize=UTILITY_INIT))
    while line := await io.readline():
        message = json.loads(line)
        if message["type"] != "request":
            continue
        method, params = message["method"], message["params"]
        result = GREETING if method == "prompts/get" and params["name"] == "greet" else UTILITY_RESULTS.get(method)
        if result is None:
            await io.write(frame(type="error", id=message["id"], error={"code": -32602, "message": "unknown"}))
        else:
            await io.write(frame(type="result", id=message["id"], result=result))
    return 0


@dataclass
class Traced:
    manager: SessionManager
    exporter: InMemorySpanExporter
    agents: list[FakeAgent]

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    agents: list[FakeAgent] = []

    def by_command(spec: SandboxSpec) -> Handler:
        if spec.command[0] == "utility":
            return utility_agent
        agents.append(FakeAgent(spec.command[0]))
        return agents[-1]

    store = AuditStore(tmp_path / "audit.db")
    store.open()
    utility = Profile(name="utility", image="fake", command=("utility",), limits=LIMITS)
    settings = replace(SETTINGS, profiles=MappingProxyType({**PROFILES, "utility": utility}))
    manager = SessionManager(
        FakeBackend(by_command), settings, journal=Journal(store), tracing=Tracing(provider.get_tracer("t"), provider)
    )
    await manager.start()
    try:
        yield Traced(manager, exporter, agents)
    finally:
        await manager.shutdown()
        store.close()
        provider.shutdown()


def children(parent: ReadableSpan, spans: list[ReadableSpan]) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_open_and_a_tool_call_are_traced_with_their_steps(traced: Traced) -> None:
    opened = await traced.manager.open("good", caller="a")
    session_id = opened.info.session_id
    (open_span,) = traced.named("open good")
    assert open_span.kind is SpanKind.SERVER and attrs(open_span)["mcp.session.id"] == session_id
    assert attrs(open_span)["mcp_runner.start"] == "cold" and attrs(open_span)["mcp_runner.profile"] == "good"
    steps = {s.name for s in children(open_span, traced.spans())}
    assert {"sandbox start", "tools/list", "sanitize"} <= steps
    (start,) = traced.named("sandbox start")
    # The sandbox's start splits in two: the backend starting the container, then the agent's handshake.
    assert [s.name for s in children(start, traced.spans())] == ["container start", "agent handshake"]

    traced.exporter.clear()
    with Entering({"traceparent": PARENT}, {"rpc.system": "grpc", "rpc.method": "CallTool"}):
        await traced.manager.call_tool(session_id, "echo", {"text": "hi"}, caller="a")
    spans = traced.spans()
    (request,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert request.name == "tools/call echo"
    assert attrs(request) == {
        "mcp.method.name": "tools/call",
        "mcp.session.id": session_id,
        "mcp.protocol.version": opened.protocol,
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "echo",
        "rpc.system": "grpc",
        "rpc.method": "CallTool",
    }
    assert request.parent is not None and request.parent.is_remote
    assert format(request.parent.span_id, "016x") == PARENT.split("-")[2]
    names = [s.name for s in children(request, spans)]
    assert {"validate arguments", "validate result", "sanitize", "audit write"} <= set(names)
    assert "tools/call echo" in names  # the CLIENT span toward the server
    (client,) = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert client.context is not None
    sent = [m for m in traced.agents[0].seen if m.get("method") == "tools/call"][-1]["params"]
    trace_id, span_id = format(client.context.trace_id, "032x"), format(client.context.span_id, "016x")
    assert sent["_meta"]["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
    assert trace_id == PARENT.split("-")[1]
    assert sent["arguments"] == {"text": "hi"} and sent["name"] == "echo"


async def test_a_refused_request_is_an_error_span_with_its_status_name(traced: Traced) -> None:
    opened = await traced.manager.open("good", caller="a")
    traced.exporter.clear()
    with pytest.raises(errors.ToolNotFound):
        await traced.manager.call_tool(opened.info.session_id, "nope", {}, caller="a")
    (request,) = [s for s in traced.spans() if s.kind is SpanKind.SERVER]
    assert request.name == "tools/call"  # a name the server never listed names no span
    assert attrs(request)["gen_ai.tool.name"] == "nope"  # the conventions want it, as an attribute
    assert request.status.status_code is StatusCode.ERROR and request.status.description == "NOT_FOUND"
    assert attrs(request)["error.type"] == "ToolNotFound"
    # Only the tools were listed again (an unknown name may be a new tool); no call was sent.
    assert [s.name for s in traced.spans() if s.kind is SpanKind.CLIENT] == ["tools/list"]
    with pytest.raises(errors.SessionNotFound):
        await traced.manager.list_tools("no-such-session", caller="a")
    failed = traced.spans()[-1]
    assert failed.name == "tools/list" and failed.status.description == "NOT_FOUND"


async def test_a_refused_open_is_an_error_span(traced: Traced) -> None:
    with pytest.raises(errors.ProfileNotFound):
        await traced.manager.open("missing", caller="a")
    (span,) = traced.named("open")  # not a configured profile: its name stays out of the span's
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "NOT_FOUND"
    assert "mcp_runner.profile" not in attrs(span)


async def test_made_up_tool_names_never_name_spans(traced: Traced) -> None:
    opened = await traced.manager.open("good", caller="a")
    traced.exporter.clear()
    for made_up in (f"tool-{n}" for n in range(5)):
        with pytest.raises(errors.ToolNotFound):
            await traced.manager.call_tool(opened.info.session_id, made_up, {}, caller="a")
    with pytest.raises(errors.ToolNotFound):
        await traced.manager.call_tool(opened.info.session_id, "\x1b[31m" + "x" * 5000, {}, caller="a")
    assert {s.name for s in traced.spans() if s.kind is SpanKind.SERVER} == {"tools/call"}
    hostile = attrs(traced.spans()[-1])["gen_ai.tool.name"]
    assert hostile.isprintable() and len(hostile) == 256


async def test_every_mcp_request_gets_its_span_and_its_request_to_the_server(traced: Traced) -> None:
    opened = await traced.manager.open("utility", caller="a")
    session_id = opened.info.session_id
    traced.exporter.clear()
    manager = traced.manager
    with Entering({"traceparent": PARENT}, {"rpc.system": "grpc"}):
        await manager.ping(session_id, caller="a")
        ref = mcp_types.PromptReference(name="greet")
        argument = mcp_types.CompletionArgument(name="who", value="A")
        completed = await manager.complete(
            session_id, mcp_types.CompleteRequestParams(ref=ref, argument=argument), caller="a"
        )
        await manager.set_logging_level(session_id, "info", caller="a")
        await manager.subscribe(session_id, "mem://greeting", caller="a")
        await manager.unsubscribe(session_id, "mem://greeting", caller="a")
        await manager.list_resource_templates(session_id, caller="a")
    assert completed.completion.values == ["Ada", "Alan"]
    spans = traced.spans()
    requests = [s for s in spans if s.kind is SpanKind.SERVER]
    methods = ["ping", "completion/complete", "logging/setLevel", "resources/subscribe", "resources/unsubscribe",
               "resources/templates/list"]  # fmt: skip
    assert [s.name for s in requests] == methods
    for request in requests:
        assert request.parent is not None and request.parent.is_remote
        assert attrs(request)["mcp.session.id"] == session_id and attrs(request)["rpc.system"] == "grpc"
        steps = children(request, spans)
        assert [s.name for s in steps if s.kind is SpanKind.CLIENT] == [request.name], request.name
        assert "audit write" in {s.name for s in steps}, request.name
    subscribe = requests[3]
    assert attrs(subscribe)["mcp.resource.uri"] == "mem://greeting"


async def test_a_prompt_names_its_spans_once_the_server_answered_for_it(traced: Traced) -> None:
    opened = await traced.manager.open("utility", caller="a")
    traced.exporter.clear()
    got = await traced.manager.get_prompt(opened.info.session_id, "greet", {}, caller="a")
    assert got.value.messages[0].role == "user"
    with pytest.raises(errors.ServerError):
        await traced.manager.get_prompt(opened.info.session_id, "made-up", {}, caller="a")
    names = [(s.name, s.kind, s.status.status_code) for s in traced.spans() if s.kind is not SpanKind.INTERNAL]
    assert names == [
        ("prompts/get greet", SpanKind.CLIENT, StatusCode.UNSET),
        ("prompts/get greet", SpanKind.SERVER, StatusCode.UNSET),
        ("prompts/get", SpanKind.CLIENT, StatusCode.ERROR),
        ("prompts/get", SpanKind.SERVER, StatusCode.ERROR),
    ]


async def test_what_a_session_does_after_its_open_is_no_step_of_the_open(traced: Traced) -> None:
    opened = await traced.manager.open("crash_on_call", caller="a")
    # The sandbox dies during a call: the session's watcher (a task its open started) ends and records it.
    with pytest.raises(errors.SandboxCrashed):
        await traced.manager.call_tool(opened.info.session_id, "echo", {"text": "x"}, caller="a")
    await traced.manager.close(opened.info.session_id, caller="a")
    await traced.manager.shutdown()
    spans = traced.spans()
    (open_span,) = traced.named("open crash_on_call")
    assert open_span.end_time is not None
    late = [s for s in children(open_span, spans) if s.end_time is None or s.end_time > open_span.end_time]
    assert late == []
