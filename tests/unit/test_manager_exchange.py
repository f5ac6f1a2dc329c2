"""SessionManager: the server talks back (issue 14, door contract section 2), over FakeBackend and a real audit log.

Server requests reach the request's Exchange, else the session's listener, else are refused -32601; answers are
checked before the server gets them; notifications are validated and sanitized; 2026-07-28 sessions hand back
input-required results and take retries; the new operations go through policy, capability and audit."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import mcp_types
import pytest

from runner import errors
from runner.audit import records
from runner.audit.records import AuditQuery, AuditRecord
from runner.audit.store import AuditStore
from runner.config import Limits, Profile, Settings
from runner.policy import PolicyStore
from runner.sandbox.base import SandboxSpec
from runner.sandbox.fake import FakeBackend, Handler
from runner.sessions.journal import Journal
from runner.sessions.manager import SessionManager
from runner.sessions.models import Exchange, ServerNotification, ServerRequest, ToolCallOutcome
from tests.unit.interactive_agent import FORM, STATE, InteractiveAgent

LIMITS = Limits(call_timeout_s=5.0, idle_timeout_s=60, max_lifetime_s=600)
PROFILES = {
    "talk": Profile(name="talk", image="fake", command=("talk",), limits=LIMITS),
    "old": Profile(name="old", image="fake", command=("fallback",), limits=LIMITS),
}
SETTINGS = Settings(profiles=MappingProxyType(PROFILES), max_sessions=10, reap_interval_s=3600)
POLICY = """
    callers:
      alice:
        profiles: ["*"]
        prompts: {deny: ["secret*"]}
        resources: {deny: ["file:///private/*"]}
      bob:
        profiles: ["*"]
