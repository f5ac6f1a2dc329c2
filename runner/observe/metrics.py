"""Prometheus metrics of one service, derived from its audit events, its warm pool and its audit writer.

Every metric lives in the service's own ``CollectorRegistry`` (never the process-wide default), so two services in
one process (tests) and the benchmark stay apart. Counters move as the journal's observer (``RunnerMetrics.observe``)
sees events, whether or not the audit log is on; the pool and the audit queue are read at each scrape.

Labels are bounded: profile names come from the settings (anything else is ``unknown``), tool names only from what
the session's server listed at open, at most ``MAX_TOOL_LABELS`` per profile (more, and a name unseen so far is
``other``), methods from ``METHODS``, and every other label value is one the service chose, capped at
``MAX_LABEL_VALUES`` per label of each metric all the same. Nothing a caller sends becomes a label value.
"""

from __future__ import annotations

import importlib.metadata
import platform
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runner.audit import records
from runner.audit.records import AuditEvent
from runner.observe.events import field, number, request_outcome

PREFIX = "mcp_runner"
UNKNOWN = "unknown"
OTHER = "other"
MAX_TOOL_LABELS = 64
"""Distinct tool names counted per profile; a server listing more shares ``other`` for the rest."""
MAX_LABEL_VALUES = 64
"""Distinct values of any other label of one metric; past it, ``other``. Each metric's label has its own: the
findings' ``action`` and the policy's ``action`` are different sets, and one must not spend the other's."""
METHODS = frozenset({
    "initialize", "ping", "server/discover", "tools/list", "tools/call", "resources/list", "resources/templates/list",
    "resources/read", "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get",
    "completion/complete", "logging/setLevel",
})  # fmt: skip
"""The MCP methods a caller's request may name that get a label of their own; any other (a door's refusal records
what the caller sent) counts as ``other``, so no caller can use up the label's values."""
MAX_TRACKED_SESSIONS = 16384
"""Open sessions whose profile and tools are remembered (for the labels of their requests); past it the oldest go."""
MAX_ENDED_SESSIONS = 1024
"""Sessions just ended whose labels are still remembered: the call that ends its session (an OOM kill, a crash, the
denial that quarantines) has its request record made after the session.close, and still counts under its profile
and tool. Its record follows the close at once, so a short memory of the last ones is enough."""
HTTP_REFUSAL_STATUSES = frozenset({"400", "401", "403", "404", "405", "413", "421", "429"})
"""The statuses of the door's own refusals with a label of their own; any other 4xx counts as ``other``."""
_NAME_CHARS = 128

OPEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
COMMIT_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class PoolView(Protocol):
    """What a scrape reads of the warm pool (``runner.sessions.pool.WarmPool``)."""

    def status(self) -> Mapping[str, tuple[int, int]]: ...

    @property
    def claims(self) -> Mapping[tuple[str, str], int]: ...


class QueueView(Protocol):
    """What a scrape reads of the audit writer (``runner.audit.store.AuditStore``)."""

    @property
    def queue_depth(self) -> int: ...


class _Session:
    __slots__ = ("profile", "tools")

    def __init__(self, profile: str, tools: frozenset[str]) -> None:
        self.profile = profile
        self.tools = tools


