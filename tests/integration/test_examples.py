"""examples/ against the real service: the agent loop as a subprocess, the security team's settings and policy
served as written (with certificates and a token made here), and the allowlist profile refusing a host it does
not name.

The allowlist test never sends traffic out: its proxy's upstream network is an internal Docker network this
module creates (no route anywhere), and the only destination it asks for is one the rule does not name, which the
proxy refuses before resolving anything.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest
import yaml

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api.auth import hash_token, new_token
from runner.certs import DevCerts, make_dev_certs
from runner.client import RunnerClient, tls_credentials
from tests.integration.conftest import Service, start_service, stop_service

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
AGENT_LOOP = EXAMPLES / "agent_loop.py"
TEST_LABEL = "mcp-runner.test"


def run_agent_loop(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(AGENT_LOOP), *args], capture_output=True, text=True, timeout=300,
                          cwd=EXAMPLES.parent)


def test_the_agent_loop_drives_a_real_session(service: Service) -> None:
    done = run_agent_loop("--address", service.address)
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert lines[0].startswith("opened ") and "get_current_time" in lines[0] and "convert_time" in lines[0]
    assert lines[1] == '-> get_current_time {"timezone": 9}'
    assert lines[3] == '-> get_current_time {"timezone": "Asia/Tokyo"}'
    assert lines[2].startswith("<- INVALID_ARGUMENT: ") and "$.timezone" in lines[2], lines[2]
    assert lines[4].startswith("<- OK: ") and "Asia/Tokyo" in lines[4], lines[4]
    assert lines[5].startswith("-> convert_time ") and lines[6].startswith("<- OK: ") and "Europe/Paris" in lines[6]
    assert lines[7] == '-> get_weather {"city": "Tokyo"}'
    assert lines[8].startswith("<- NOT_FOUND: ") and "get_weather" in lines[8], lines[8]
    assert lines[9].startswith("answer: 2 of 4 calls succeeded")
    session_id = lines[0].split()[1]
    assert lines[10] == f"closed {session_id}"
    with service.client() as client:
        assert client.get_session(session_id).state == pb.SESSION_STATE_CLOSED
        calls = list(client.query_audit(session_id=session_id, kinds=["request"]))
        assert len(calls) >= 2, "the two successful calls reached the server and are on record"


# ---- the security team's service ---------------------------------------------------------------------------------


@dataclass
class SecurityTeam:
    service: Service
    certs: DevCerts
    token: str

    def client(self, name: str, token: str | None = None) -> RunnerClient:
        cert, key = self.certs.clients[name]
        return RunnerClient(self.service.address, credentials=tls_credentials(self.certs.ca_cert, cert, key),
                            token=token)


@pytest.fixture(scope="module")
def security_team(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurityTeam]:
    """examples/security-team as shipped, with what its header says to make: certificates and agent-prod's token."""
    tmp = tmp_path_factory.mktemp("security-team")
    shutil.copy(EXAMPLES / "security-team" / "settings.yaml", tmp / "settings.yaml")
    policy = yaml.safe_load((EXAMPLES / "security-team" / "policy.yaml").read_text())
    token = new_token()
    assert policy["callers"]["agent-prod"]["tokens"] == []
    policy["callers"]["agent-prod"]["tokens"] = [hash_token(token)]
    (tmp / "policy.yaml").write_text(yaml.safe_dump(policy))
    certs = make_dev_certs(tmp / "certs", clients=["agent-prod", "alice", "sec-audit", "mallory"])
    service = start_service(tmp, f"ex-{secrets.token_hex(4)}", config=tmp / "settings.yaml", ca=certs.ca_cert,
                            probe_cert=certs.clients["alice"])
    yield SecurityTeam(service, certs, token)
    stop_service(service)


