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
    with pytest.raises(ValueError, match="the address is empty"):
        service_address("")  # an unset variable in a script: never the environment's or the default service
    monkeypatch.setenv("MCP_RUNNER_ADDRESS", "")
    assert service_address() == DEFAULT_ADDRESS  # an empty variable is an unset one


def test_a_bad_environment_address_is_a_usage_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MCP_RUNNER_ADDRESS", "127.0.0.1:65536")
    assert cli.main(["sessions"]) == 2
    assert "MCP_RUNNER_ADDRESS '127.0.0.1:65536': the port '65536' is not a port" in capsys.readouterr().err


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