"""


@dataclass
class Env:
    manager: SessionManager
    store: AuditStore
    agents: list[InteractiveAgent]
    specs: list[SandboxSpec]

    def records(self, kind: str) -> list[AuditRecord]:
        return [r for r in self.store.query(AuditQuery()) if r.kind == kind]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = AuditStore(tmp_path / "audit.db")
    store.open()
    agents: list[InteractiveAgent] = []
    specs: list[SandboxSpec] = []

    def handler(spec: SandboxSpec) -> Handler:
        specs.append(spec)
        agents.append(InteractiveAgent(fallback=spec.command[0] == "fallback"))
        return agents[-1]

    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY), encoding="utf-8")
    manager = SessionManager(FakeBackend(handler), SETTINGS, PolicyStore(tmp_path / "policy.yaml"), Journal(store))
    await manager.start()
    try:
        yield Env(manager, store, agents, specs)
    finally:
        await manager.shutdown()
        store.close()


def said(outcome: ToolCallOutcome) -> Any:
    assert outcome.result is not None
    block = outcome.result.content[0]
    assert isinstance(block, mcp_types.TextContent)
    return json.loads(block.text)


async def open_talk(env: Env, caller: str = "alice", **kw: Any) -> str:
    opened = await env.manager.open(kw.pop("profile", "talk"), caller=caller, **kw)
    return opened.info.session_id


async def test_an_elicitation_reaches_the_calls_exchange_and_its_answer_the_server(env: Env) -> None:
    session = await open_talk(env, door="mcp-http")
    asked: list[ServerRequest] = []

    async def on_input(request: ServerRequest) -> dict[str, Any]:
        asked.append(request)
        return {"action": "accept", "content": {"name": "Ada"}}

    outcome = await env.manager.call_tool(session, "ask", {}, caller="alice", exchange=Exchange(on_input=on_input))
    assert said(outcome) == {"result": {"action": "accept", "content": {"name": "Ada"}}, "id": 1,
                             "type": "answer"}  # fmt: skip
    assert asked[0].method == "elicitation/create"
    assert asked[0].params["requestedSchema"] == FORM and asked[0].params["message"] == "Name please"
    (record,) = env.records(records.SERVER_REQUEST)
    assert record.data["outcome"] == "answered" and record.data["method"] == "elicitation/create"
    assert record.data["door"] == "mcp-http"
    assert record.data["answer"] == {"action": "accept", "content": {"name": "Ada"}}
    call = next(r for r in env.records(records.REQUEST) if r.data["method"] == "tools/call")
    assert record.data["related"] == call.id and call.data["door"] == "mcp-http"
    opened = env.records(records.SESSION_OPEN)[0]
    assert opened.data["door"] == "mcp-http" and opened.data["protocol"] == "2025-11-25"


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"action": "accept", "content": {"name": "far too long a name"}}, "requestedSchema"),
        ({"action": "accept", "content": {}}, "requestedSchema"),
        ({"action": "maybe"}, "ElicitResult"),
        ("yes", "not a JSON object"),
    ],
)
async def test_an_answer_that_does_not_fit_gets_the_server_invalid_params(
    env: Env, answer: Any, problem: str
) -> None:
    session = await open_talk(env)

    async def on_input(request: ServerRequest) -> Any:
        return answer

    outcome = await env.manager.call_tool(session, "ask", {}, caller="alice", exchange=Exchange(on_input=on_input))
    error = said(outcome)["error"]
    assert error["code"] == -32602 and problem in error["message"]
    assert env.records(records.SERVER_REQUEST)[0].data["outcome"] == "invalid_answer"


async def test_a_declined_request_reaches_the_server_as_its_error(env: Env) -> None:
    session = await open_talk(env)

    async def on_input(request: ServerRequest) -> dict[str, Any]:
        raise errors.ClientDeclined(-1, "the user said no")

    outcome = await env.manager.call_tool(session, "sample", {}, caller="alice", exchange=Exchange(on_input=on_input))
    assert said(outcome)["error"] == {"code": -1, "message": "the user said no"}
    assert env.records(records.SERVER_REQUEST)[0].data["outcome"] == "declined"


async def test_a_sampling_answer_is_validated_and_passed_on(env: Env) -> None:
    session = await open_talk(env)

    async def on_input(request: ServerRequest) -> dict[str, Any]:
        assert request.params["maxTokens"] == 10
        return {"role": "assistant", "content": {"type": "text", "text": "hi"}, "model": "m", "extra": 1}

    outcome = await env.manager.call_tool(session, "sample", {}, caller="alice", exchange=Exchange(on_input=on_input))
    # What the server gets is the validated model's JSON: a field MCP does not define is not passed on.
    assert said(outcome)["result"] == {"role": "assistant", "content": {"type": "text", "text": "hi"}, "model": "m"}


async def test_without_any_handler_a_server_request_is_method_not_found(env: Env) -> None:
    session = await open_talk(env)
    outcome = await env.manager.call_tool(session, "ask", {}, caller="alice")
    error = said(outcome)["error"]
    assert error["code"] == -32601 and "cannot answer elicitation/create" in error["message"]
    assert env.records(records.SERVER_REQUEST)[0].data["outcome"] == "unhandled"


async def test_unrelated_requests_and_notifications_go_to_the_listener(env: Env) -> None:
    session = await open_talk(env)
    notes: list[ServerNotification] = []
    call_notes: list[ServerNotification] = []

    async def listener_input(request: ServerRequest) -> dict[str, Any]:
        return {"roots": [{"uri": "file:///work", "name": "work"}]}

    async def on_note(note: ServerNotification) -> None:
        notes.append(note)

    async def on_call_note(note: ServerNotification) -> None:
        call_notes.append(note)

    env.manager.listen(session, caller="alice", on_notification=on_note, on_input=listener_input)
    outcome = await env.manager.call_tool(session, "roots", {}, caller="alice", exchange=Exchange(on_input=None))
    assert said(outcome)["result"] == {"roots": [{"uri": "file:///work", "name": "work"}]}
    await env.manager.call_tool(session, "notify", {}, caller="alice", exchange=Exchange(on_notification=on_call_note))
    # The log message belongs to the call: its exchange; the list change to the session: the listener.
    assert [n.method for n in call_notes] == ["notifications/message"]
    assert [n.method for n in notes] == ["notifications/tools/list_changed"]
    assert call_notes[0].params["level"] == "info"
    assert "AKIAIOSFODNN7EXAMPLE" not in json.dumps(call_notes[0].params)  # sanitized like any result
    env.manager.listen(session, caller="alice")  # removed: the next roots request finds nobody
    outcome = await env.manager.call_tool(session, "roots", {}, caller="alice")
    assert said(outcome)["error"]["code"] == -32601


async def test_covers_stack_over_the_listener_and_put_it_back(env: Env) -> None:
    """A gRPC watch of a door's session covers the door's listener; covers that end in any order bring back only
    what is still listening, and ``listen`` under covers sets what is in effect once they end."""
    session = await open_talk(env)
    heard: list[str] = []

    def answering(name: str) -> Any:
        async def on_input(request: ServerRequest) -> dict[str, Any]:
            heard.append(name)
            return {"roots": []}

        return on_input

    async def roots() -> Any:
        return said(await env.manager.call_tool(session, "roots", {}, caller="alice"))

    env.manager.listen(session, caller="alice", on_input=answering("door"))
    uncover_older = env.manager.cover(session, caller="alice", on_input=answering("older"))
    uncover_newer = env.manager.cover(session, caller="alice", on_input=answering("newer"))
    await roots()
    uncover_older()  # ended under the newer: the newer still listens
    await roots()
    env.manager.listen(session, caller="alice", on_input=answering("door again"))  # under the cover
    await roots()
    uncover_newer()
    uncover_newer()  # twice changes nothing
    await roots()
    assert heard == ["newer", "newer", "newer", "door again"]
    with pytest.raises(errors.PermissionDenied):
        env.manager.cover(session, caller="bob", on_input=answering("bob"))


async def test_another_caller_cannot_listen(env: Env) -> None:
    session = await open_talk(env)

    async def on_note(note: ServerNotification) -> None:
        raise AssertionError("never")

    with pytest.raises(errors.PermissionDenied):
        env.manager.listen(session, caller="bob", on_notification=on_note)


async def test_a_malformed_server_request_is_answered_invalid_params_and_the_session_lives(env: Env) -> None:
    session = await open_talk(env)
    asked: list[ServerRequest] = []

    async def on_input(request: ServerRequest) -> dict[str, Any]:
        asked.append(request)
        return {}

    exchange = Exchange(on_input=on_input)
    bad = {"method": "sampling/createMessage", "params": {"messages": "nope"}}
    outcome = await env.manager.call_tool(session, "raw", bad, caller="alice", exchange=exchange)
    assert said(outcome)["error"]["code"] == -32602 and not asked
    unsafe = {"method": "elicitation/create", "params": {"mode": "form", "message": "x", "requestedSchema":
              {"type": "object", "properties": {"a": {"$ref": "http://example.invalid/s.json"}}}}}  # fmt: skip
    outcome = await env.manager.call_tool(session, "raw", unsafe, caller="alice", exchange=exchange)
    assert said(outcome)["error"]["code"] == -32602 and not asked
    assert [r.data["outcome"] for r in env.records(records.SERVER_REQUEST)] == ["invalid_request", "invalid_request"]
    await env.manager.ping(session, caller="alice")


async def test_a_flood_of_server_requests_is_throttled_and_harms_no_other_session(env: Env) -> None:
    session = await open_talk(env)
    other = await open_talk(env, caller="bob")

    async def on_input(request: ServerRequest) -> dict[str, Any]:
        return {"roots": []}

    exchange = Exchange(on_input=on_input)
    outcome = await env.manager.call_tool(session, "flood", {"count": 60}, caller="alice", exchange=exchange)
    codes = said(outcome)
    assert codes.count(0) <= 25 and codes.count(-32000) >= 35  # the burst answered, the rest refused
    throttled = [r for r in env.records(records.SERVER_REQUEST) if r.data["outcome"] == "throttled"]
    assert len(throttled) == 1  # one record per run of refusals, not one per request
    await env.manager.ping(other, caller="bob")


async def test_stateless_open_sets_the_agents_era_and_skips_the_warm_pool(env: Env) -> None:
    opened = await env.manager.open("talk", caller="alice", door="mcp-http", protocol="2026-07-28")
    assert opened.protocol == "2026-07-28"
    assert opened.capabilities.completions is not None
    assert env.specs[-1].env["MCP_AGENT_PROTOCOL"] == "2026-07-28"
    default = await env.manager.open("talk", caller="alice")
    assert default.protocol == "2025-11-25" and "MCP_AGENT_PROTOCOL" not in env.specs[-1].env


async def test_a_server_without_the_stateless_era_falls_back(env: Env) -> None:
    opened = await env.manager.open("old", caller="alice", protocol="2026-07-28")
    assert opened.protocol == "2025-11-25"
    with pytest.raises(errors.InvalidArgument):  # a retry of the stateless era means nothing to this session
        await env.manager.call_tool(opened.info.session_id, "need", {}, caller="alice",
                                    exchange=Exchange(request_state="x"))  # fmt: skip


@pytest.mark.parametrize(("door", "protocol"), [("smtp", "2025-11-25"), ("grpc", "2024-01-01")])
async def test_unknown_door_or_protocol_is_refused(env: Env, door: str, protocol: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        await env.manager.open("talk", caller="alice", door=door, protocol=protocol)


async def test_input_required_round_trip_keeps_the_state_verbatim(env: Env) -> None:
    session = await open_talk(env, protocol="2026-07-28", door="mcp-http")
    capabilities: dict[str, Any] = {"elicitation": {"form": {}}}
    first = await env.manager.call_tool(session, "need", {}, caller="alice",
                                        exchange=Exchange(client_capabilities=capabilities))  # fmt: skip
    assert first.result is None and first.input_required is not None
    needed = first.input_required
    assert needed.request_state == STATE  # never sanitized: the server must get it back exactly
    assert needed.input_requests is not None
    # Its requests are the server's words put to a user: sanitized, with findings (flagged under this profile).
    where = "input_requests.who.params.message"
    assert [(f.kind, f.where) for f in first.findings] == [("injection_instruction", where)]
    sent = [m for m in env.agents[-1].seen if m.get("method") == "tools/call"][-1]
    assert sent["capabilities"] == capabilities
    answers = {"who": {"action": "accept", "content": {"name": "Ada"}}}
    retry = await env.manager.call_tool(session, "need", {}, caller="alice",
                                        exchange=Exchange(input_responses=answers, request_state=STATE))  # fmt: skip
    assert said(retry) == answers
    calls = [r for r in env.records(records.REQUEST) if r.data["method"] == "tools/call"]
    assert calls[0].data["outcome"] == "input_required"
    assert STATE not in json.dumps([dict(r.data) for r in env.store.query(AuditQuery())])  # digests only
    assert calls[0].data["result"]["requestState"]["sha256"]


async def test_input_responses_that_fit_no_answer_are_refused(env: Env) -> None:
    session = await open_talk(env, protocol="2026-07-28")
    with pytest.raises(errors.InvalidArgument):
        await env.manager.call_tool(session, "need", {}, caller="alice",
                                    exchange=Exchange(input_responses={"who": {"action": "perhaps"}}))  # fmt: skip


async def test_prompts_and_resources_hand_back_input_required(env: Env) -> None:
    session = await open_talk(env, protocol="2026-07-28")
    exchange = Exchange(client_capabilities={})
    prompt = await env.manager.get_prompt(session, "greet", {}, caller="alice", exchange=exchange)
    assert isinstance(prompt.value, mcp_types.InputRequiredResult)
    read = await env.manager.read_resource_result(session, "mem://a", caller="alice", exchange=exchange)
    assert isinstance(read.value, mcp_types.InputRequiredResult)
    with pytest.raises(errors.FailedPrecondition):  # no exchange: nobody could give the input
        await env.manager.get_prompt(session, "greet", {}, caller="alice")
    retry = Exchange(input_responses={"who": {"action": "decline"}}, request_state=STATE)
    done = await env.manager.read_resource_result(session, "mem://a", caller="alice", exchange=retry)
    assert isinstance(done.value, mcp_types.ReadResourceResult)
    assert done.value.contents[0].uri == "mem://a"


async def test_a_caller_that_cannot_take_input_required_is_refused_within_the_record(env: Env) -> None:
    """gRPC reaching a 2026-07-28 lease: an input-required answer is refused, and its record says so (an empty
    result once went back instead, recorded as input_required)."""
    session = await open_talk(env, protocol="2026-07-28", door="mcp-http")

    async def on_input(request: ServerRequest) -> dict[str, Any]:
        raise AssertionError("a 2026-07-28 server asks by input-required answers, not requests")

    for exchange in (None, Exchange(on_input=on_input)):
        with pytest.raises(errors.FailedPrecondition, match="2026-07-28"):
            await env.manager.call_tool(session, "need", {}, caller="alice", exchange=exchange)
    with pytest.raises(errors.FailedPrecondition, match="2026-07-28"):
        await env.manager.read_resource(session, "mem://a", caller="alice")
    with pytest.raises(errors.FailedPrecondition, match="2026-07-28"):
        await env.manager.read_resource_result(session, "mem://a", caller="alice", exchange=Exchange(on_input=on_input))
    asked = [r.data for r in env.records(records.REQUEST) if r.data["method"] in ("tools/call", "resources/read")]
    assert [r["outcome"] for r in asked] == ["error"] * 4


async def test_resource_templates_are_listed_over_pages_and_sanitized(env: Env) -> None:
    session = await open_talk(env)
    listed = await env.manager.list_resource_templates(session, caller="alice")
    assert [t.uri_template for t in listed.value] == ["file:///{path}", "file:///{path}"]
    assert "AKIAIOSFODNN7EXAMPLE" not in (listed.value[0].description or "")
    assert listed.findings


async def test_completion_follows_the_policy_of_what_it_completes(env: Env) -> None:
    session = await open_talk(env)
    argument = mcp_types.CompletionArgument(name="n", value="a")
    params = mcp_types.CompleteRequestParams(ref=mcp_types.PromptReference(name="greet"), argument=argument)
    done = await env.manager.complete(session, params, caller="alice")
    assert done.completion.values == ["alpha", "beta"]
    with pytest.raises(errors.PermissionDenied, match="secret"):
        denied = params.model_copy(update={"ref": mcp_types.PromptReference(name="secret-plan")})
        await env.manager.complete(session, denied, caller="alice")
    with pytest.raises(errors.PermissionDenied):
        private = mcp_types.ResourceTemplateReference(uri="file:///private/{x}")
        await env.manager.complete(session, params.model_copy(update={"ref": private}), caller="alice")
    policy = [r for r in env.records(records.POLICY) if r.data.get("action") == "completion/complete"]
    assert [r.data["verdict"] for r in policy] == ["allow", "deny", "deny"]


async def test_logging_subscriptions_and_ping(env: Env) -> None:
    session = await open_talk(env)
    await env.manager.set_logging_level(session, "warning", caller="alice")
    with pytest.raises(errors.InvalidArgument):
        await env.manager.set_logging_level(session, "loud", caller="alice")
    await env.manager.subscribe(session, "mem://a", caller="alice")
    with pytest.raises(errors.PermissionDenied):
        await env.manager.subscribe(session, "file:///private/key", caller="alice")
    await env.manager.unsubscribe(session, "mem://a", caller="alice")
    await env.manager.ping(session, caller="alice")
    methods = [m["method"] for m in env.agents[-1].seen if m["type"] == "request"]
    assert methods[-4:] == ["logging/setLevel", "resources/subscribe", "resources/unsubscribe", "ping"]
    recorded = [r.data["method"] for r in env.records(records.REQUEST)]
    assert {"logging/setLevel", "resources/subscribe", "resources/unsubscribe", "ping"} <= set(recorded)


async def test_a_handler_still_waiting_when_the_call_times_out_is_let_go(env: Env) -> None:
    session = await open_talk(env)
    waiting = asyncio.Event()

    async def on_input(request: ServerRequest) -> dict[str, Any]:
        waiting.set()
        await asyncio.Event().wait()  # a user who never answers
        return {}

    with pytest.raises(errors.DeadlineExceeded):
        await env.manager.call_tool(session, "ask", {}, caller="alice", timeout=0.3,
                                    exchange=Exchange(on_input=on_input))  # fmt: skip
    assert waiting.is_set()
    await env.manager.ping(session, caller="alice")


async def test_only_default_era_opens_claim_warm_sandboxes_and_a_claimed_one_routes_its_server(
    tmp_path: Path,
) -> None:
    agents: list[InteractiveAgent] = []

    def handler(spec: SandboxSpec) -> Handler:
        agents.append(InteractiveAgent())
        return agents[-1]

    pooled = replace(SETTINGS, pool=MappingProxyType({"talk": 1}))
    manager = SessionManager(FakeBackend(handler), pooled)
    await manager.start()
    try:
        await asyncio.wait_for(manager.pool.filled("talk"), 5)
        stateless = await manager.open("talk", caller="alice", protocol="2026-07-28")
        assert stateless.protocol == "2026-07-28" and manager.pool.status()["talk"] == (1, 1)  # booted cold
        warm = await manager.open("talk", caller="alice", door="mcp-stdio")
        assert warm.protocol == "2025-11-25"

        async def on_input(request: ServerRequest) -> dict[str, Any]:
            return {"action": "decline"}

        outcome = await manager.call_tool(warm.info.session_id, "ask", {}, caller="alice",
                                          exchange=Exchange(on_input=on_input))  # fmt: skip
        assert said(outcome)["result"] == {"action": "decline"}  # the claim set the session's inbox
    finally:
        await manager.shutdown()