class _Values:
    """The values one label has taken; a new one past ``limit`` is ``other``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(value)
            return value


def _version() -> str:
    try:
        return importlib.metadata.version("mcp-sandbox-runner")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class RunnerMetrics:
    """One service's metrics; ``observe`` is a ``Journal`` observer, ``exposition`` what ``/metrics`` answers."""

    def __init__(self, profiles: Iterable[str], backend: str = "") -> None:
        self.registry = CollectorRegistry()
        self._profiles = frozenset(profiles)
        self._sessions: dict[str, _Session] = {}
        self._ended: dict[str, _Session] = {}
        self._tools: dict[str, _Values] = {}
        self._values: dict[tuple[str, str], _Values] = {}
        self._pending: set[str] = set()
        self._handlers: dict[str, Callable[[AuditEvent], None]] = {
            records.SESSION_OPEN: self._opened, records.SESSION_CLOSE: self._closed, records.REQUEST: self._request,
            records.VALIDATION: self._validation, records.FINDING: self._findings, records.POLICY: self._policy,
            records.APPROVAL: self._approval, records.THROTTLE: self._throttle, records.QUARANTINE: self._quarantine,
            records.EGRESS: self._egress, records.EXIT: self._exit,
        }  # fmt: skip
        r, p = self.registry, PREFIX
        Info(f"{p}_build", "The running mcp-runner", registry=r).info(
            {"version": _version(), "python": platform.python_version(), "backend": backend}
        )
        self.sessions_open = Gauge(f"{p}_sessions_open", "Sessions open now", ["profile"], registry=r)
        self.sessions_opened = Counter(
            f"{p}_sessions_opened", "Opens by outcome: ok, refused (policy, limits, unknown profile), error, abandoned",
            ["profile", "outcome"], registry=r,
        )  # fmt: skip
        self.open_seconds = Histogram(
            f"{p}_session_open_seconds", "Admitted opens from the policy's allow to ready (start: cold or warm)",
            ["profile", "start"], buckets=OPEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.sessions_closed = Counter(
            f"{p}_sessions_closed", "Sessions ended, by final state (closed, failed)", ["profile", "state"], registry=r
        )
        self.requests = Counter(
            f"{p}_requests", "MCP requests by method and outcome (ok, tool_error, a status in lower case, …)",
            ["profile", "method", "outcome"], registry=r,
        )  # fmt: skip
        self.calls = Counter(f"{p}_tool_calls", "tools/call requests by tool and outcome",
                             ["profile", "tool", "outcome"], registry=r)  # fmt: skip
        self.call_seconds = Histogram(f"{p}_tool_call_seconds", "tools/call latency as the runner served it",
                                      ["profile", "tool"], buckets=CALL_BUCKETS, registry=r)  # fmt: skip
        self.validation = Counter(f"{p}_validation_failures", "Arguments or results refused by validation on the host",
                                  ["profile", "method"], registry=r)  # fmt: skip
        self.findings = Counter(f"{p}_findings", "What the sanitizer found, by kind and action",
                                ["kind", "action"], registry=r)  # fmt: skip
        self.policy = Counter(f"{p}_policy_decisions", "Policy decisions (verdict: allow, deny, approval)",
                              ["action", "verdict"], registry=r)  # fmt: skip
        self.approvals_pending = Gauge(f"{p}_approvals_pending", "Approvals waiting for a decision", registry=r)
        self.throttled = Counter(f"{p}_throttled", "Requests refused by a rate, concurrency or session limit",
                                 ["action"], registry=r)  # fmt: skip
        self.http_refusals = Counter(
            f"{p}_http_refusals", "Requests the MCP door's listener refused itself, before the SessionManager "
            "(Host, Origin, credentials, path, method, body, headers), by HTTP status", ["status"], registry=r,
        )  # fmt: skip
        self.quarantines = Counter(f"{p}_quarantines", "Sessions ended for too many denied, blocked or invalid events",
                                   ["profile"], registry=r)  # fmt: skip
        self.egress = Counter(f"{p}_egress_decisions", "Decisions of sessions' egress proxies",
                              ["profile", "decision"], registry=r)  # fmt: skip
        self.exits = Counter(f"{p}_sandbox_exits", "Sandboxes that stopped on their own (oom_killed, exited, gone)",
                             ["profile", "reason"], registry=r)  # fmt: skip
        self.audit_commit_seconds = Histogram(
            f"{p}_audit_commit_seconds", "Audit log transactions, from BEGIN to COMMIT (fsync included when durable)",
            buckets=COMMIT_BUCKETS, registry=r,
        )  # fmt: skip

    # -- what the service wires in ------------------------------------------------------------------------

    def observe(self, event: AuditEvent) -> None:
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(event)

    def audit_committed(self, seconds: float) -> None:
        """The audit writer's hook (its own thread): one transaction took ``seconds``."""
        self.audit_commit_seconds.observe(seconds)

    def http_refused(self, status: int) -> None:
        """The door's hook: it answered a request with ``status`` (4xx) without asking the SessionManager."""
        label = str(status)
        self.http_refusals.labels(label if label in HTTP_REFUSAL_STATUSES else OTHER).inc()

    def watch(self, pool: PoolView | None, audit: QueueView | None) -> None:
        """Read ``pool`` (ready, target, claims) and ``audit`` (queue depth) at every scrape."""
        self.registry.register(_Pulled(pool, audit))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- labels --------------------------------------------------------------------------------------------

    def _profile(self, value: Any) -> str:
        return value if isinstance(value, str) and value in self._profiles else UNKNOWN

    def _session(self, session_id: str) -> _Session | None:
        """An open session's labels, or a just-ended one's (its last records follow its close)."""
        return self._sessions.get(session_id) or self._ended.get(session_id)

    def _session_profile(self, session_id: str) -> str:
        session = self._session(session_id)
        return session.profile if session is not None else UNKNOWN

    @staticmethod
    def _method(value: Any) -> str:
        return value if isinstance(value, str) and value in METHODS else OTHER

    def _value(self, metric: str, label: str, value: Any) -> str:
        """``value`` as ``metric``'s ``label``: capped per (metric, label)."""
        if not isinstance(value, str) or not value or len(value) > _NAME_CHARS:
            return UNKNOWN
        return self._values.setdefault((metric, label), _Values(MAX_LABEL_VALUES))(value)

    def _tool(self, session_id: str, name: Any) -> str:
        session = self._session(session_id)
        if session is None or not isinstance(name, str) or name not in session.tools:
            return OTHER
        return self._tools.setdefault(session.profile, _Values(MAX_TOOL_LABELS))(name)

    # -- one handler per kind ------------------------------------------------------------------------------

    def _opened(self, event: AuditEvent) -> None:
        data = event.data
        profile = self._profile(data.get("profile"))
        outcome = self._value("sessions_opened", "outcome", data.get("outcome"))
        self.sessions_opened.labels(profile, outcome).inc()
        duration_ms = number(data.get("duration_ms"))  # an admitted open's, from the policy's allow to its record
        if duration_ms is not None:
            start = data.get("start") if data.get("start") in ("cold", "warm") else UNKNOWN
            self.open_seconds.labels(profile, start).observe(duration_ms / 1000)
        if outcome != "ok" or not event.session_id or event.session_id in self._sessions:
            return
        if len(self._sessions) >= MAX_TRACKED_SESSIONS:
            self._forget(next(iter(self._sessions)))
        listed = data.get("tools")
        names = frozenset(
            tool["name"] for tool in (listed if isinstance(listed, list) else ())
            if isinstance(tool, Mapping) and isinstance(tool.get("name"), str) and len(tool["name"]) <= _NAME_CHARS
        )  # fmt: skip
        self._sessions[event.session_id] = _Session(profile, names)
        self.sessions_open.labels(profile).inc()

    def _forget(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        self.sessions_open.labels(session.profile).dec()
        if len(self._ended) >= MAX_ENDED_SESSIONS:
            self._ended.pop(next(iter(self._ended)))
        self._ended[session_id] = session

    def _closed(self, event: AuditEvent) -> None:
        profile = self._profile(event.data.get("profile"))
        self.sessions_closed.labels(profile, self._value("sessions_closed", "state", event.data.get("state"))).inc()
        self._forget(event.session_id)

    def _request(self, event: AuditEvent) -> None:
        data = event.data
        profile = self._session_profile(event.session_id)
        method = self._method(data.get("method"))
        outcome = self._value("requests", "outcome", request_outcome(data))
        self.requests.labels(profile, method, outcome).inc()
        if data.get("method") != "tools/call":
            return
        tool = self._tool(event.session_id, field(data, "params", "name"))
        self.calls.labels(profile, tool, outcome).inc()
        duration_ms = number(data.get("duration_ms"))
        if duration_ms is not None:
            self.call_seconds.labels(profile, tool).observe(duration_ms / 1000)

    def _validation(self, event: AuditEvent) -> None:
        profile = self._session_profile(event.session_id)
        self.validation.labels(profile, self._method(event.data.get("method"))).inc()

    def _findings(self, event: AuditEvent) -> None:
        found = event.data.get("findings")
        for finding in found if isinstance(found, list) else ():
            if isinstance(finding, Mapping):
                count = number(finding.get("count"))
                kind = self._value("findings", "kind", finding.get("kind"))
                action = self._value("findings", "action", finding.get("action"))
                self.findings.labels(kind, action).inc(count or 1.0)

    def _policy(self, event: AuditEvent) -> None:
        data = event.data
        action = self._value("policy", "action", data.get("action"))
        self.policy.labels(action, self._value("policy", "verdict", data.get("verdict"))).inc()

    def _approval(self, event: AuditEvent) -> None:
        approval_id, state = event.data.get("approval_id"), event.data.get("state")
        if not isinstance(approval_id, str):
            return
        if state == "pending":
            self._pending.add(approval_id)
        else:
            self._pending.discard(approval_id)
        self.approvals_pending.set(len(self._pending))

    def _throttle(self, event: AuditEvent) -> None:
        data = event.data
        action = data.get("action") or data.get("method")  # an open, or the request a rate refused
        self.throttled.labels("open" if action == "open" else self._method(action)).inc()
        if "action" in data and action != "open":
            # Refused past the caller's refusal rate before its record was begun: no request event follows.
            method = self._method(action)
            self.requests.labels(self._session_profile(event.session_id), method, "resource_exhausted").inc()

    def _quarantine(self, event: AuditEvent) -> None:
        self.quarantines.labels(self._session_profile(event.session_id)).inc()

    def _egress(self, event: AuditEvent) -> None:
        decision = "allowed" if event.data.get("allowed") is True else "refused"
        self.egress.labels(self._session_profile(event.session_id), decision).inc()

    def _exit(self, event: AuditEvent) -> None:
        data = event.data
        code = data.get("exit_code")
        exited = isinstance(code, int) and not isinstance(code, bool)
        reason = "oom_killed" if data.get("oom_killed") is True else "exited" if exited else "gone"
        self.exits.labels(self._session_profile(event.session_id), reason).inc()


class _Pulled(Collector):
    """The pool's and the audit writer's state, read as Prometheus asks."""

    def __init__(self, pool: PoolView | None, audit: QueueView | None) -> None:
        self._pool = pool
        self._audit = audit

    def collect(self) -> Iterator[Metric]:
        if self._pool is not None:
            ready = GaugeMetricFamily(f"{PREFIX}_pool_ready", "Warm sandboxes ready now", labels=["profile"])
            target = GaugeMetricFamily(f"{PREFIX}_pool_target", "Warm sandboxes the pool keeps", labels=["profile"])
            for profile, (now, size) in sorted(self._pool.status().items()):
                ready.add_metric([profile], now)
                target.add_metric([profile], size)
            claims = CounterMetricFamily(
                f"{PREFIX}_pool_claims", "Opens of a pooled profile: hit (a warm sandbox) or miss (a cold start)",
                labels=["profile", "result"],
            )  # fmt: skip
            for (profile, result), count in sorted(self._pool.claims.items()):
                claims.add_metric([profile, result], count)
            yield from (ready, target, claims)
        if self._audit is not None:
            depth = GaugeMetricFamily(f"{PREFIX}_audit_queue_depth", "Audit writes queued for the writer thread")
            depth.add_metric([], self._audit.queue_depth)
            yield depth
