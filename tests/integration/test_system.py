"""The real service as one system, under cancels and faults, with the audit log as referee.

A scripted server's ``slow`` tool is cut short every way a call can end early: the caller's gRPC deadline, a
cancelled CallToolStream, the session closed by another RPC, the sandbox killed by Docker. After all of it
every ``request.intent`` has exactly one outcome ``request`` record naming it, the session's export verifies
offline with ``mcp-runner audit verify --export``, the chain verifies, health says SERVING and the service log
holds no ERROR and no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import docker
import grpc

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api._proto.mcp_runner.v1 import runner_pb2_grpc
from runner.audit import records
from tests.integration.conftest import Service

SLOW = json.dumps({"steps": 40, "delay_ms": 100})  # 4 s, a progress event every 0.1 s


def slow_call(session_id: str) -> pb.CallToolRequest:
    return pb.CallToolRequest(session_id=session_id, tool="slow", arguments_json=SLOW)


def status_of(run: Any) -> tuple[grpc.StatusCode, str]:
    try:
        run()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def ended_under_a_call(service: Service, stub: Any, end: str) -> tuple[grpc.StatusCode, str]:
    """The answer to a slow call whose session is closed by another RPC (``close``) or killed by Docker."""
    session_id = stub.OpenSession(pb.OpenSessionRequest(profile="scripted"), timeout=60).session_id
    answers: list[tuple[grpc.StatusCode, str]] = []
    caller = threading.Thread(target=lambda: answers.append(status_of(lambda: stub.CallTool(slow_call(session_id),
                                                                                             timeout=30))))  # fmt: skip
    caller.start()
    time.sleep(1.0)  # well into the call
    if end == "close":
        stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=30)
    else:
        engine = docker.from_env()
        [container] = engine.containers.list(filters={"label": f"mcp-runner.session={session_id}"})
        container.kill()
    caller.join(30)
    return answers[0]


def test_every_intent_has_one_outcome_when_calls_are_cut_short(service: Service, tmp_path: Path) -> None:
    log_start = len(service.log())
    with grpc.insecure_channel(service.address) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        session_id = stub.OpenSession(pb.OpenSessionRequest(profile="scripted"), timeout=60).session_id
        # The caller's own deadline runs out mid-call.
        assert status_of(lambda: stub.CallTool(slow_call(session_id), timeout=0.8))[0] == (
            grpc.StatusCode.DEADLINE_EXCEEDED
        )
        # The caller cancels a stream after its first progress events.
        stream = stub.CallToolStream(slow_call(session_id), timeout=30)
        assert next(stream).HasField("progress")
        stream.cancel()
        # The session still answers.
        echoed = stub.CallTool(pb.CallToolRequest(session_id=session_id, tool="echo", arguments_json='{"text": "hi"}'),
                               timeout=30)  # fmt: skip
        assert not echoed.is_error
        closed = ended_under_a_call(service, stub, "close")
        killed = ended_under_a_call(service, stub, "kill")
        stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=30)

    assert closed[0] == grpc.StatusCode.FAILED_PRECONDITION and closed[1].endswith("was closed while this request ran")
    assert killed[0] == grpc.StatusCode.FAILED_PRECONDITION and "exit status 137" in killed[1], killed

    time.sleep(0.5)  # an abandoned call's outcome is queued, not awaited
    # (a deadline the caller set is the runner's own too: that call's outcome is DEADLINE_EXCEEDED, not abandoned)
    with service.client() as client:
        found = [r for r in client.query_audit(kinds=[records.REQUEST, records.REQUEST_INTENT], limit=100_000)]
        assert client.verify_audit().intact
        export = tmp_path / "session.jsonl"
        export.write_text("".join(client.export_session(session_id)))
    outcomes = Counter(r.id for r in found if r.kind == records.REQUEST)
    assert all(n == 1 for n in outcomes.values()), outcomes
    requests = {r.id: json.loads(r.data_json) for r in found if r.kind == records.REQUEST}
    intents: dict[str, list[str]] = {}
    for record in (r for r in found if r.kind == records.REQUEST_INTENT):
        intents.setdefault(json.loads(record.data_json)["request_id"], []).append(record.id)
    for request_id, named in intents.items():
        assert requests[request_id].get("intents") == named, (requests[request_id], named)
    assert sum(data["outcome"] == "abandoned" for data in requests.values()) >= 1  # the cancelled stream

    verified = subprocess.run([sys.executable, "-m", "runner.cli", "audit", "verify", "--export", str(export)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert service.healthy()
    log = service.log()[log_start:]
    assert "Traceback" not in log and " ERROR " not in log, log
