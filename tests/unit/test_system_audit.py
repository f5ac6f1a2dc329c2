"""The gRPC surface as one system, with the audit log as referee.

A real grpc.aio server on 127.0.0.1:0 serves the real servicer over a SessionManager on the FakeBackend with a
real AuditStore (like test_fuzz_api). Callers cancel, time out, close a session under a call, kill its sandbox,
go through approvals (claimed by id and waited for on a stream); after all of it:

* every ``request.intent`` names a request that has exactly one outcome ``request`` record, and that record
  names exactly the intents written under it;
* a replay runs each answered call once; QueryAudit by kind, ExportSession and ``verify --export`` agree;
* VerifyAudit says intact, health says SERVING, and the service logged no ERROR or traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api._proto.mcp_runner.v1 import runner_pb2_grpc
from runner.audit import records
from runner.audit.records import AuditQuery, AuditRecord
from runner.audit.verify import verify_export
from tests.unit.test_fuzz_api import Service

# "say" waits for an approval; the rest run at once.
POLICY = """
    approvals: {timeout_s: 30}
    anomaly: {max_events: 1000000, window_s: 1}
    callers:
      anonymous:
        roles: [admin, approver, auditor]
        profiles: ["*"]
        tools: {approval: ["say"]}
      carol:
        roles: [approver]
        profiles: []
"""


class SystemService(Service):
    def decide(self, approval_id: str, approve: bool) -> None:
        """Carol decides (a caller may not approve their own call); the servicer's path is test_api's."""

        async def decide() -> None:
            assert self.manager is not None
            self.manager.decide_approval(
                approval_id, caller="carol", approve=approve, reason="" if approve else "not today"
            )

        self.run(decide())

    def all_records(self) -> list[AuditRecord]:
        async def query() -> list[AuditRecord]:
            return self.store.query(AuditQuery(limit=100_000))

        return self.run(query())


@pytest.fixture
def service(
    request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> Iterator[Any]:
    caplog.set_level(logging.INFO)
    made = SystemService(tmp_path, getattr(request, "param", POLICY))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def stub(service: SystemService) -> Iterator[Any]:
    with grpc.insecure_channel(service.address) as channel:
        yield runner_pb2_grpc.RunnerStub(channel), health_pb2_grpc.HealthStub(channel)


def open_session(stub: Any) -> str:
    return str(stub.OpenSession(pb.OpenSessionRequest(profile="good"), timeout=10).session_id)


def call(tool: str, session_id: str, approval_id: str = "", **arguments: Any) -> Any:
    return pb.CallToolRequest(session_id=session_id, tool=tool, arguments_json=json.dumps(arguments),
                              approval_id=approval_id)  # fmt: skip


def status_of(run: Any) -> tuple[grpc.StatusCode, str]:
    try:
        run()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def code_of(run: Any) -> grpc.StatusCode:
    try:
        run()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def settle(done: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def one_outcome_each(found: list[AuditRecord]) -> None:
    """Every intent's request has exactly one outcome record, and that record names exactly its intents."""
    outcomes = Counter(r.id for r in found if r.kind == records.REQUEST)
    assert all(n == 1 for n in outcomes.values()), outcomes
    by_id = {r.id: r for r in found if r.kind == records.REQUEST}
    written: dict[str, list[str]] = {}
    for intent in (r for r in found if r.kind == records.REQUEST_INTENT):
        written.setdefault(intent.data["request_id"], []).append(intent.id)
    for request_id, intent_ids in written.items():
        assert request_id in by_id, f"intent(s) {intent_ids} have no outcome"
        assert by_id[request_id].data.get("intents", []) == intent_ids, (by_id[request_id].data, intent_ids)


def healthy(service: SystemService, health: Any, caplog: pytest.LogCaptureFixture) -> None:
    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    # An earlier test's FakeAgent, garbage-collected with its loop, is the harness's, not the service's.
    bad = [
        r for r in caplog.records if (r.levelno >= logging.ERROR or r.exc_info) and "fake_agent" not in r.getMessage()
    ]
    assert not bad, [r.getMessage() for r in bad]


