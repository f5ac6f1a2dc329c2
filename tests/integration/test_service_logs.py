"""The real service logging JSON (MCP_RUNNER_LOG_FORMAT=json): every line of its log is one JSON object, and a
session's open, a refused call and its close each have their line with the fields an operator filters on."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.integration.conftest import start_service, stop_service

pytestmark = pytest.mark.integration


def test_json_lines_for_open_refusal_and_close(
    images: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_RUNNER_LOG_FORMAT", "json")  # the subprocess inherits it
    service = start_service(tmp_path, f"it-logs-{secrets.token_hex(4)}")
    try:
        with service.client() as client, client.session("time") as opened:
            session_id = opened.session_id
            client.call_tool(session_id, "get_current_time", {"timezone": "UTC"})
            with pytest.raises(grpc.RpcError) as invalid:
                client.call_tool(session_id, "get_current_time", {"timezone": 5})
            assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        stop_service(service)  # its last lines (the audit log closed) are written by now
    lines: list[dict[str, Any]] = [json.loads(line) for line in service.log().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any("mcp-runner listening on" in line["message"] for line in lines)
    ours = [line for line in lines if line.get("session_id") == session_id]
    (opened_line,) = [line for line in ours if line.get("event") == "session.open"]
    assert opened_line["caller"] == "anonymous" and opened_line["profile"] == "time"
    assert opened_line["start"] == "cold" and opened_line["ms"] > 0 and opened_line["level"] == "info"
    (refused,) = [line for line in ours if line.get("event") == "request"]
    assert refused["method"] == "tools/call" and refused["status"] == "INVALID_ARGUMENT"
    assert "timezone" in refused["error"] and refused["audit_id"].startswith("aud_")
    (closed,) = [line for line in ours if line.get("event") == "session.close"]
    assert closed["state"] == "closed" and closed["calls"] == 1 and closed["seconds"] > 0
