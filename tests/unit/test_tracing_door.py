"""The HTTP door's ``initialize``: the client's trace context in ``params._meta`` is the parent of the open's span
(a fake SessionManager that traces its opens as the real one does, the SDK's door over uvicorn on loopback)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runner.observe.tracing import Tracing
from runner.sessions.models import OpenedSession
from tests.unit.door_fakes import FakeManager
from tests.unit.test_door_http import INIT, JSON_SSE, _door, url

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class TracingManager(FakeManager):
    tracing: Tracing = field(default_factory=Tracing)

    async def open(
        self, profile: str, *, caller: str, door: str = "grpc", protocol: str = "2025-11-25"
    ) -> OpenedSession:
        with self.tracing.open(profile, door, protocol, known=True):
            return await super().open(profile, caller=caller, door=door, protocol=protocol)


def _initialize(meta: Any, request_id: int) -> dict[str, Any]:
    return {**INIT, "id": request_id, "params": {**INIT["params"], "_meta": meta}}


@pytest.mark.parametrize(
    ("meta", "parented"),
    [
        ({"traceparent": PARENT, "progressToken": 1}, True),
        ({"traceparent": "00-zzzz-1-01"}, False),  # malformed: ignored, the open is a trace of its own
        ({"traceparent": ["not", "a", "string"]}, False),
        ("not an object", False),
    ],
)
async def test_an_initializes_meta_traceparent_is_the_parent_of_the_open(meta: Any, parented: bool) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    manager = TracingManager(tracing=Tracing(provider.get_tracer("t"), provider))
    running = await _door(manager)
    try:
        async with httpx2.AsyncClient(timeout=30) as http:
            reply = await http.post(url(running), json=_initialize(meta, 41), headers=JSON_SSE)
        assert reply.status_code == 200 and manager.opens
    finally:
        await running.stop()
        provider.shutdown()
    (span,) = exporter.get_finished_spans()
    assert span.name == "open time"
    assert dict(span.attributes or {})["jsonrpc.request.id"] == "41"
    if parented:
        assert span.parent is not None and span.parent.is_remote
        assert format(span.parent.span_id, "016x") == PARENT.split("-")[2]
        assert span.context is not None and format(span.context.trace_id, "032x") == PARENT.split("-")[1]
    else:
        assert span.parent is None
