"""Two callers hammering each other's session ids, through the real gRPC server: they learn nothing.

Every RPC that names a session answers another caller's id PERMISSION_DENIED (or NOT_FOUND for the audit
log of one it never saw) and a made-up id NOT_FOUND — the two documented answers — with the same words
whether the session is live or ended, and never its owner, profile, tools, state or failure. The owner's
session is untouched, and the audit log is intact.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api._proto.mcp_runner.v1 import runner_pb2_grpc
from runner.api.auth import hash_token
from tests.unit.test_fuzz_api import Service

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"}
RATES = "rates: {refusals_per_min: 100000, refusal_burst: 1000}"  # every refusal answered, none throttled
POLICY = f"""
    callers:
      alice: {{tokens: ["{hash_token(TOKENS["alice"])}"], profiles: ["*"], {RATES}, tools: {{approval: [say]}}}}
      bob: {{tokens: ["{hash_token(TOKENS["bob"])}"], profiles: ["*"], {RATES}}}
"""
OK = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    made = Service(tmp_path, POLICY, tokens=True)
    try:
        yield made
    finally:
        made.close()


def as_caller(stub: Any, name: str) -> Any:
    metadata = (("authorization", f"Bearer {TOKENS[name]}"),)

    class Caller:
        def __getattr__(self, rpc: str) -> Any:
            method = getattr(stub, rpc)
            return lambda request, **kw: method(request, metadata=metadata, timeout=10, **kw)

    return Caller()


def attempts(caller: Any, session_id: str) -> list[tuple[str, tuple[grpc.StatusCode, str]]]:
    """Every RPC that names a session, at ``session_id``: (rpc, (status, message))."""
    call = pb.CallToolRequest(session_id=session_id, tool="echo", arguments_json='{"text": "x"}')
    unary = {
        "GetSession": pb.GetSessionRequest(session_id=session_id),
        "ListTools": pb.ListToolsRequest(session_id=session_id),
        "CallTool": call,
        "ListResources": pb.ListResourcesRequest(session_id=session_id),
        "ReadResource": pb.ReadResourceRequest(session_id=session_id, uri="mem://greeting"),
        "ListPrompts": pb.ListPromptsRequest(session_id=session_id),
        "GetPrompt": pb.GetPromptRequest(session_id=session_id, name="greet"),
        "CloseSession": pb.CloseSessionRequest(session_id=session_id),
    }
    streams = {
        "CallToolStream": call,
        "ExportSession": pb.ExportSessionRequest(session_id=session_id),
        "ReplaySession": pb.ReplaySessionRequest(session_id=session_id),
    }
    out = []
    for rpc, request in unary.items():
        out.append((rpc, answer(lambda: getattr(caller, rpc)(request))))  # noqa: B023
    for rpc, request in streams.items():
        out.append((rpc, answer(lambda: list(getattr(caller, rpc)(request)))))  # noqa: B023
    return out


def answer(run: Any) -> tuple[grpc.StatusCode, str]:
    try:
        run()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_callers_learn_nothing_of_each_others_sessions(service: Service) -> None:
    with grpc.insecure_channel(service.address) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        alice, bob = as_caller(stub, "alice"), as_caller(stub, "bob")
        live = alice.OpenSession(pb.OpenSessionRequest(profile="good")).session_id
        ended = alice.OpenSession(pb.OpenSessionRequest(profile="crash")).session_id
        crashing = pb.CallToolRequest(session_id=ended, tool="echo", arguments_json='{"text": "x"}')
        assert answer(lambda: alice.CallTool(crashing))[0] == grpc.StatusCode.FAILED_PRECONDITION
        at_live, at_ended = attempts(bob, live), attempts(bob, ended)
        made_up = attempts(bob, "0123456789abcdef")
        for (rpc, (code, message)), (_, (ended_code, ended_message)) in zip(at_live, at_ended, strict=True):
            assert code in OK, (rpc, code, message)
            # Live or ended, the same answer but for the id itself.
            assert (code, message.replace(live, "ID")) == (ended_code, ended_message.replace(ended, "ID")), rpc
            for secret in ("alice", "good", "crash", "echo", "failed", "closed", "ready", "exit"):
                assert secret not in message.replace(live, "ID").lower(), (rpc, message)
        # A made-up id: NOT_FOUND; its audit records are Bob's own refusals, which he may read.
        assert {code for rpc, (code, _) in made_up if rpc not in ("ExportSession", "ReplaySession")} == {
            grpc.StatusCode.NOT_FOUND
        }
        exported = "".join(c.lines for c in bob.ExportSession(pb.ExportSessionRequest(session_id="0123456789abcdef")))
        assert exported and all('"caller":"bob"' in line for line in exported.splitlines()), exported
        # Alice's session is untouched and answers her.
        assert alice.GetSession(pb.GetSessionRequest(session_id=live)).session.state == pb.SESSION_STATE_READY
        assert alice.CallTool(pb.CallToolRequest(session_id=live, tool="echo", arguments_json='{"text": "hi"}'))
        assert not re.search("alice", repr([m for _, (_, m) in made_up]))


def test_another_callers_approval_id_tells_nothing_of_its_call(service: Service) -> None:
    """Once, claiming it named its tool ("is for tool 'say'") and told whether the arguments were its."""
    with grpc.insecure_channel(service.address) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        alice, bob = as_caller(stub, "alice"), as_caller(stub, "bob")
        hers = alice.OpenSession(pb.OpenSessionRequest(profile="good")).session_id
        mine = bob.OpenSession(pb.OpenSessionRequest(profile="good")).session_id
        asked = alice.CallTool(pb.CallToolRequest(session_id=hers, tool="say", arguments_json='{"text": "secret"}'))
        approval_id = asked.approval.approval_id
        answers = {
            (tool, arguments): answer(lambda: bob.CallTool(pb.CallToolRequest(
                session_id=mine, tool=tool, arguments_json=arguments, approval_id=approval_id)))  # noqa: B023
            for tool in ("say", "echo")
            for arguments in ('{"text": "secret"}', '{"text": "guess"}')
        }  # fmt: skip
        assert set(answers.values()) == {
            (grpc.StatusCode.PERMISSION_DENIED, f"approval {approval_id} was requested by another caller")
        }, answers
