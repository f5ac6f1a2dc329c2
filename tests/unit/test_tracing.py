"""Tracing's settings, its off path, the semantic-convention attributes and the caller's trace context."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from runner.config import ConfigError
from runner.errors import ToolNotFound
from runner.observe import tracing
from runner.observe.tracing import OFF, Entering, Tracing
from runner.settings_file import load_settings
from runner.settings_tracing import TracingModel, tracing_config

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
OTEL_ENV = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
)


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_ENV:
        monkeypatch.delenv(name, raising=False)


def memory_tracing() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider.get_tracer("test"), provider), exporter


# -- settings ------------------------------------------------------------------------------------------


def test_off_unless_configured() -> None:
    assert tracing_config(None, {}) is None
    assert load_settings(None).tracing is None


def test_standard_environment_turns_it_on_and_wins_over_the_file() -> None:
    on = tracing_config(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert on is not None and on.endpoint == "http://127.0.0.1:4317" and on.insecure
    model = TracingModel(otlp_endpoint="https://collector.example:4317", service_name="file-name")
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "env-name"}
    chosen = tracing_config(model, env)
    assert chosen is not None and chosen.endpoint == "http://127.0.0.1:9" and chosen.service_name == "env-name"


@pytest.mark.parametrize("env", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}])
def test_standard_switches_turn_it_off(env: dict[str, str]) -> None:
    assert tracing_config(TracingModel(), {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}) is None


def test_settings_file_key(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(
        "tracing:\n  otlp_endpoint: https://collector.example:4317\n  service_name: runner-a\n"
        "  sample_ratio: 0.25\n  headers: {x-api-key: abc}\n"
    )
    config = load_settings(path).tracing
    assert config is not None
    assert (config.endpoint, config.service_name, config.sample_ratio, config.insecure) == (
        "https://collector.example:4317",
        "runner-a",
        0.25,
        False,
    )
    assert dict(config.headers) == {"x-api-key": "abc"}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("tracing: {otlp_endpoint: 'collector:4317'}", "use http://HOST:PORT"),
        ("tracing: {otlp_endpoint: 'http://u:p@h:1'}", "no credentials"),
        ("tracing: {otlp_endpoint: 'http://h'}", "use http://HOST:PORT"),
        ("tracing: {sample_ratio: 2}", "less than or equal to 1"),
        ("tracing: {headers: {X-Key: v}}", "gRPC metadata keys are lowercase"),
        ("tracing: {headers: {k: \"a\\nb\"}}", "printable ASCII"),
        ("tracing: {insecure: true, otlp_endpoint: 'https://h:1'}", "tracing.insecure: true contradicts"),
        ("tracing: {endpoint: 'http://h:1'}", "endpoint"),
    ],
)
def test_bad_settings_say_what_to_fix(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert says in raised.value.message and str(path) in raised.value.message


def test_bad_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_ENDPOINT: 'localhost'"):
        tracing_config(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost"})


# -- the off path ---------------------------------------------------------------------------------------


async def test_off_creates_nothing_and_passes_params_through() -> None:
    threads = threading.active_count()
    assert Tracing.from_config(None) is OFF and not OFF.enabled
    with OFF.request("tools/call", "s1", target="t") as span:
        assert span is None
        with tracing.step("sanitize") as inner:
            assert inner is None
        params = {"name": "t", "arguments": {}}
        with tracing.outgoing("tools/call", params) as sent:
            assert sent is params
    with Entering({"traceparent": PARENT}, {"rpc.system": "grpc"}), OFF.request("tools/list", "s1") as span:
        assert span is None
    OFF.shutdown()
    assert threading.active_count() == threads


def test_a_step_outside_a_traced_request_is_no_span() -> None:
    traced, exporter = memory_tracing()

    @tracing.traced_step("validate")
    def work(x: int) -> int:
        return x + 1

    assert work(1) == 2
    with tracing.step("audit write") as span:
        assert span is None
    assert exporter.get_finished_spans() == ()
    traced.shutdown()


# -- attributes -------------------------------------------------------------------------------------------


def test_request_attributes_follow_the_mcp_conventions() -> None:
    call = tracing.request_attributes("tools/call", "abc", "get_current_time", "2025-11-25")
    assert call == {
        "mcp.method.name": "tools/call",
        "mcp.session.id": "abc",
        "mcp.protocol.version": "2025-11-25",
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "get_current_time",
    }
    assert tracing.request_attributes("prompts/get", "s", "greet", "")["gen_ai.prompt.name"] == "greet"
    read = tracing.request_attributes("resources/read", "s", "mem://x", "")
    assert read["mcp.resource.uri"] == "mem://x" and "gen_ai.operation.name" not in read
    for method in ("resources/subscribe", "resources/unsubscribe"):
        assert tracing.request_attributes(method, "s", "mem://x", "")["mcp.resource.uri"] == "mem://x"
    assert tracing.span_name("tools/call", "get_current_time") == "tools/call get_current_time"
    assert tracing.span_name("resources/read", "mem://x") == "resources/read"  # URIs: high cardinality
    assert tracing.span_name("tools/list", "") == "tools/list"


def test_a_target_names_the_spans_only_once_known_valid() -> None:
    traced, exporter = memory_tracing()
    hostile = "evil\x1b[2J" + "x" * 10_000
    with traced.request("tools/call", "s", target=hostile):
        tracing.known_target("unused")  # the request span is renamed…
    with traced.request("tools/call", "s", target=hostile), tracing.outgoing("tools/list", {}):
        pass
    with traced.request("tools/list", "s"):
        tracing.known_target("echo")  # …but only of a method whose target names spans
    named, listing, unnamed, listed = exporter.get_finished_spans()
    assert named.name == "tools/call unused"
    assert unnamed.name == "tools/call" and listed.name == "tools/list"
    value = (unnamed.attributes or {})["gen_ai.tool.name"]
    assert isinstance(value, str) and value.isprintable() and len(value) == tracing.MAX_ATTRIBUTE_CHARS
    assert listing.name == "tools/list" and listing.kind is SpanKind.CLIENT

    exporter.clear()
    with traced.request("prompts/get", "s", target="greet"):
        with tracing.outgoing("prompts/get", {"name": "greet"}):
            pass  # the server answered: the name is the server's
        tracing.known_target("greet")
    refused = traced.request("prompts/get", "s", target="made-up")
    with pytest.raises(ToolNotFound), refused, tracing.outgoing("prompts/get", {"name": "made-up"}):
        raise ToolNotFound("no prompt 'made-up'")  # the server refused it
    with traced.request("tools/call", "s", target="echo"):
        tracing.known_target("echo")
        with tracing.outgoing("tools/call", {"name": "echo"}) as sent:
            assert sent["_meta"]["traceparent"]
    names = [(s.name, s.kind) for s in exporter.get_finished_spans()]
    assert names == [
        ("prompts/get greet", SpanKind.CLIENT),
        ("prompts/get greet", SpanKind.SERVER),
        ("prompts/get", SpanKind.CLIENT),
        ("prompts/get", SpanKind.SERVER),
        ("tools/call echo", SpanKind.CLIENT),
        ("tools/call echo", SpanKind.SERVER),
    ]
    traced.shutdown()


def test_an_open_is_named_by_a_configured_profile_only() -> None:
    traced, exporter = memory_tracing()
    with traced.open("time", "grpc", "2025-11-25", known=True):
        pass
    with traced.open("t\x00" * 500, "mcp-http", "2025-11-25", known=False):
        pass
    known, unknown = exporter.get_finished_spans()
    assert known.name == "open time" and (known.attributes or {})["mcp_runner.profile"] == "time"
    assert unknown.name == "open" and "mcp_runner.profile" not in (unknown.attributes or {})
    assert (unknown.attributes or {})["mcp_runner.door"] == "mcp-http"
    assert (unknown.attributes or {})["mcp.method.name"] == "initialize"
    assert (known.attributes or {})["mcp.method.name"] == "session/open"
    traced.shutdown()


def test_caller_text_is_cut_and_made_printable() -> None:
    assert tracing.cut("a\x1b[31mb") == "a\ufffd[31mb"
    assert len(tracing.cut("x" * 10_000)) == tracing.MAX_ATTRIBUTE_CHARS
    assert len(tracing.span_name("tools/call", "t" * 10_000)) == len("tools/call ") + tracing.MAX_ATTRIBUTE_CHARS


# -- the caller's trace context ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "carrier",
    [
        None,
        {},
        {"traceparent": 7},
        {"traceparent": "garbage"},
        {"traceparent": PARENT.upper()},
        {"traceparent": PARENT + "-extra"},
        {"traceparent": "ff" + PARENT[2:]},
        {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"},
        {"traceparent": "x" * 100_000},
    ],
)
def test_malformed_trace_context_is_ignored(carrier: dict[str, object] | None) -> None:
    assert tracing.remote_parent(carrier) is None


def test_a_bad_tracestate_is_dropped_silently_and_the_parent_kept(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for state in ("==a=b,,,", "k=" + "v" * 600, ",".join(f"k{i}=v" for i in range(40)), "Upper=v"):
        parent = tracing.remote_parent({"traceparent": PARENT, "tracestate": state})
        assert parent is not None
        context = trace.get_current_span(parent).get_span_context()
        assert format(context.trace_id, "032x") == PARENT.split("-")[1] and len(context.trace_state) == 0
    assert caplog.records == []
    kept = tracing.remote_parent({"traceparent": PARENT, "tracestate": "vendor=abc, other@sys=1"})
    assert kept is not None
    assert dict(trace.get_current_span(kept).get_span_context().trace_state) == {"vendor": "abc", "other@sys": "1"}


def test_server_bound_params_carry_the_span_without_overwriting_the_callers_meta() -> None:
    traced, exporter = memory_tracing()
    params = {"name": "t", "arguments": {}, "_meta": {"progressToken": 3, "tracestate": "mine=1"}}
    with traced.request("tools/call", "s", target="t"), tracing.outgoing("tools/call", params) as sent:
        pass
    client = next(s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT)
    assert client.context is not None
    trace_id, span_id = format(client.context.trace_id, "032x"), format(client.context.span_id, "016x")
    assert sent["_meta"]["traceparent"].startswith(f"00-{trace_id}-{span_id}-")  # flags: sampled (and random)
    assert sent["_meta"]["progressToken"] == 3 and sent["_meta"]["tracestate"] == "mine=1"
    assert params["_meta"] == {"progressToken": 3, "tracestate": "mine=1"}  # the caller's dict is not changed
    traced.shutdown()


def test_spans_nest_under_the_callers_context_and_errors_carry_the_status_name() -> None:
    traced, exporter = memory_tracing()
    entry: tracing.Attributes = {"rpc.system": "grpc", "rpc.method": "CallTool"}
    request = traced.request("tools/call", "s1", target="nope", protocol="2025-11-25")
    with pytest.raises(ToolNotFound), Entering({"traceparent": PARENT}, entry), request:
        with tracing.step("validate arguments"):
            pass
        raise ToolNotFound("session s1 has no tool 'nope'")
    step, request = exporter.get_finished_spans()
    assert request.name == "tools/call" and request.kind is SpanKind.SERVER  # "nope" was never known valid
    assert request.parent is not None and format(request.parent.span_id, "016x") == PARENT.split("-")[2]
    assert request.parent.is_remote and request.context is not None
    assert format(request.context.trace_id, "032x") == PARENT.split("-")[1]
    assert request.attributes is not None and request.attributes["rpc.system"] == "grpc"
    assert request.attributes["gen_ai.tool.name"] == "nope"
    assert request.status.status_code is StatusCode.ERROR and request.status.description == "NOT_FOUND"
    assert request.attributes["error.type"] == "ToolNotFound"
    assert step.name == "validate arguments" and step.parent is not None
    assert step.parent.span_id == request.context.span_id
    # Outside the request the caller's context is gone: a new request starts a trace of its own.
    with traced.request("tools/list", "s1"):
        pass
    alone = exporter.get_finished_spans()[-1]
    assert alone.parent is None
    traced.shutdown()


def test_configured_tracing_exports_from_a_thread_of_its_own() -> None:
    from runner.config import TracingConfig

    before = {t.ident for t in threading.enumerate()}
    on = Tracing.from_config(TracingConfig(endpoint="http://127.0.0.1:9"), "inst")
    try:
        assert on.enabled
        assert {t.ident for t in threading.enumerate()} - before  # the batch exporter's thread
    finally:
        on.shutdown()


def test_the_readmes_tracing_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL) if b.startswith("tracing:")]
    path = tmp_path / "settings.yaml"
    path.write_text(block, encoding="utf-8")
    config = load_settings(path).tracing
    assert config is not None and config.endpoint == "http://127.0.0.1:4317" and config.insecure
