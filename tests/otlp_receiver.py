"""A real OTLP/gRPC trace receiver on loopback for tests: the collector's TraceService, collecting what arrives.

``with OtlpReceiver() as receiver:`` serves on ``127.0.0.1:<free port>`` (``receiver.endpoint``); ``receiver.spans()``
is every span received so far, flattened (``ReceivedSpan``); ``wait_for`` polls for the spans a test expects.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    """"" for a root span."""
    kind: str
    """``SPAN_KIND_SERVER``, ``SPAN_KIND_CLIENT``, ``SPAN_KIND_INTERNAL``…"""
    attributes: dict[str, Any]
    status: str
    """``STATUS_CODE_UNSET``, ``STATUS_CODE_OK`` or ``STATUS_CODE_ERROR``."""
    status_message: str
    resource: dict[str, Any]


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    return getattr(value, which) if which is not None else None


class _Service(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metadata: list[dict[str, str]] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            self.requests.append(request)
            self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    def __init__(self) -> None:
        self._service = _Service()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self._service, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.stop(grace=None)

    def metadata(self) -> list[dict[str, str]]:
        """The gRPC metadata of each export received (the exporter's ``headers``)."""
        with self._service.lock:
            return list(self._service.metadata)

    def spans(self) -> list[ReceivedSpan]:
        with self._service.lock:
            requests = list(self._service.requests)
        out = []
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        out.append(
                            ReceivedSpan(
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                kind=Span.SpanKind.Name(span.kind),
                                attributes={a.key: _value(a.value) for a in span.attributes},
                                status=Status.StatusCode.Name(span.status.code),
                                status_message=span.status.message,
                                resource=resource,
                            )
                        )
        return out

    def wait_for(self, found: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0) -> list[ReceivedSpan]:
        """The spans received once ``found`` says they are all there; AssertionError with what came, if never."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if found(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"the expected spans did not arrive; received: {[s.name for s in spans]}")
            time.sleep(0.1)
