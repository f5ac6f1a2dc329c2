"""Property-based fuzzing of every RPC's request fields, through a real server, manager and audit log.

A real grpc.aio server on 127.0.0.1:0 serves the real servicer over a SessionManager on the FakeBackend,
with a real AuditStore, in a thread of its own (hypothesis drives plain functions; the service keeps one
event loop for the whole module). Whatever the caller sends — arbitrary text, JSON with NaN or lone
surrogates, JSON nested far too deep, made-up ids, raw bytes that are no protobuf message at all — these
hold after every example:

* the status is never INTERNAL or UNKNOWN (those mean the runner failed, not the caller);
* every request that reached a server has its ``request`` record in the audit log;
* the health service still says SERVING.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from runner.api import start_server
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api._proto.mcp_runner.v1 import runner_pb2_grpc
from runner.api.auth import Authenticator
from runner.api.server import RunningServer
from runner.audit import records
from runner.audit.records import AuditQuery
from runner.audit.replay import Replayer
from runner.audit.service import AuditService
from runner.audit.store import AuditStore
from runner.config import AuthConfig
from runner.policy import PolicyStore
from runner.sessions.journal import Journal
from runner.sessions.manager import SessionManager
from tests.unit.test_manager_audit import SETTINGS, RecordingBackend, write_policy

T = TypeVar("T")

# The anonymous loopback caller may do everything, so fuzzed requests get as far as they can; "sleep" waits
# for an approval (so DecideApproval has something to decide) and no anomaly count ends the sessions.
POLICY = """
    approvals: {timeout_s: 30}
    anomaly: {max_events: 1000000, window_s: 1}
    callers:
      anonymous:
        roles: [admin, approver, auditor]
        profiles: ["*"]
        tools: {approval: ["sleep"]}
"""
# Methods whose requests carry caller input to the server; each that arrives must have been recorded.
RECORDED = ("tools/call", "resources/read", "prompts/get")
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
TIMEOUT = 5.0
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Service:
    """The service on its own event loop in a background thread."""

    def __init__(self, directory: Path, policy: str = POLICY, *, tokens: bool = False) -> None:
        """``policy``: the policy file's text; ``tokens``: callers authenticate with the tokens it lists."""
        self.policy_text = policy
        self.tokens = tokens
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed-service", daemon=True)
        self.thread.start()
        self.backend = RecordingBackend()
        self.store = AuditStore(directory / "audit" / "audit.db")
        self.running: RunningServer | None = None
        self.manager: SessionManager | None = None
        self.run(self._start(directory))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def _start(self, directory: Path) -> None:
        self.store.open()
        policy = PolicyStore(write_policy(directory, self.policy_text))
        self.manager = SessionManager(self.backend, SETTINGS, policy, Journal(self.store))
        await self.manager.start()
        audit = AuditService(self.store, policy, Replayer(self.manager, self.store))
        authenticator = Authenticator(AuthConfig(tokens=self.tokens), lambda digest: policy.current.token_owner(digest))
        self.running = await start_server(self.manager, "127.0.0.1:0", authenticator=authenticator, grace=0,
                                          audit=audit)  # fmt: skip

    async def _stop(self) -> None:
        assert self.running is not None and self.manager is not None
        await self.running.stop(0)
        await self.manager.shutdown()
        self.store.close()

    def close(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def address(self) -> str:
        assert self.running is not None
        return f"127.0.0.1:{self.running.port}"

    def request_records(self, session_id: str) -> list[records.AuditRecord]:
        async def query() -> list[records.AuditRecord]:
            return self.store.query(AuditQuery(session_id=session_id, kinds=(records.REQUEST,)))

        return self.run(query())


class Door:
    """A caller: stubs on one channel, the sessions it opened, and the checks made after every example."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.channel = grpc.insecure_channel(service.address)
        self.stub = runner_pb2_grpc.RunnerStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.sessions = [self.stub.OpenSession(pb.OpenSessionRequest(profile="good")).session_id for _ in range(2)]

    def unary(self, method: Callable[..., Any], request: Any) -> grpc.StatusCode:
        try:
            method(request, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            return self.status(exc)
        return grpc.StatusCode.OK

    def streaming(self, method: Callable[..., Any], request: Any, timeout: float = TIMEOUT) -> grpc.StatusCode:
        try:
            for _ in method(request, timeout=timeout):
                pass
        except grpc.RpcError as exc:
            return self.status(exc)
        return grpc.StatusCode.OK

    @staticmethod
    def status(exc: grpc.RpcError) -> grpc.StatusCode:
        code = exc.code()  # type: ignore[attr-defined]
        assert code not in NEVER, f"{code}: {exc.details()}"  # type: ignore[attr-defined]
        return code  # type: ignore[no-any-return]

    def check(self, code: grpc.StatusCode) -> None:
        """The three properties, after one example."""
        assert code not in NEVER
        if currently_in_test_context():
            event(code.name)  # --hypothesis-show-statistics tells how far the examples got
        answer = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        for spec, agent in zip(self.service.backend.specs, self.service.backend.agents, strict=True):
            reached = [m["method"] for m in agent.seen if m.get("type") == "request" and m["method"] in RECORDED]
            if not reached:
                continue
            recorded = [r.data.get("method") for r in self.service.request_records(spec.session_id)]
            for method in RECORDED:
                assert reached.count(method) <= recorded.count(method), (spec.session_id, method, reached, recorded)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    service = Service(tmp_path_factory.mktemp("fuzz-api"))
    made = Door(service)
    try:
        yield made
    finally:
        made.close()
        service.close()


# -- strategies ----------------------------------------------------------------------------------------------------

def mostly(usual: st.SearchStrategy[T], other: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``usual`` three times in four (so requests get as far as they can), else ``other``."""
    return st.integers(0, 3).flatmap(lambda pick: other if pick == 3 else usual)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None), max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=25,
)