def ended_during_a_call(service: SystemService, runner: Any, end: str) -> tuple[grpc.StatusCode, str]:
    """The status of a call whose session is closed by another RPC (``close``) or whose sandbox dies (``kill``)."""
    other = open_session(runner)
    answers: list[tuple[grpc.StatusCode, str]] = []
    caller = threading.Thread(
        target=lambda: answers.append(status_of(lambda: runner.CallTool(call("sleep", other, seconds=2), timeout=10)))
    )
    caller.start()
    agent = service.backend.agents[-1]
    settle(lambda: any(m.get("method") == "tools/call" for m in agent.seen), "the call reached the server")
    if end == "close":
        runner.CloseSession(pb.CloseSessionRequest(session_id=other), timeout=10)
    else:
        service.run(service.backend.sandboxes[-1].destroy())
    caller.join(10)
    return answers[0]


def test_every_intent_has_one_outcome_under_cancels_closes_kills_and_approvals(
    service: SystemService, stub: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    runner, health = stub
    sid = open_session(runner)
    runner.CallTool(call("echo", sid, text="hi"), timeout=10)

    # The caller's own gRPC deadline runs out mid-call.
    assert code_of(lambda: runner.CallTool(call("sleep", sid, seconds=1), timeout=0.3)) == (
        grpc.StatusCode.DEADLINE_EXCEEDED
    )
    # The caller cancels a stream after its first progress event.
    stream = runner.CallToolStream(call("sleep", sid, seconds=1), timeout=10)
    first = next(stream)
    assert first.HasField("progress")
    stream.cancel()
    # A timeout the runner enforces (timeout_ms), the session still answering.
    request = call("sleep", sid, seconds=1)
    request.timeout_ms = 200
    assert code_of(lambda: runner.CallTool(request, timeout=10)) == grpc.StatusCode.DEADLINE_EXCEEDED

    # Approval claimed by id.
    pending = runner.CallTool(call("say", sid, text="one"), timeout=10)
    assert pending.approval.approval_id
    service.decide(pending.approval.approval_id, True)
    claimed = runner.CallTool(call("say", sid, approval_id=pending.approval.approval_id, text="one"), timeout=10)
    assert claimed.content[0].text == "one"
    # Approval waited for on a stream.
    waiting = runner.CallToolStream(call("say", sid, text="two"), timeout=10)
    asked = next(waiting)
    assert asked.HasField("approval")
    service.decide(asked.approval.approval_id, True)
    assert [m.result.content[0].text for m in waiting if m.HasField("result")] == ["two"]
    # A stream waiting for an approval, cancelled; and one denied.
    waiting = runner.CallToolStream(call("say", sid, text="three"), timeout=10)
    assert next(waiting).HasField("approval")
    waiting.cancel()
    denied = runner.CallTool(call("say", sid, text="four"), timeout=10)
    service.decide(denied.approval.approval_id, False)
    assert code_of(lambda: runner.CallTool(call("say", sid, approval_id=denied.approval.approval_id, text="four"),
                                           timeout=10)) == grpc.StatusCode.PERMISSION_DENIED  # fmt: skip

    # A session closed by another RPC during a call; another whose sandbox dies during one.
    closed, killed = (ended_during_a_call(service, runner, end) for end in ("close", "kill"))
    assert closed[0] == killed[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert closed[1].endswith("was closed while this request ran"), closed
    assert "the sandbox exited (exit status 137)" in killed[1], killed

    time.sleep(0.3)  # abandoned outcomes are queued, not awaited
    found = service.all_records()
    one_outcome_each(found)
    outcomes = Counter(r.data.get("outcome") for r in found if r.kind == records.REQUEST)
    assert outcomes["abandoned"] >= 2, outcomes

    # Replay runs each answered call once: echo, and nothing that needs approval today.
    seen_before = len(service.backend.agents)
    verdicts = list(runner.ReplaySession(pb.ReplaySessionRequest(session_id=sid, timeout_ms=30_000), timeout=60))
    replayed = service.backend.agents[seen_before]
    ran = [m["params"]["name"] for m in replayed.seen if m.get("method") == "tools/call"]
    answered = [r for r in found if r.session_id == sid and r.kind == records.REQUEST
                and r.data.get("method") == "tools/call" and r.data.get("outcome") == "ok"]  # fmt: skip
    assert len(verdicts) == len(answered) == 3  # echo and the two approved says
    assert ran == ["echo"]  # each answered call once; a call that needs approval today is refused, not run
    assert [v.verdict for v in verdicts].count(records.REFUSED) == 2

    # QueryAudit by kind, ExportSession and an offline verify of the export.
    intents = list(runner.QueryAudit(pb.QueryAuditRequest(session_id=sid, kinds=["request.intent"]), timeout=10))
    assert intents and {r.kind for r in intents} == {"request.intent"}
    export = tmp_path / "export.jsonl"
    export.write_text("".join(c.lines for c in runner.ExportSession(pb.ExportSessionRequest(session_id=sid),
                                                                     timeout=10)))  # fmt: skip
    assert verify_export(export).intact
    assert runner.VerifyAudit(pb.VerifyAuditRequest(), timeout=10).intact
    one_outcome_each(service.all_records())
    healthy(service, health, caplog)


def slow_writes(service: SystemService, kind: str, delay: float = 0.5) -> None:
    """Records of ``kind`` are written as usual, but their writers hear so only after ``delay`` (a slow disk)."""
    submit = service.store.submit

    def slow(event: Any, *, durable: bool = True) -> Any:
        future = submit(event, durable=durable)
        if event.kind != kind:
            return future
        later: Any = type(future)()

        def resolve() -> None:
            if later.set_running_or_notify_cancel():  # the waiter gave up: the record is written all the same
                later.set_result(future.result())

        threading.Timer(delay, resolve).start()
        return later

    service.store.submit = slow  # type: ignore[method-assign]


def test_a_caller_leaving_while_its_intent_is_written_leaves_an_outcome_naming_it(
    service: SystemService, stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The intent lands (it was handed to the writer) though its caller left while it was being made durable."""
    runner, health = stub
    sid = open_session(runner)
    slow_writes(service, records.REQUEST_INTENT)
    assert code_of(lambda: runner.CallTool(call("echo", sid, text="hi"), timeout=0.2)) == (
        grpc.StatusCode.DEADLINE_EXCEEDED
    )
    time.sleep(0.8)
    found = service.all_records()
    assert [r.kind for r in found if r.kind == records.REQUEST_INTENT] == [records.REQUEST_INTENT]
    one_outcome_each(found)
    healthy(service, health, caplog)


def test_a_caller_leaving_while_its_session_open_is_written_leaves_no_session_behind(
    service: SystemService, stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Once, the session stayed STARTING for ever: its sandbox running, a slot of the caller's quota taken."""
    runner, health = stub
    slow_writes(service, records.SESSION_OPEN)
    opening = lambda: runner.OpenSession(pb.OpenSessionRequest(profile="good"), timeout=0.2)  # noqa: E731
    assert code_of(opening) == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.8)
    sandbox = service.backend.sandboxes[-1]
    settle(lambda: sandbox.destroyed, "the sandbox of the open nobody waits for is destroyed")
    sessions = runner.ListSessions(pb.ListSessionsRequest(), timeout=5).sessions
    assert [s.state for s in sessions] == [pb.SESSION_STATE_FAILED], sessions
    found = [r for r in service.all_records() if r.session_id == sessions[0].session_id]
    assert [r.kind for r in found] == ["policy", "session.open", "session.close"]
    healthy(service, health, caplog)


def test_a_caller_leaving_while_its_sandbox_boots_leaves_a_record_of_it(
    service: SystemService, stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Once, a sandbox started and destroyed for an open nobody waited for had no record but the policy's."""
    runner, health = stub
    handler_for = service.backend._handler_for

    def slow_server(spec: Any) -> Any:
        agent = handler_for(spec)

        async def slow(io: Any) -> int:
            await asyncio.sleep(0.5)  # the server is slow to come up
            return int(await agent(io))

        return slow

    service.backend._handler_for = slow_server
    opening = runner.OpenSession.future(pb.OpenSessionRequest(profile="good"), timeout=10)
    time.sleep(0.2)
    opening.cancel()  # a deadline would be the runner's own: a session.open record of DEADLINE_EXCEEDED
    sandbox = service.backend.sandboxes[-1]
    settle(lambda: sandbox.destroyed, "the sandbox of the open nobody waits for is destroyed")
    time.sleep(0.3)
    found = [r for r in service.all_records() if r.session_id == service.backend.specs[-1].session_id]
    assert [(r.kind, r.data.get("outcome") or r.data.get("state")) for r in found] == [
        ("policy", None), ("session.open", "abandoned"), ("session.close", "failed"),
    ]  # fmt: skip
    healthy(service, health, caplog)


STRICT = """
    approvals: {timeout_s: 30}
    anomaly: {max_events: 3, window_s: 60}
    callers:
      anonymous:
        roles: [admin, approver, auditor]
        profiles: ["*"]
        session_rates: {concurrent_calls: 2}
"""


@pytest.mark.parametrize("service", [STRICT], indirect=True)
def test_quarantine_and_rate_refusals_during_a_call(
    service: SystemService, stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    runner, health = stub
    sid = open_session(runner)
    answers: list[tuple[grpc.StatusCode, str]] = []
    in_flight = [threading.Thread(target=lambda: answers.append(status_of(
        lambda: runner.CallTool(call("sleep", sid, seconds=2), timeout=10)))) for _ in range(2)]  # fmt: skip
    agent = service.backend.agents[-1]
    for started, caller in enumerate(in_flight, 1):
        caller.start()
        settle(lambda: sum(m.get("method") == "tools/call" for m in agent.seen) == started, "the call reached it")  # noqa: B023
    # Both call slots taken: a third call is refused by the rate, not run.
    refused = [code_of(lambda: runner.CallTool(call("echo", sid, text="x"), timeout=10)) for _ in range(2)]
    assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    # Three invalid calls quarantine the session under the two still running.
    invalid = [code_of(lambda: runner.CallTool(call("echo", sid, text="x" * 30), timeout=10)) for _ in range(3)]
    assert invalid == [grpc.StatusCode.INVALID_ARGUMENT] * 3
    for caller in in_flight:
        caller.join(10)
    # The calls under way hear why their session ended; nobody records the runner's own kill as the sandbox's exit.
    assert [code for code, _ in answers] == [grpc.StatusCode.FAILED_PRECONDITION] * 2
    assert all("quarantined after 3" in details and "exit status" not in details for _, details in answers), answers
    time.sleep(0.3)
    found = service.all_records()
    assert not [r for r in found if r.kind == records.EXIT]
    one_outcome_each(found)
    assert runner.VerifyAudit(pb.VerifyAuditRequest(), timeout=10).intact
    healthy(service, health, caplog)


def test_a_session_busy_with_a_call_is_not_reaped_as_idle(
    service: SystemService, stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Once, a call (or an approval wait) longer than the session's idle timeout ended it as "idle" mid-call."""
    runner, health = stub
    opening = pb.OpenSessionRequest(profile="good")
    opening.limits.idle_timeout_ms = 300
    sid = runner.OpenSession(opening, timeout=10).session_id
    answers: list[tuple[grpc.StatusCode, str]] = []
    caller = threading.Thread(
        target=lambda: answers.append(status_of(lambda: runner.CallTool(call("sleep", sid, seconds=1), timeout=10)))
    )
    caller.start()
    agent = service.backend.agents[-1]
    settle(lambda: any(m.get("method") == "tools/call" for m in agent.seen), "the call reached the server")
    for _ in range(4):  # the reaper looks in, again and again, past the idle timeout
        time.sleep(0.2)
        service.run(service.manager.reap())  # type: ignore[union-attr]
    caller.join(10)
    assert answers == [(grpc.StatusCode.OK, "")]
    # Idle again, it is reaped.
    time.sleep(0.4)
    service.run(service.manager.reap())  # type: ignore[union-attr]
    state = runner.GetSession(pb.GetSessionRequest(session_id=sid), timeout=5).session
    assert state.state == pb.SESSION_STATE_CLOSED and "idle" in state.failure
    healthy(service, health, caplog)


def test_a_session_closed_while_it_opens_says_so(
    service: SystemService, stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Its owner sees it STARTING in ListSessions and closes it: the open says why, no exit record blames it."""
    runner, health = stub
    handler_for = service.backend._handler_for

    def slow_server(spec: Any) -> Any:
        agent = handler_for(spec)

        async def slow(io: Any) -> int:
            await asyncio.sleep(0.5)
            return int(await agent(io))

        return slow

    service.backend._handler_for = slow_server
    opening = runner.OpenSession.future(pb.OpenSessionRequest(profile="good"), timeout=10)
    settle(lambda: runner.ListSessions(pb.ListSessionsRequest(), timeout=5).sessions, "the session is listed")
    [starting] = runner.ListSessions(pb.ListSessionsRequest(), timeout=5).sessions
    assert starting.state == pb.SESSION_STATE_STARTING
    runner.CloseSession(pb.CloseSessionRequest(session_id=starting.session_id), timeout=10)
    assert status_of(opening.result) == (
        grpc.StatusCode.FAILED_PRECONDITION, f"session {starting.session_id} was closed while this request ran",
    )  # fmt: skip
    time.sleep(0.3)
    found = [r for r in service.all_records() if r.session_id == starting.session_id]
    assert [(r.kind, r.data.get("outcome")) for r in found] == [("policy", None), ("session.open", "error")]
    healthy(service, health, caplog)
