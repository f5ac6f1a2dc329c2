"""The Python client finds the service as the CLI does: an explicit address, else MCP_RUNNER_ADDRESS, else the
default; and ``mcp-runner --version`` names the installed version."""

from __future__ import annotations

import asyncio
import importlib.metadata

import pytest

from runner import cli
from runner.client import DEFAULT_ADDRESS, AsyncRunnerClient, RunnerClient, service_address
from tests.unit.test_api import FakeManager, serve


def test_the_address_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_RUNNER_ADDRESS", raising=False)
    assert service_address() == DEFAULT_ADDRESS
    monkeypatch.setenv("MCP_RUNNER_ADDRESS", "127.0.0.1:6001")
    assert service_address() == "127.0.0.1:6001"
    assert service_address("127.0.0.1:6002") == "127.0.0.1:6002"
    assert cli.build_parser().parse_args(["sessions"]).address == "127.0.0.1:6001"


async def test_both_clients_reach_the_service_named_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve(FakeManager()) as port:
        monkeypatch.setenv("MCP_RUNNER_ADDRESS", f"127.0.0.1:{port}")
        async with AsyncRunnerClient() as client:
            assert await client.list_sessions() == []

        def listed_by_the_blocking_client() -> list[object]:  # in a thread: the fake server runs on this loop
            with RunnerClient() as blocking:
                return list(blocking.list_sessions())

        assert await asyncio.to_thread(listed_by_the_blocking_client) == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"mcp-runner {importlib.metadata.version('mcp-sandbox-runner')}"