def _code(error: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    code: grpc.StatusCode = error.value.code()
    return code


def test_destructive_tools_are_denied_and_others_run(security_team: SecurityTeam) -> None:
    with security_team.client("agent-prod", security_team.token) as client, client.session("memory") as opened:
        assert client.call_tool(opened.session_id, "read_graph", {}).is_error is False
        with pytest.raises(grpc.RpcError) as denied:
            client.call_tool(opened.session_id, "delete_entities", {"entityNames": ["x"]})
        assert _code(denied) is grpc.StatusCode.PERMISSION_DENIED
        assert "delete_entities" in denied.value.details() and "deny" in denied.value.details()


def test_high_impact_tools_wait_for_the_approver(security_team: SecurityTeam) -> None:
    with security_team.client("agent-prod", security_team.token) as client, client.session("filesystem") as opened:
        pending = client.call_tool(opened.session_id, "write_file", {"path": "/tmp/note.txt", "content": "hi"})
        assert pending.pending and pending.approval is not None
        with security_team.client("alice") as alice:
            waiting = {a.approval_id for a in alice.list_approvals()}
        assert pending.approval.approval_id in waiting
        with pytest.raises(grpc.RpcError) as not_an_approver:
            client.list_approvals()
        assert _code(not_an_approver) is grpc.StatusCode.PERMISSION_DENIED


def test_who_is_let_in(security_team: SecurityTeam) -> None:
    with security_team.client("mallory") as mallory, pytest.raises(grpc.RpcError) as stranger:
        mallory.open_session("time")  # a certificate of the right CA, but the policy gives it nothing
    assert _code(stranger) is grpc.StatusCode.PERMISSION_DENIED
    with security_team.client("alice", security_team.token) as borrowed, pytest.raises(grpc.RpcError) as stolen:
        borrowed.list_sessions()  # agent-prod's token on alice's certificate
    assert _code(stolen) is grpc.StatusCode.UNAUTHENTICATED
    plaintext = RunnerClient(security_team.service.address, token=security_team.token)
    with plaintext, pytest.raises(grpc.RpcError) as no_tls:
        plaintext.list_sessions(timeout=10)
    assert _code(no_tls) is grpc.StatusCode.UNAVAILABLE


def test_the_agent_loop_as_the_production_agent(security_team: SecurityTeam, tmp_path: Path) -> None:
    (tmp_path / "agent.token").write_text(security_team.token)
    cert, key = security_team.certs.clients["agent-prod"]
    done = run_agent_loop("--address", security_team.service.address, "--token-file", str(tmp_path / "agent.token"),
                          "--ca", str(security_team.certs.ca_cert), "--cert", str(cert), "--key", str(key))
    assert done.returncode == 0, done
    assert done.stdout.splitlines()[-2].startswith("answer: 2 of 4 calls succeeded"), done.stdout
    cert, key = security_team.certs.clients["mallory"]
    refused = run_agent_loop("--address", security_team.service.address, "--ca", str(security_team.certs.ca_cert),
                             "--cert", str(cert), "--key", str(key))
    assert refused.returncode == 77 and "error: PERMISSION_DENIED" in refused.stdout, refused


# ---- the allowlist profile -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def allowlisted(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """examples/egress-allowlist as shipped, its proxy's upstream an internal network of this module's."""
    api = docker.from_env().api
    upstream = f"mcpr-test-{secrets.token_hex(4)}-nowhere"
    api.create_network(upstream, driver="bridge", internal=True, labels={TEST_LABEL: "examples"})
    try:
        tmp = tmp_path_factory.mktemp("egress-allowlist")
        settings: dict[str, Any] = yaml.safe_load((EXAMPLES / "egress-allowlist" / "settings.yaml").read_text())
        network = settings["profiles"]["python-docs"]["network"]
        assert "upstream" not in network
        network["upstream"] = upstream
        (tmp / "settings.yaml").write_text(yaml.safe_dump(settings))
        service = start_service(tmp, f"ex-{secrets.token_hex(4)}", config=tmp / "settings.yaml")
        try:
            yield service
        finally:
            stop_service(service)
    finally:
        api.remove_network(upstream)


def test_a_host_off_the_list_is_refused_by_the_proxy(allowlisted: Service) -> None:
    with allowlisted.client() as client, client.session("python-docs") as opened:
        session = client.get_session(opened.session_id)
        assert "docs.python.org:443" in session.network, session.network
        refused = client.call_tool(opened.session_id, "fetch", {"url": "http://not-on-the-list.invalid/page"})
        assert refused.is_error, refused.text
        deadline = time.monotonic() + 10
        decisions: list[Any] = []
        while time.monotonic() < deadline and not decisions:
            decisions = [d for d in client.get_session(opened.session_id).egress if d.host == "not-on-the-list.invalid"]
            time.sleep(0.1)
        assert decisions, "the proxy recorded no decision for the refused host"
        assert all(not d.allowed and d.code == "not_allowed" and not d.address for d in decisions), decisions
        fix = "not-on-the-list.invalid:80 is not on the allowlist; add it to the profile's network.egress"
        assert all(d.reason == fix for d in decisions), decisions
        recorded = list(client.query_audit(session_id=opened.session_id, kinds=["egress"]))
        assert any("not-on-the-list.invalid" in r.data_json for r in recorded)