def _nested(depth: int, opener: str) -> str:
    closer = {"[": "]", "{": "}"}[opener]
    inner = "[" * depth + "]" * depth if opener == "[" else '{"a":' * depth + "1" + closer * depth
    return '{"text":' + inner + "}"


# Python's json writes NaN and Infinity, and escapes lone surrogates (keys too) as \udXXX.
say_shaped = st.builds(
    lambda text, value: json.dumps({"text": text, "extra": value}), st.text(st.characters(codec=None), max_size=20),
    json_values,
)
arguments_json = mostly(say_shaped, st.one_of(
    st.text(max_size=200),
    st.builds(lambda value: json.dumps({"text": value}), json_values),
    st.builds(lambda key: json.dumps({key: "x", "text": "y"}), st.text(st.characters(codec=None), max_size=4)),
    st.sampled_from(['{"text": 1e999}', '{"text": -1e999}', '{"text": "\\ud800"}', '{"\\udfff": 1}',
                     '{"text": NaN}', "[" * 100_000, '{"text": "' + "\\ud83d" + '"}']),
    st.builds(_nested, st.integers(0, 3000), st.sampled_from("[{")),
    st.builds(lambda n: json.dumps({"text": "a" * n}), st.sampled_from([0, 10, 1024 * 1024, 1024 * 1024 + 100])),
))
any_text = mostly(st.text(max_size=300), st.text(st.characters(max_codepoint=0x9F), max_size=40))
# Not "sleep": it waits for an approval nobody gives (test_approvals asks for those).
tools = mostly(st.sampled_from(["say", "echo", "nope"]), any_text)
int64 = st.integers(-(2**63), 2**63 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
kinds = mostly(st.lists(st.sampled_from(records.KINDS), max_size=3), st.lists(any_text, max_size=70))
timestamps = st.builds(Timestamp, seconds=int64, nanos=int32.filter(lambda n: -(10**9) < n < 10**9))


def session_ids(door: Door) -> st.SearchStrategy[str]:
    return mostly(st.sampled_from(door.sessions), any_text)


# -- every RPC -----------------------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_call_tool(door: Door, data: st.DataObject) -> None:
    request = pb.CallToolRequest(
        session_id=data.draw(session_ids(door)), tool=data.draw(tools), arguments_json=data.draw(arguments_json),
        timeout_ms=data.draw(mostly(st.sampled_from([0, 5000]), int32)),
        approval_id=data.draw(mostly(st.just(""), any_text)),
    )  # fmt: skip
    streamed = data.draw(st.booleans())
    method = door.stub.CallToolStream if streamed else door.stub.CallTool
    door.check(door.streaming(method, request) if streamed else door.unary(method, request))


@FUZZ
@given(data=st.data())
def test_resources_and_prompts(door: Door, data: st.DataObject) -> None:
    session_id = data.draw(session_ids(door))
    which = data.draw(st.sampled_from(["list_resources", "read", "list_prompts", "get_prompt"]))
    if which == "list_resources":
        code = door.unary(door.stub.ListResources, pb.ListResourcesRequest(session_id=session_id))
    elif which == "read":
        uri = data.draw(st.sampled_from(["mem://greeting", ""]) | any_text)
        code = door.unary(door.stub.ReadResource, pb.ReadResourceRequest(session_id=session_id, uri=uri))
    elif which == "list_prompts":
        code = door.unary(door.stub.ListPrompts, pb.ListPromptsRequest(session_id=session_id))
    else:
        arguments = data.draw(st.dictionaries(any_text, any_text | st.just("v" * 70_000), max_size=70))
        request = pb.GetPromptRequest(session_id=session_id, name=data.draw(any_text), arguments=arguments)
        code = door.unary(door.stub.GetPrompt, request)
    door.check(code)


@FUZZ
@given(data=st.data())
def test_sessions(door: Door, data: st.DataObject) -> None:
    which = data.draw(st.sampled_from(["open", "close", "get", "list", "list_tools"]))
    if which == "open":
        limits = pb.Limits(
            memory_bytes=data.draw(int64), cpus=data.draw(st.floats()), pids=data.draw(int64),
            call_timeout_ms=data.draw(int64), idle_timeout_ms=data.draw(int64), max_lifetime_ms=data.draw(int64),
        )  # fmt: skip
        request = pb.OpenSessionRequest(
            profile=data.draw(st.sampled_from(["good", "nope"]) | any_text),
            labels=data.draw(st.dictionaries(any_text, any_text, max_size=20)),
        )
        if data.draw(st.booleans()):
            request.limits.CopyFrom(limits)
        code = door.unary(door.stub.OpenSession, request)
        if code == grpc.StatusCode.OK:  # keep the quota for the sessions the other tests use
            opened = door.service.backend.specs[-1].session_id
            door.unary(door.stub.CloseSession, pb.CloseSessionRequest(session_id=opened))
    elif which == "close":  # never one of the shared sessions
        code = door.unary(door.stub.CloseSession, pb.CloseSessionRequest(session_id=data.draw(any_text)))
    elif which == "get":
        code = door.unary(door.stub.GetSession, pb.GetSessionRequest(session_id=data.draw(session_ids(door))))
    elif which == "list":
        code = door.unary(door.stub.ListSessions, pb.ListSessionsRequest())
    else:
        code = door.unary(door.stub.ListTools, pb.ListToolsRequest(session_id=data.draw(session_ids(door))))
    door.check(code)


@FUZZ
@given(data=st.data())
def test_approvals(door: Door, data: st.DataObject) -> None:
    which = data.draw(st.sampled_from(["request", "list", "decide", "watch"]))
    if which == "request":  # a call of "sleep" waits for approval; its arguments are fuzzed like any call's
        arguments = data.draw(arguments_json)
        request = pb.CallToolRequest(session_id=door.sessions[0], tool="sleep", arguments_json=arguments)
        code = door.unary(door.stub.CallTool, request)
    elif which == "list":
        code = door.unary(door.stub.ListApprovals, pb.ListApprovalsRequest(include_decided=data.draw(st.booleans())))
    elif which == "decide":
        pending = door.stub.ListApprovals(pb.ListApprovalsRequest(), timeout=TIMEOUT).approvals
        # Draws that do not depend on what is pending, so hypothesis can replay an example.
        pick, made_up = data.draw(st.integers(0, 7)), data.draw(any_text)
        approval_id = pending[pick % len(pending)].approval_id if pending and pick else made_up
        request = pb.DecideApprovalRequest(
            approval_id=approval_id, approve=data.draw(st.booleans()), reason=data.draw(any_text | st.just("r" * 5000))
        )
        code = door.unary(door.stub.DecideApproval, request)
    else:
        code = door.streaming(door.stub.WatchApprovals, pb.WatchApprovalsRequest(), timeout=0.2)
    door.check(code)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_audit(door: Door, data: st.DataObject) -> None:
    which = data.draw(st.sampled_from(["query", "export", "verify", "replay"]))
    if which == "query":
        request = pb.QueryAuditRequest(
            record_id=data.draw(any_text), session_id=data.draw(session_ids(door)), caller=data.draw(any_text),
            kinds=data.draw(kinds),
            after_seq=data.draw(int64), limit=data.draw(st.sampled_from([1, 5]) | int32),
        )  # fmt: skip
        for bound in ("since", "until"):
            if data.draw(st.booleans()):
                getattr(request, bound).CopyFrom(data.draw(timestamps))
        code = door.streaming(door.stub.QueryAudit, request)
    elif which == "export":
        code = door.streaming(door.stub.ExportSession, pb.ExportSessionRequest(session_id=data.draw(any_text)))
    elif which == "verify":
        code = door.unary(door.stub.VerifyAudit, pb.VerifyAuditRequest())
    else:  # made-up ids only: replaying a shared session would rerun every call fuzzed so far
        request = pb.ReplaySessionRequest(session_id=data.draw(any_text), timeout_ms=data.draw(uint32))
        code = door.streaming(door.stub.ReplaySession, request)
    door.check(code)


# -- bytes that are no valid request -------------------------------------------------------------------------------

METHODS = [(m.name, m.server_streaming) for m in pb.DESCRIPTOR.services_by_name["Runner"].methods]
# Field 1 of every request that has one is a string: these bytes put invalid UTF-8 (a lone surrogate encoded
# as UTF-8 bytes, an overlong form, a stray continuation byte) in it.
INVALID_UTF8 = [b"\x0a\x03\xed\xa0\x80", b"\x0a\x02\xc0\xaf", b"\x0a\x01\x80", b"\x0a\x04ok\xff\xfe"]
STRING_FIRST = [name for name, _ in METHODS if name not in {"ListSessions", "ListApprovals", "WatchApprovals",
                                                             "VerifyAudit"}]  # fmt: skip


def _raw(door: Door, name: str, streaming: bool, payload: bytes, timeout: float = 2.0) -> grpc.StatusCode:
    path = f"/mcp_runner.v1.Runner/{name}"
    if streaming:
        return door.streaming(door.channel.unary_stream(path), payload, timeout=timeout)
    return door.unary(door.channel.unary_unary(path), payload)


@pytest.mark.parametrize("name", STRING_FIRST)
@pytest.mark.parametrize("payload", INVALID_UTF8)
def test_invalid_utf8_is_invalid_argument_for_every_rpc(door: Door, name: str, payload: bytes) -> None:
    streaming = dict(METHODS)[name]
    code = _raw(door, name, streaming, payload)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    door.check(code)


def test_a_truncated_message_is_invalid_argument_naming_its_type(door: Door) -> None:
    with pytest.raises(grpc.RpcError) as info:
        door.channel.unary_unary("/mcp_runner.v1.Runner/CallTool")(b"\x0a\x10abc", timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "mcp_runner.v1.CallToolRequest" in (info.value.details() or "")  # type: ignore[attr-defined]


@FUZZ
@given(name=st.sampled_from([name for name, _ in METHODS if name != "ReplaySession"]), payload=st.binary(max_size=300))
def test_raw_bytes(door: Door, name: str, payload: bytes) -> None:
    door.check(_raw(door, name, dict(METHODS)[name], payload, timeout=0.5))


def test_a_lone_surrogate_cannot_poison_the_approvals(door: Door) -> None:
    """Once, such arguments became a pending approval that ListApprovals and WatchApprovals could not send."""
    for arguments_json in ('{"seconds": "\\ud800"}', '{"\\udbff": 1}'):
        request = pb.CallToolRequest(session_id=door.sessions[0], tool="sleep", arguments_json=arguments_json)
        assert door.unary(door.stub.CallTool, request) == grpc.StatusCode.INVALID_ARGUMENT
    assert door.unary(door.stub.ListApprovals, pb.ListApprovalsRequest(include_decided=True)) == grpc.StatusCode.OK
    assert door.streaming(door.stub.WatchApprovals, pb.WatchApprovalsRequest(), timeout=0.5) in {
        grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED,
    }  # fmt: skip
