"""Red team, traces (FakeBackend, in-memory exporter): hostile trace context never errors and never becomes the
parent; span attributes carry no secret and no unbounded caller input; sample_ratio 0 records nothing whatever the
caller's flags say; a dead collector never fails a span and shutdown ends.

Defects found are strict xfails whose reason starts with DEFECT.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from runner import errors
from runner.config import TracingConfig
from runner.observe import tracing
from runner.observe.tracing import Entering, Tracing
from tests.unit import test_tracing_manager
from tests.unit.test_tracing import memory_tracing
from tests.unit.test_tracing_manager import Traced

traced = test_tracing_manager.traced  # the fixture: a SessionManager over FakeBackend, spans kept in memory

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CALLER_TRACE = PARENT.split("-")[1]
SECRET = "sk-7c1d9e2b4a6f"  # within echo's maxLength (20)

HOSTILE_CARRIERS: list[dict[str, object]] = [
    {"traceparent": PARENT + "\n"},
    {"traceparent": " " + PARENT},
    {"traceparent": PARENT + "," + PARENT},
    {"traceparent": PARENT.replace("0", "\u0660")},  # Arabic-Indic digits: \d would take them
    {"traceparent": PARENT.replace("a", "\uff41")},  # fullwidth a
    {"traceparent": "00-" + "f" * 32 + "-" + "f" * 16 + "-01" + "\x00"},
    {"traceparent": b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    {"traceparent": ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]},
    {"traceparent": {"nested": PARENT}},
    {"traceparent": "0" * 1_000_000},
    {"tracestate": "a=b", "traceparent": None},
    {"TRACEPARENT": PARENT},
]


@pytest.mark.parametrize("carrier", HOSTILE_CARRIERS)
def test_hostile_trace_context_never_errors_nor_becomes_the_parent(carrier: dict[str, object]) -> None:
    traced_here, exporter = memory_tracing()
    with Entering(carrier, {"rpc.system": "grpc"}), traced_here.request("tools/list", "s"):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.parent is None and span.context is not None
    assert format(span.context.trace_id, "032x") != CALLER_TRACE
    traced_here.shutdown()


def test_a_huge_or_crowded_tracestate_is_dropped_and_the_valid_parent_kept() -> None:
    traced_here, exporter = memory_tracing()
    for state in ("k=" + "v" * 100_000, ",".join(f"k{i}=v" for i in range(10_000)), "k=\u00e9", "k=v\r\nx: y"):
        with Entering({"traceparent": PARENT, "tracestate": state}, {}), traced_here.request("ping", "s"):
            pass
    spans = exporter.get_finished_spans()
    assert len(spans) == 4
    for span in spans:
        assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT.split("-")[2]
        assert span.context is not None and len(span.context.trace_state) == 0
    traced_here.shutdown()


def _texts(span: ReadableSpan) -> list[str]:
    """Everything a span says that an exporter sends: its name, attribute values, status, events."""
    out = [span.name, span.status.description or ""]
    out += [str(v) for v in (span.attributes or {}).values()]
    for event in span.events:
        out += [event.name, *(str(v) for v in (event.attributes or {}).values())]
    return out


async def test_no_span_carries_arguments_or_results(traced: Traced) -> None:
    opened = await traced.manager.open("good", caller="a", labels={"token": SECRET})
    session_id = opened.info.session_id
    result = await traced.manager.call_tool(session_id, "echo", {"text": SECRET}, caller="a")
    assert SECRET in str(result)  # the server saw it and said it back
    with pytest.raises(errors.RunnerError):
        await traced.manager.call_tool(session_id, "echo", {"text": SECRET * 3}, caller="a")
    spans = traced.spans()
    assert len(spans) > 5
    assert not [t for s in spans for t in _texts(s) if SECRET in t]


async def test_caller_input_in_attributes_is_bounded_and_printable(traced: Traced) -> None:
    opened = await traced.manager.open("good", caller="a")
    traced.exporter.clear()
    with pytest.raises(errors.RunnerError):
        await traced.manager.list_tools("\x1b]0;" + "s" * 100_000, caller="a")
    with pytest.raises(errors.RunnerError):
        await traced.manager.read_resource(opened.info.session_id, "file:///" + "\u202e" * 100_000, caller="a")
    with Entering({"traceparent": PARENT}, {"jsonrpc.request.id": tracing.cut("9" * 100_000)}):
        await traced.manager.list_tools(opened.info.session_id, caller="a")
    texts = [t for s in traced.spans() if s.kind is SpanKind.SERVER for t in _texts(s)]
    assert len(texts) > 6
    assert all(len(t) <= tracing.MAX_ATTRIBUTE_CHARS and t.isprintable() for t in texts)


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_sample_ratio_zero_records_nothing_even_under_a_callers_sampled_parent() -> None:
    off = Tracing.from_config(TracingConfig(endpoint=f"http://127.0.0.1:{_dead_port()}", sample_ratio=0.0))
    kept = InMemorySpanExporter()
    off._provider.add_span_processor(SimpleSpanProcessor(kept))
    try:
        for carrier in (None, {"traceparent": PARENT}):
            request = off.request("tools/call", "s", target="t")
            with Entering(carrier, {}), request, tracing.step("validate arguments"), tracing.outgoing(
                "tools/call", {"name": "t"}
            ) as sent:
                assert sent["name"] == "t"
        assert kept.get_finished_spans() == ()
    finally:
        off.shutdown()


def test_a_dead_collector_fails_no_span_and_shutdown_ends() -> None:
    dead = Tracing.from_config(TracingConfig(endpoint=f"http://127.0.0.1:{_dead_port()}"))
    for n in range(2000):
        with dead.request("tools/call", f"s{n}", target="t"), tracing.step("audit write"):
            pass
    stopping = threading.Thread(target=dead.shutdown, daemon=True)
    stopping.start()
    stopping.join(120)  # generous: a failure bound, not a measurement
    assert not stopping.is_alive(), "shutdown hung on a dead collector"


class _Hanging(SpanExporter):
    """An exporter whose export waits (as one retrying a dead collector does) until it is shut down."""

    def __init__(self) -> None:
        self.exporting = threading.Event()
        self.released = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exporting.set()
        self.released.wait(300)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.released.set()


def test_shutdown_gives_up_on_a_hanging_export_after_its_bound() -> None:
    exporter = _Hanging()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=10))
    hanging = Tracing(provider.get_tracer("t"), provider, exporter)
    with hanging.request("ping", "s"):
        pass
    assert exporter.exporting.wait(60)  # the export thread is inside the hanging export
    stopping = threading.Thread(target=hanging.shutdown, args=(0.1,), daemon=True)
    stopping.start()
    stopping.join(20)  # generous: a failure bound (the SDK alone waits 30 s, then the export its own 300 s)
    assert not stopping.is_alive() and exporter.released.is_set()
