"""OpenTelemetry traces of what the runner does, exported over OTLP/gRPC; off unless configured.

One ``Tracing`` per service (``from_config``), its own ``TracerProvider``: the global provider is never set, so
two services in one process (tests, the bench) never share spans. Off (``OFF``), nothing is created: no
exporter, no thread, no network, and a span costs one context-variable read.

The spans follow the GenAI / MCP semantic conventions: a request span (kind SERVER) per MCP request a door
passes to the SessionManager, named ``{mcp.method.name} {target}`` (``tools/call get_current_time``) once the
target is known to be valid (``known_target``: a tool the server listed, a prompt it answered) and
``{mcp.method.name}`` until then, so a caller's made-up names never become span names; inside it the steps
(validation, sanitizing, the audit write) and the request to the sandboxed server (kind CLIENT), whose context
goes to the server as W3C ``traceparent``/``tracestate`` in ``params._meta``. A caller's own trace context (gRPC
metadata, or ``params._meta`` at the MCP door) is the parent of the request span; it is caller input, so anything
malformed in it is dropped without a word (no error, no log line). A session's open is a span too, named by its
profile only when that is a configured one.

Steps find their tracer in a context variable the request span sets (``_ACTIVE``), so the guard, the outflow and
the journal need no tracer passed in, and a step outside any traced request is no span at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from runner.config import TracingConfig
from runner.errors import RunnerError

P = ParamSpec("P")
R = TypeVar("R")
Attributes = dict[str, str | int | float | bool]

_ACTIVE: contextvars.ContextVar[trace.Tracer | None] = contextvars.ContextVar("mcp_runner_tracer", default=None)
"""The tracer of the traced request (or open) the current task serves; None outside one, or with tracing off."""
_ENTRY: contextvars.ContextVar[Attributes | None] = contextvars.ContextVar("mcp_runner_trace_entry", default=None)
"""What the door a request came through knows of it (``rpc.system``, ``jsonrpc.request.id``), for its span."""


@dataclass
class _Request:
    """The request span the current task serves, named by its method until its target is known valid."""

    span: trace.Span
    method: str
    known: str = ""


_REQUEST: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("mcp_runner_trace_request", default=None)

_PROPAGATOR = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
MAX_TRACESTATE_CHARS = 512
MAX_TRACESTATE_MEMBERS = 32
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE_MEMBER = re.compile(
    r"(?:[a-z0-9][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
MAX_ATTRIBUTE_CHARS = 256
"""Caller-given names (a tool, a session id) are cut here in span names and attributes."""
TARGETED = {"tools/call": "gen_ai.tool.name", "prompts/get": "gen_ai.prompt.name"}
"""Methods whose target (low cardinality: a name the server declared) joins the span name once known valid."""
FLUSH_TIMEOUT_S = 3.0
"""How long a shutdown waits for queued spans to reach the collector: a dead one retried each batch for the
exporter's whole timeout (8-28 s), past what a container's stop grace leaves after draining calls."""
URI_METHODS = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})
"""Methods with a resource URI parameter: the conventions want it as ``mcp.resource.uri`` (never in a name)."""
_NOTHING = contextlib.nullcontext()


class Tracing:
    """The service's tracer, or none (``OFF``). ``shutdown`` sends what is still queued."""

    def __init__(self, tracer: trace.Tracer | None = None, provider: Any = None, exporter: Any = None) -> None:
        self._tracer = tracer
        self._provider = provider
        self._exporter = exporter

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @classmethod
    def from_config(cls, config: TracingConfig | None, instance: str = "default") -> Tracing:
        """A tracer exporting to ``config.endpoint`` in batches (one background thread), or ``OFF`` for None."""
        if config is None:
            return OFF
        # Imported here: with tracing off the SDK and the exporter (grpc channels, a thread) are never loaded.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        ratio = TraceIdRatioBased(config.sample_ratio)
        # A caller's sampled flag does not decide for the operator: remote parents are sampled by the ratio too.
        sampler = ParentBased(root=ratio, remote_parent_sampled=ratio, remote_parent_not_sampled=ratio)
        resource = Resource.create({"service.name": config.service_name, "service.instance.id": instance})
        provider = TracerProvider(resource=resource, sampler=sampler)
        exporter = OTLPSpanExporter(
            endpoint=config.endpoint, insecure=config.insecure, headers=dict(config.headers) or None
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider.get_tracer("mcp-runner"), provider, exporter)

    def shutdown(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Export what is queued and stop the export thread, waiting ``timeout_s`` at most (blocking): then the
        exporter is shut down, which drops what is left and ends its retries (the SDK's own bound is 30 s)."""
        if self._provider is None:
            return
        flushing = threading.Thread(target=self._provider.shutdown, name="trace-flush", daemon=True)
        flushing.start()
        flushing.join(timeout_s)
        if flushing.is_alive() and self._exporter is not None:
            self._exporter.shutdown()
            flushing.join(timeout_s)

    def request(
        self, method: str, session_id: str, *, target: str = "", protocol: str = ""
    ) -> AbstractContextManager[Any]:
        """The span of one MCP request a door passed on (kind SERVER), its parent the caller's trace context.

        Named by ``method`` alone: ``target`` is what the caller sent, an attribute where the conventions want one,
        and joins the name only when ``known_target`` says it is valid."""
        if self._tracer is None:
            return _NOTHING
        attributes = request_attributes(method, session_id, target, protocol)
        return self._root(method, attributes, SpanKind.SERVER, method)

    def open(self, profile: str, door: str, protocol: str, *, known: bool) -> AbstractContextManager[Any]:
        """The span of a session's open (kind SERVER): its steps are the sandbox's start or claim, the handshake.

        ``known``: ``profile`` is a configured one; only then does it name the span (``open {profile}``, else
        ``open``) and become its ``mcp_runner.profile``."""
        if self._tracer is None:
            return _NOTHING
        attributes: Attributes = {
            "mcp.method.name": "initialize" if door.startswith("mcp-") else "session/open",
            "mcp.protocol.version": protocol,
            "mcp_runner.door": door,
        }
        if known:
            attributes["mcp_runner.profile"] = cut(profile)
        return self._root(f"open {cut(profile)}" if known else "open", attributes, SpanKind.SERVER)

    @contextlib.contextmanager
    def _root(self, name: str, attributes: Attributes, kind: SpanKind, method: str = "") -> Iterator[trace.Span]:
        assert self._tracer is not None
        attributes = {**attributes, **(_ENTRY.get() or {})}  # how the request came, as the span starts
        token = _ACTIVE.set(self._tracer)
        try:
            with _span(self._tracer, name, attributes, kind) as span:
                request = _REQUEST.set(_Request(span, method))
                try:
                    yield span
                finally:
                    _REQUEST.reset(request)
        finally:
            _ACTIVE.reset(token)


OFF = Tracing()
"""No tracing: every span is ``contextlib.nullcontext()``."""


def step(
    name: str, attributes: Attributes | None = None, kind: SpanKind = SpanKind.INTERNAL
) -> AbstractContextManager[Any]:
    """A child span of the traced request the current task serves; nothing outside one (or with tracing off)."""
    tracer = _ACTIVE.get()
    if tracer is None:
        return _NOTHING
    return _span(tracer, name, attributes or {}, kind)


def traced_step(name: str, passes: tuple[type[Exception], ...] = ()) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """``fn`` as a step span named ``name`` when called inside a traced request (a thread's copy of it too);
    ``passes``: exceptions that are control flow (work handed elsewhere), not errors of the span."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def traced(*args: P.args, **kwargs: P.kwargs) -> R:
            tracer = _ACTIVE.get()
            if tracer is None:
                return fn(*args, **kwargs)
            with _span(tracer, name, {}, SpanKind.INTERNAL, passes):
                return fn(*args, **kwargs)

        return traced

    return decorate


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """No traced request while the block runs: a task it creates for a session's whole life (its channel's reader,
    its watcher) belongs to no request, so what it does later is no step of the request that started it."""
    active = _ACTIVE.set(None)
    current = otel_context.attach(otel_context.Context())
    try:
        yield
    finally:
        otel_context.detach(current)
        _ACTIVE.reset(active)


def known_target(target: str) -> None:
    """The current request's target is known valid (a tool its server listed, a prompt its server answered): the
    request span is named ``{method} {target}`` from now on, and so is a request to the server for it begun later.
    Nothing outside a traced request, or for a method whose target names no span (``TARGETED``)."""
    request = _REQUEST.get()
    if request is None or request.method not in TARGETED:
        return
    request.known = target
    request.span.update_name(span_name(request.method, target))


def annotate(attributes: Attributes) -> None:
    """Attributes learnt during a span (a session's id once it has one) on the current span, if it records."""
    if _ACTIVE.get() is not None:
        trace.get_current_span().set_attributes(attributes)


def outgoing(method: str, params: dict[str, Any]) -> AbstractContextManager[dict[str, Any]]:
    """Around a request to the sandboxed server: a CLIENT span whose context the yielded params carry in
    ``_meta`` (``with_trace_context``); outside a traced request, ``params`` as they are."""
    tracer = _ACTIVE.get()
    if tracer is None:
        return contextlib.nullcontext(params)
    return _outgoing(tracer, method, params)


@contextlib.contextmanager
def _outgoing(tracer: trace.Tracer, method: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Named ``{method} {target}`` when the request's target is known valid (``known_target``) or, as the server
    answers it with a result, becomes so; ``{method}`` otherwise (a name the server refused, no answer)."""
    name = params.get("name") if method in TARGETED else None
    target = name if isinstance(name, str) else ""
    attributes: Attributes = {"mcp.method.name": method}
    if target:
        attributes[TARGETED[method]] = cut(target)
    request = _REQUEST.get()
    known = bool(target) and request is not None and request.method == method and request.known == target
    with _span(tracer, span_name(method, target) if known else method, attributes, SpanKind.CLIENT) as span:
        yield with_trace_context(params)
        if target and not known:
            span.update_name(span_name(method, target))


def with_trace_context(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the current span's ``traceparent`` (and ``tracestate``) in ``_meta``; a key the caller put
    there is kept as it is, and an invalid (not recording) context adds nothing."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if not carrier:
        return params
    meta = params.get("_meta")
    own = meta if isinstance(meta, dict) else {}
    return {**params, "_meta": {**carrier, **own}}


class Entering:
    """A request as a door received it: its trace context (if valid) the parent of what is traced within, and
    ``attributes`` (how it came) on its request span. Malformed trace context is ignored, silently.

    Both a context manager and an async one, so it joins the ``async with`` a request is served in."""

    def __init__(self, carrier: Mapping[str, object] | None, attributes: Attributes) -> None:
        self._carrier = carrier
        self._attributes = attributes
        self._entry: contextvars.Token[Attributes | None] | None = None
        self._context: contextvars.Token[otel_context.Context] | None = None

    def __enter__(self) -> None:
        parent = remote_parent(self._carrier)
        self._entry = _ENTRY.set(self._attributes)
        self._context = otel_context.attach(parent) if parent is not None else None

    def __exit__(self, *exc_info: object) -> None:
        if self._context is not None:
            otel_context.detach(self._context)
        if self._entry is not None:
            _ENTRY.reset(self._entry)

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)


def remote_parent(carrier: Mapping[str, object] | None) -> otel_context.Context | None:
    """The caller's trace context from ``traceparent``/``tracestate`` values, or None when there is none valid.

    Checked before the propagator sees them: it logs a warning for each bad tracestate member, and what a caller
    sends must not fill the service's log. A bad tracestate is dropped, the traceparent kept."""
    if not carrier:
        return None
    parent = carrier.get(TRACEPARENT)
    if not isinstance(parent, str) or not _TRACEPARENT.fullmatch(parent):
        return None
    headers = {TRACEPARENT: parent}
    state = carrier.get(TRACESTATE)
    if isinstance(state, str) and _valid_tracestate(state):
        headers[TRACESTATE] = state
    extracted = _PROPAGATOR.extract(headers)
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None  # all-zero ids: invalid by W3C
    return extracted


def _valid_tracestate(state: str) -> bool:
    if len(state) > MAX_TRACESTATE_CHARS:
        return False
    members = [m.strip(" \t") for m in state.split(",")]
    members = [m for m in members if m]
    return len(members) <= MAX_TRACESTATE_MEMBERS and all(_TRACESTATE_MEMBER.fullmatch(m) for m in members)


def request_attributes(method: str, session_id: str, target: str, protocol: str) -> Attributes:
    """The MCP semantic conventions' attributes of a request span."""
    attributes: Attributes = {"mcp.method.name": method, "mcp.session.id": cut(session_id)}
    if protocol:
        attributes["mcp.protocol.version"] = protocol
    if method == "tools/call":
        attributes["gen_ai.operation.name"] = "execute_tool"
    if target:
        key = TARGETED.get(method, "mcp.resource.uri" if method in URI_METHODS else "")
        if key:
            attributes[key] = cut(target)
    return attributes


def span_name(method: str, target: str) -> str:
    """``{method} {target}`` where the target is a declared name (a tool, a prompt); the method alone otherwise
    (a resource URI would make names of high cardinality)."""
    return f"{method} {cut(target)}" if target and method in TARGETED else method


def cut(text: str) -> str:
    """Caller-given text as it goes into a span: at most ``MAX_ATTRIBUTE_CHARS``, control characters replaced."""
    short = text[:MAX_ATTRIBUTE_CHARS]
    return short if short.isprintable() else "".join(c if c.isprintable() else "\ufffd" for c in short)


@contextlib.contextmanager
def _span(
    tracer: trace.Tracer,
    name: str,
    attributes: Attributes,
    kind: SpanKind,
    passes: tuple[type[Exception], ...] = (),
) -> Iterator[trace.Span]:
    """A span, current while the block runs; a runner error marks it ERROR with its gRPC status name."""
    with tracer.start_as_current_span(
        name, kind=kind, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except passes:
            raise
        except RunnerError as exc:
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, exc.status.value))
            raise
        except Exception as exc:
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
