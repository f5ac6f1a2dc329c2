"""``mcp-runner mcp time`` against the real service: the session the bridge opens is recorded as the ``mcp-stdio``
door's (the bridge says so in ``x-mcp-runner-door``), its open and its requests alike, while a plain HTTP client's
claim of any other door is recorded as ``mcp-http``.

The service is the shared one (tests/integration/conftest.py), its door on a free loopback port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from runner.audit import records
from runner.audit.reading import query
from runner.audit.records import AuditQuery, AuditRecord
from tests.conftest import listening
from tests.integration.conftest import Service

pytestmark = pytest.mark.integration

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "it", "version": "1"}}}  # fmt: skip
CALL = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "get_current_time", "arguments": {"timezone": "UTC"}}}  # fmt: skip
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


@pytest.fixture
def door(service: Service) -> str:
    port = int(service.mcp_listen.rpartition(":")[2])
    assert listening(port, service.process), f"the door never listened:\n{service.log()}"
    return f"http://{service.mcp_listen}/mcp"


def _opens(service: Service) -> dict[str, AuditRecord]:
    return {r.session_id: r for r in query(service.audit_db, AuditQuery(kinds=(records.SESSION_OPEN,)))}


def _new_open(service: Service, before: dict[str, AuditRecord]) -> AuditRecord:
    [opened] = [record for session_id, record in _opens(service).items() if session_id not in before]
    return opened


def test_a_bridge_sessions_records_name_the_stdio_door(service: Service, door: str) -> None:
    before = _opens(service)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MCP_RUNNER_")}
    done = subprocess.run(
        [sys.executable, "-m", "runner.cli", "mcp", "--url", door, "time"],
        input="".join(json.dumps(line) + "\n" for line in (INIT, INITIALIZED, CALL)).encode(),
        capture_output=True, env=environment, cwd=str(Path(__file__).resolve().parents[2]), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    called = json.loads(done.stdout.splitlines()[-1])
    assert json.loads(called["result"]["content"][0]["text"])["timezone"] == "UTC"
    opened = _new_open(service, before)
    assert opened.data["door"] == "mcp-stdio"
    requests = query(service.audit_db, AuditQuery(session_id=opened.session_id, kinds=(records.REQUEST,)))
    assert any(r.data["method"] == "tools/call" for r in requests)
    assert all(r.data.get("door") == "mcp-stdio" for r in requests)


@pytest.mark.parametrize("claimed", ["grpc", "mcp-bogus"])
def test_a_claim_of_another_door_is_recorded_as_the_http_doors(service: Service, door: str, claimed: str) -> None:
    before = _opens(service)
    headers = {"accept": "application/json, text/event-stream", "x-mcp-runner-door": claimed}
    with httpx2.Client(timeout=60) as http:
        reply = http.post(f"{door}/time", json=INIT, headers=headers)
        assert reply.status_code == 200, reply.text
        session = reply.headers["mcp-session-id"]
        ending = {**headers, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
        assert http.delete(f"{door}/time", headers=ending).status_code < 300
    assert _new_open(service, before).data["door"] == "mcp-http"
