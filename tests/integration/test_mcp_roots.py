"""The built-in ``filesystem`` profile through the HTTP door, with an SDK client that declares roots and would answer
with a path of its own machine: the runner answers the server's ``roots/list`` with the profile's ``roots`` (the
sandbox's /tmp) and never asks the client, so the server keeps serving a directory it has.

The service is this module's own (built-in profiles, no warm pool), its door on a free loopback port.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.audit import records
from runner.audit.reading import query
from runner.audit.records import AuditQuery, AuditRecord
from tests.integration.conftest import Service, start_service, stop_service

pytestmark = pytest.mark.integration

WAIT_S = 60.0


@pytest.fixture(scope="module")
def service(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("mcp-roots")
    config = tmp / "settings.yaml"
    config.write_text("pool: {}\n", encoding="utf-8")  # the built-in profiles, each session booted for the test
    running = start_service(tmp, f"it-roots-{secrets.token_hex(4)}", config=config)
    try:
        host, _, port = running.mcp_listen.rpartition(":")
        deadline = time.monotonic() + 30
        while not _listening(host, int(port)):
            assert time.monotonic() < deadline, f"the door never listened on {running.mcp_listen}:\n{running.log()}"
            time.sleep(0.2)
        yield running
    finally:
        stop_service(running)


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def _filesystem_sessions(service: Service) -> set[str]:
    with service.client() as client:
        return {
            s.session_id for s in client.list_sessions()
            if s.profile == "filesystem" and s.state in (pb.SESSION_STATE_STARTING, pb.SESSION_STATE_READY)
        }  # fmt: skip


def _roots_records(service: Service, session_id: str) -> list[AuditRecord]:
    """The session's ``server_request`` records, once there is one (the server asks right after it is initialized)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = query(service.audit_db, AuditQuery(session_id=session_id, kinds=(records.SERVER_REQUEST,)))
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _text(result: types.CallToolResult) -> str:
    assert not result.is_error, result
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_the_filesystem_profile_lists_its_files_whatever_roots_the_client_has(
    service: Service, tmp_path: Path, mode: str
) -> None:
    asked: list[Any] = []

    async def host_roots(context: ClientRequestContext) -> types.ListRootsResult:
        asked.append(context)
        return types.ListRootsResult.model_validate({"roots": [{"uri": tmp_path.as_uri(), "name": "my checkout"}]})

    before = _filesystem_sessions(service)
    url = f"http://{service.mcp_listen}/mcp/filesystem"
    async with Client(url, list_roots_callback=host_roots, mode=mode) as mcp:
        assert mcp.protocol_version == ("2025-11-25" if mode == "legacy" else mode)
        if mode != "legacy":  # stateless: the caller's lease opens at its first request
            await mcp.list_tools()
        [session_id] = _filesystem_sessions(service) - before
        [record] = _roots_records(service, session_id)
        assert record.data["method"] == "roots/list" and record.data["outcome"] == "answered_by_profile"
        assert record.data["answer"] == {"roots": [{"uri": "file:///tmp"}]} and record.data["door"] == "mcp-http"
        allowed = _text(await mcp.call_tool("list_allowed_directories", {}))
        assert "/tmp" in allowed and str(tmp_path) not in allowed
        _text(await mcp.call_tool("write_file", {"path": "/tmp/notes.txt", "content": "in the sandbox\n"}))
        listing = _text(await mcp.call_tool("list_directory", {"path": "/tmp"}))
        assert "[FILE] notes.txt" in listing
        assert _text(await mcp.call_tool("read_text_file", {"path": "/tmp/notes.txt"})) == "in the sandbox\n"
    assert asked == []  # the client was never asked for its roots
