"""examples/: every settings and policy file loads with the project's own loaders and means what its comments say;
the agent loop handles each status as its docstring promises (against a stand-in client, and a missing service).

The same files run against a real service in tests/integration/test_examples.py.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest

from runner.client_messages import ToolResult
from runner.config import EgressRule
from runner.policy import load_policy
from runner.settings_file import load_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SECURITY = EXAMPLES / "security-team"
EGRESS = EXAMPLES / "egress-allowlist"
AGENT_LOOP = EXAMPLES / "agent_loop.py"
ENV_NAMES = ("MCP_RUNNER_CONFIG", "MCP_RUNNER_LISTEN", "MCP_RUNNER_MCP_LISTEN", "MCP_RUNNER_INSTANCE",
             "MCP_RUNNER_BACKEND", "MCP_RUNNER_AUDIT_DB", "MCP_RUNNER_STATE_DIR")


def agent_loop() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_loop", AGENT_LOOP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["agent_loop"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_every_example_file_is_covered_here() -> None:
    skipped = {"certs", "__pycache__"}  # made by the README's commands, and by importing agent_loop
    found = (p for p in EXAMPLES.rglob("*") if p.is_file() and not skipped & set(p.parts))
    files = sorted(str(p.relative_to(EXAMPLES)) for p in found)
    assert files == ["README.md", "agent_loop.py", "egress-allowlist/settings.yaml", "security-team/policy.yaml",
                     "security-team/settings.yaml"]


def test_the_security_team_settings_load_and_require_certificates_and_tokens() -> None:
    settings = load_settings(SECURITY / "settings.yaml")
    assert settings.policy == SECURITY / "policy.yaml"
    assert settings.auth.mtls and settings.auth.tokens
    assert settings.tls is not None and settings.tls.client_ca == SECURITY / "certs" / "ca.pem"
    assert settings.listen == "0.0.0.0:50051" and settings.instance == "security-team"
    assert settings.audit.retention_s == 400 * 86400
    assert dict(settings.pool) == {"time": 1}


def test_the_security_team_policy_denies_destructive_tools_and_asks_for_approvals() -> None:
    policy = load_policy(SECURITY / "policy.yaml")
    decide = policy.tool_decision
    # Destructive tools: never, whichever level's rule catches them first.
    assert decide("agent-prod", "memory", "delete_entities").verdict == "deny"
    assert decide("agent-prod", "memory", "delete_observations").verdict == "deny"
    assert decide("agent-prod", "git", "git_reset").verdict == "deny"
    assert decide("agent-prod", "everything", "Remove_Everything").verdict == "deny"  # names are folded
    # High-impact tools wait for an approver.
    for profile, tool in [("filesystem", "write_file"), ("filesystem", "move_file"), ("git", "git_commit")]:
        assert decide("agent-prod", profile, tool).verdict == "approval", (profile, tool)
    # Everything else runs.
    for profile, tool in [("memory", "read_graph"), ("filesystem", "read_text_file"), ("time", "get_current_time")]:
        assert decide("agent-prod", profile, tool).verdict == "allow", (profile, tool)
    # The CI bot reads repositories and nothing else.
    assert decide("ci-bot", "git", "git_log").verdict == "allow"
    assert decide("ci-bot", "git", "git_diff_staged").verdict == "allow"
    assert decide("ci-bot", "git", "git_commit").verdict == "deny"


def test_the_security_team_policy_callers_roles_and_rates() -> None:
    policy = load_policy(SECURITY / "policy.yaml")
    policy.check_open("agent-prod", "memory")
    with pytest.raises(Exception, match="default_caller"):
        policy.check_open("someone-else", "time")
    with pytest.raises(Exception, match="ci-bot"):
        policy.check_open("ci-bot", "memory")
    assert policy.has_role("alice", "approver") and not policy.has_role("agent-prod", "approver")
    assert policy.has_role("sec-audit", "auditor") and not policy.has_role("sec-audit", "approver")
    agent = policy.caller("agent-prod")
    assert agent.rates.calls_per_s == 5 and agent.max_sessions == 8
    assert agent.limits.memory_bytes == 256 * 1024**2
    assert not policy.allow_self_approval and policy.anomaly_max_events == 5
    assert not policy.tokens, "no token digest is shipped: each installation makes its own"


def test_the_allowlist_profile_may_reach_one_host_only() -> None:
    settings = load_settings(EGRESS / "settings.yaml")
    profile = settings.profiles["python-docs"]
    assert profile.network is not None
    assert [(rule.host, rule.port, rule.private) for rule in profile.network.egress] == [
        ("docs.python.org", 443, False)
    ]
    assert profile.network.egress == (EgressRule("docs.python.org", 443),), "no credentials added at the edge"
    assert profile.command[0] == "mcp-server-fetch" and profile.image == "python-servers"
    assert profile.sanitize.injection_action == "block"
    assert settings.profiles["fetch"].network is None, "the built-in fetch keeps no network"
    assert dict(settings.pool) == {}


# ---- the agent loop against a stand-in client ---------------------------------------------------------------------


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def is_active(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


@dataclass
class FakeClient:
    """Answers each call with the next of ``answers`` (a ToolResult, or an error to raise)."""

    answers: list[ToolResult | FakeRpcError]
    open_error: FakeRpcError | None = None
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    @contextmanager
    def session(self, profile: str, **_: Any) -> Iterator[Any]:
        if self.open_error is not None:
            raise self.open_error
        tool = type("Tool", (), {})
        tools = []
        for name in ("convert_time", "get_current_time"):
            t = tool()
            t.name = name
            tools.append(t)
        server = type("Server", (), {"name": "mcp-time", "version": "1.0"})()
        try:
            yield type("Opened", (), {"session_id": "s1", "tools": tools, "server": server})()
        finally:
            self.closed.append("s1")

    def call_tool(self, session_id: str, tool: str, arguments: dict[str, Any], **_: Any) -> ToolResult:
        self.calls.append((tool, arguments))
        answer = self.answers.pop(0)
        if isinstance(answer, FakeRpcError):
            raise answer
        return answer


def _ok(text: str) -> ToolResult:
    from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb

    return ToolResult([pb.Content(text=text)], None, False, [], "aud_1")


def test_the_loop_hands_refusals_to_the_model_and_answers() -> None:
    module = agent_loop()
    client = FakeClient([
        FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "$.timezone: 9 is not of type 'string'"),
        _ok('{"timezone": "Asia/Tokyo"}'),
        _ok('{"source": {}, "target": {}}'),
        FakeRpcError(grpc.StatusCode.NOT_FOUND, "no tool 'get_weather'; tools: convert_time, get_current_time"),
    ])
    lines: list[str] = []
    assert module.run_agent(client, "time", module.scripted_model, lines.append) == 0
    assert [tool for tool, _ in client.calls] == ["get_current_time", "get_current_time", "convert_time",
                                                  "get_weather"]
    assert client.calls[1][1] == {"timezone": "Asia/Tokyo"}, "the model corrected its argument"
    assert "<- INVALID_ARGUMENT: $.timezone: 9 is not of type 'string'" in lines
    assert any(line.startswith("<- NOT_FOUND: no tool 'get_weather'") for line in lines)
    assert lines[-2].startswith("answer: 2 of 4 calls succeeded") and lines[-1] == "closed s1"
    assert client.closed == ["s1"]


def test_the_loop_waits_out_a_rate_limit_and_calls_again(monkeypatch: pytest.MonkeyPatch) -> None:
    module = agent_loop()
    slept: list[float] = []
    monkeypatch.setattr(module.time, "sleep", slept.append)
    limited = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate", (("retry-after-ms", "250"),))
    client = FakeClient([limited, _ok("now")])
    observation = module.call_tool(client, "s1", module.ToolCall("get_current_time", {"timezone": "UTC"}))
    assert observation.outcome == "OK" and slept == [0.25] and len(client.calls) == 2


@pytest.mark.parametrize(("code", "status"), [
    (grpc.StatusCode.FAILED_PRECONDITION, 1),
    (grpc.StatusCode.UNAVAILABLE, 69),
    (grpc.StatusCode.UNAUTHENTICATED, 77),
])
def test_what_the_model_cannot_fix_ends_the_loop_and_closes_the_session(code: grpc.StatusCode, status: int) -> None:
    module = agent_loop()
    client = FakeClient([FakeRpcError(code, "the session ended: the server crashed")])
    lines: list[str] = []
    assert module.run_agent(client, "time", module.scripted_model, lines.append) == status
    assert f"error: {code.name}: the session ended: the server crashed" in lines
    assert client.closed == ["s1"]


def test_a_refused_open_gives_its_status() -> None:
    module = agent_loop()
    client = FakeClient([], open_error=FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "caller x may not open y"))
    lines: list[str] = []
    assert module.run_agent(client, "y", module.scripted_model, lines.append) == 77
    assert lines == ["error: PERMISSION_DENIED: caller x may not open y"]


def test_without_a_service_the_example_says_to_start_one() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run([sys.executable, str(AGENT_LOOP), "--address", f"127.0.0.1:{port}"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 69, done
    assert "error: UNAVAILABLE" in done.stdout and "is the service running?" in done.stdout


def test_cert_without_key_is_a_usage_error() -> None:
    done = subprocess.run([sys.executable, str(AGENT_LOOP), "--cert", "a.pem"], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 2 and "--cert and --key go together" in done.stderr
