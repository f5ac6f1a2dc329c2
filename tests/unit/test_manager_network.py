"""SessionManager with networked and remote profiles over FakeBackend: specs, credentials, egress records, hints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import MappingProxyType

import pytest

from runner import errors
from runner.api import convert
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.config import Credential, EgressRule, Limits, NetworkPolicy, Profile, SecretSource, Settings
from runner.egress.rules import Rule
from runner.sandbox.base import EgressDecision, SandboxSpec
from runner.sandbox.fake import FakeBackend, FakeIO, Handler
from runner.sessions import egress_record, ending
from runner.sessions.manager import SessionManager
from runner.sessions.models import SessionInfo, SessionState, Usage
from tests.unit.fake_agent import FakeAgent

TOKEN = "tok-Network-5e6f7a8b"
LIMITS = Limits(call_timeout_s=2.0, idle_timeout_s=60, max_lifetime_s=600)
CREDENTIALED = EgressRule(
    "api.example.com",
    80,
    credentials=(Credential("Authorization", SecretSource(env="RUNNER_TEST_EGRESS_TOKEN"), "Bearer {}"),),
)
NETWORK = NetworkPolicy(
    egress=(CREDENTIALED, EgressRule("*.example.org", 443), EgressRule("2001:db8::1", 8443, private=True)),
    upstream="corp-egress",
)
REMOTE_URL = "http://mcp.example.com:8080/mcp"


def _profile(name: str, **kw: object) -> Profile:
    values: dict[str, object] = {"name": name, "image": "fake", "command": (name,), "limits": LIMITS}
    values.update(kw)
    return Profile(**values)  # type: ignore[arg-type]


PROFILES = {
    "plain": _profile("plain"),
    "networked": _profile("networked", network=NETWORK, runtime="runsc"),
    "remote": _profile(
        "remote",
        image="python-servers",
        command=(),
        remote_url=REMOTE_URL,
        network=NetworkPolicy(egress=(EgressRule("mcp.example.com", 8080),)),
    ),
    "refused_then_dies": _profile("refused_then_dies", network=NETWORK),
    "allowed_then_dies": _profile("allowed_then_dies", network=NETWORK),
}
SETTINGS = Settings(profiles=MappingProxyType(PROFILES), max_sessions=10, reap_interval_s=3600)


def refused(host: str, reason: str = "no rule allows this host:port", time: float = 1_700_000_000.0) -> EgressDecision:
    return EgressDecision(
        time=time, method="CONNECT", host=host, port=443, address="", rule="",
        allowed=False, code="not_allowed", reason=reason,
    )


def allowed(host: str, time: float = 1_700_000_000.0) -> EgressDecision:
    return EgressDecision(
        time=time, method="GET", host=host, port=80, address="93.184.216.34", rule=f"{host}:80",
        allowed=True, code="allowed", reason="",
    )


@dataclass
class Sandboxes:
    """What the fake backend was asked to start, and each sandbox's side of the pipe."""

    specs: list[SandboxSpec] = field(default_factory=list)
    ios: list[FakeIO] = field(default_factory=list)

    def handler_for(self, spec: SandboxSpec) -> Handler:
        self.specs.append(spec)
        profile = spec.labels["mcp-runner.profile"]

        async def run(io: FakeIO) -> int:
            self.ios.append(io)
            if profile == "refused_then_dies":
                io.egress(refused("first.example", time=1.0))
                io.egress(allowed("api.example.com", time=2.0))
                io.egress(refused("config.example.net", reason="no rule allows config.example.net:443", time=3.0))
                io.egress(allowed("api.example.com", time=4.0))
                return await FakeAgent("fatal_at_start")(io)
            if profile == "allowed_then_dies":
                io.egress(allowed("api.example.com"))
                return await FakeAgent("fatal_at_start")(io)
            return await FakeAgent("good")(io)

        return run


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RUNNER_TEST_EGRESS_TOKEN", TOKEN)
    yield


@pytest.fixture
def sandboxes() -> Sandboxes:
    return Sandboxes()


@pytest.fixture
async def manager(sandboxes: Sandboxes) -> AsyncIterator[SessionManager]:
    m = SessionManager(FakeBackend(sandboxes.handler_for), SETTINGS)
    await m.start()
    yield m
    await m.shutdown()


async def test_networked_spec_carries_rules_with_credentials_and_runtime(
    manager: SessionManager, sandboxes: Sandboxes
) -> None:
    opened = await manager.open("networked", caller="a")
    [spec] = sandboxes.specs
    assert spec.runtime == "runsc"
    assert spec.command == ("networked",)
    assert spec.network is not None
    assert spec.network.upstream == "corp-egress"
    assert spec.network.rules == (
        Rule("api.example.com", 80, headers=(("Authorization", f"Bearer {TOKEN}"),)),
        Rule("*.example.org", 443),
        Rule("2001:db8::1", 8443, private=True),
    )
    # The proxy holds the credential; the sandbox never does.
    assert all(TOKEN not in value for value in spec.env.values())
    info = manager.get(opened.info.session_id, caller="a")
    assert info.runtime == "runsc"
    assert info.network == "egress proxy: api.example.com:80, *.example.org:443, [2001:db8::1]:8443 (private)"
    assert info.egress == ()


async def test_missing_credential_secret_refuses_to_open(
    manager: SessionManager, sandboxes: Sandboxes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNNER_TEST_EGRESS_TOKEN")
    with pytest.raises(errors.FailedPrecondition) as caught:
        await manager.open("networked", caller="a")
    assert "Authorization for api.example.com:80" in caught.value.message
    assert "RUNNER_TEST_EGRESS_TOKEN" in caught.value.message
    assert sandboxes.specs == []


async def test_remote_profile_runs_the_client_with_the_url(manager: SessionManager, sandboxes: Sandboxes) -> None:
    opened = await manager.open("remote", caller="a")
    [spec] = sandboxes.specs
    assert spec.command == ("--url", REMOTE_URL)
    assert spec.image == "python-servers"
    assert spec.network is not None and spec.network.rules == (Rule("mcp.example.com", 8080),)
    assert spec.network.upstream == "mcp-runner-egress"
    assert spec.runtime == "runc"
    assert manager.get(opened.info.session_id, caller="a").network == "egress proxy: mcp.example.com:8080"


async def test_plain_profile_has_no_network(manager: SessionManager, sandboxes: Sandboxes) -> None:
    opened = await manager.open("plain", caller="a")
    [spec] = sandboxes.specs
    assert spec.network is None and spec.runtime == "runc"
    assert spec.command == ("plain",)
    info = manager.get(opened.info.session_id, caller="a")
    assert (info.network, info.runtime, info.egress) == ("none", "runc", ())
    # The fake reports decisions only for a networked spec, so none is recorded.
    sandboxes.ios[0].egress(allowed("api.example.com"))
    assert manager.get(opened.info.session_id, caller="a").egress == ()


async def test_decisions_are_recorded_in_order_and_capped(
    manager: SessionManager, sandboxes: Sandboxes, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(egress_record, "MAX_EGRESS_KEPT", 3)
    sid = (await manager.open("networked", caller="a")).info.session_id
    [io] = sandboxes.ios
    reported = [
        allowed("api.example.com", time=1.0),
        refused("evil.example", time=2.0),
        allowed("docs.example.org", time=3.0),
        refused("metadata.example", time=4.0),
        allowed("api.example.com", time=5.0),
    ]
    with caplog.at_level("INFO", logger="runner.sessions.egress_record"):
        for d in reported[:2]:
            io.egress(d)
        assert manager.get(sid, caller="a").egress == tuple(reported[:2])
        for d in reported[2:]:
            io.egress(d)
    assert manager.get(sid, caller="a").egress == tuple(reported[2:])
    assert f"egress session={sid} CONNECT evil.example:443 refused (not_allowed" in caplog.text
    assert f"egress session={sid} GET api.example.com:80 allowed" in caplog.text
    # A closed session keeps its record.
    await manager.close(sid, caller="a")
    assert [d.time for d in manager.get(sid, caller="a").egress] == [3.0, 4.0, 5.0]


async def test_decisions_belong_to_their_own_session(manager: SessionManager, sandboxes: Sandboxes) -> None:
    first = (await manager.open("networked", caller="a")).info.session_id
    second = (await manager.open("networked", caller="a")).info.session_id
    sandboxes.ios[0].egress(allowed("api.example.com"))
    sandboxes.ios[1].egress(refused("evil.example"))
    assert [d.host for d in manager.get(first, caller="a").egress] == ["api.example.com"]
    assert [d.host for d in manager.get(second, caller="a").egress] == ["evil.example"]


async def test_credential_echoed_by_the_server_is_redacted(manager: SessionManager) -> None:
    sid = (await manager.open("networked", caller="a")).info.session_id
    outcome = await manager.call_tool(sid, "say", {"text": f"upstream said: Bearer {TOKEN}."}, caller="a")
    assert outcome.result is not None
    text = outcome.result.content[0].text  # type: ignore[union-attr]
    assert TOKEN not in text and "upstream said" in text
    assert ("secret", "redacted") in {(f.kind, f.action) for f in outcome.findings}


async def test_crash_at_start_names_the_last_refused_egress(manager: SessionManager) -> None:
    with pytest.raises(errors.SandboxCrashed) as caught:
        await manager.open("refused_then_dies", caller="a")
    message = caught.value.message
    assert "cannot load config" in message or "exited with status 3" in message
    assert "egress proxy refused CONNECT config.example.net:443" in message
    assert "no rule allows config.example.net:443" in message
    assert "first.example" not in message
    [info] = manager.list_sessions(caller="a")
    assert info.state is SessionState.FAILED
    assert "egress proxy refused" in (info.failure or "")
    assert [d.time for d in info.egress] == [1.0, 2.0, 3.0, 4.0]


async def test_crash_after_only_allowed_egress_has_no_hint(manager: SessionManager) -> None:
    with pytest.raises(errors.SandboxCrashed) as caught:
        await manager.open("allowed_then_dies", caller="a")
    assert "egress proxy refused" not in caught.value.message


async def test_sandbox_dying_between_calls_names_the_refused_egress(
    manager: SessionManager, sandboxes: Sandboxes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ending, "EXIT_WAIT_S", 0.05)  # the fake's process does not exit by itself
    sid = (await manager.open("networked", caller="a")).info.session_id
    io = sandboxes.ios[0]
    io.egress(refused("pypi.example.org", reason="resolves to a private address"))
    io.egress(allowed("api.example.com"))
    io.stderr += b"ConnectionError: proxy said 403\n"
    await io.write(b'{"type":"fatal","message":"MCP server exited with status 1"}\n')
    async with asyncio.timeout(5):
        while manager.get(sid, caller="a").state is not SessionState.FAILED:
            await asyncio.sleep(0.005)
    hint = "egress proxy refused CONNECT pypi.example.org:443 (resolves to a private address)"
    assert hint in (manager.get(sid, caller="a").failure or "")
    with pytest.raises(errors.SessionClosed) as caught:
        await manager.call_tool(sid, "echo", {"text": "x"}, caller="a")
    assert hint in caught.value.message


# --------------------------------------------------------------------------------- convert


def _info(**overrides: object) -> SessionInfo:
    values: dict[str, object] = {
        "session_id": "s1",
        "profile": "networked",
        "caller": "alice",
        "state": SessionState.READY,
        "created_at": 1_700_000_000.0,
        "age_seconds": 1.0,
        "usage": Usage(wall_seconds=1.0, cpu_seconds=0.0, peak_memory_bytes=0, calls=0),
        "labels": {},
    }
    values.update(overrides)
    return SessionInfo(**values)  # type: ignore[arg-type]


def test_session_to_proto_carries_network_runtime_and_egress() -> None:
    decisions = (
        EgressDecision(
            time=1_700_000_123.75, method="CONNECT", host="api.example.com", port=443, address="93.184.216.34",
            rule="api.example.com:443", allowed=True, code="allowed", reason="",
        ),
        EgressDecision(
            time=1_700_000_124.5, method="GET", host="evil.example", port=80, address="", rule="",
            allowed=False, code="not_allowed", reason="no rule allows evil.example:80",
        ),
    )
    msg = convert.session_to_proto(
        _info(network="egress proxy: api.example.com:443", runtime="runsc", egress=decisions)
    )
    assert msg.network == "egress proxy: api.example.com:443"
    assert msg.runtime == "runsc"
    assert len(msg.egress) == 2
    first, second = msg.egress
    assert isinstance(first, pb.EgressDecision)
    assert (first.time.seconds, first.time.nanos) == (1_700_000_123, 750_000_000)
    assert (first.method, first.host, first.port, first.address, first.rule) == (
        "CONNECT", "api.example.com", 443, "93.184.216.34", "api.example.com:443",
    )
    assert (first.allowed, first.code, first.reason) == (True, "allowed", "")
    assert (second.time.seconds, second.time.nanos) == (1_700_000_124, 500_000_000)
    assert (second.host, second.port, second.allowed, second.code) == ("evil.example", 80, False, "not_allowed")
    assert second.reason == "no rule allows evil.example:80"


def test_session_to_proto_defaults_without_network() -> None:
    msg = convert.session_to_proto(_info())
    assert (msg.network, msg.runtime, len(msg.egress)) == ("none", "runc", 0)


async def test_open_to_proto_round_trip(manager: SessionManager, sandboxes: Sandboxes) -> None:
    sid = (await manager.open("networked", caller="a")).info.session_id
    sandboxes.ios[0].egress(refused("evil.example", time=1_700_000_000.25))
    msg = convert.session_to_proto(manager.get(sid, caller="a"))
    assert msg.runtime == "runsc" and msg.network.startswith("egress proxy: api.example.com:80")
    assert [(d.host, d.allowed, d.time.nanos) for d in msg.egress] == [("evil.example", False, 250_000_000)]



async def test_a_secret_smuggled_into_a_host_name_is_redacted_in_the_record(
    manager: SessionManager, sandboxes: Sandboxes, caplog: pytest.LogCaptureFixture
) -> None:
    sid = (await manager.open("networked", caller="a")).info.session_id
    with caplog.at_level("INFO", logger="runner.sessions.egress_record"):
        sandboxes.ios[-1].egress(refused(f"{TOKEN}.exfil.example", reason=f"{TOKEN}.exfil.example:443 is not allowed"))
    [kept] = manager.get(sid, caller="a").egress
    assert TOKEN not in kept.host and TOKEN not in kept.reason and "[REDACTED" in kept.host
    assert TOKEN not in caplog.text and "exfil.example" in caplog.text
    await manager.close(sid, caller="a")
