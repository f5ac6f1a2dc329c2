"""``mcp-runner`` client commands against the fake server of test_api (the blocking CLI runs in a thread)."""

from __future__ import annotations

import asyncio
import json
import sys
import types
from collections.abc import AsyncIterator
from typing import Any

import pytest

from runner import cli
from runner.api import start_server
from runner.client import DEFAULT_ADDRESS
from tests.unit.test_api import FakeManager


@pytest.fixture
def fake() -> FakeManager:
    return FakeManager()


@pytest.fixture
async def address(fake: FakeManager) -> AsyncIterator[str]:
    running = await start_server(fake, "127.0.0.1:0", grace=0)
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        await running.stop(0)


async def run(address: str, *argv: str) -> int:
    return await asyncio.to_thread(cli.main, ["--address", address, *argv])


async def test_tools(address: str, fake: FakeManager, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "tools", "--profile", "time") == 0
    out = capsys.readouterr().out
    assert "fake 1.0" in out
    assert "echo — Echo the arguments back." in out
    assert 'input: {"type":"object","properties":{"x":{"type":"integer"}}}' in out
    assert fake.sessions == {}  # closed again


async def test_call_prints_text_and_structured(
    address: str, fake: FakeManager, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(address, "call", "--profile", "time", "echo", '{"x": 1}', "--timeout-ms", "900") == 0
    captured = capsys.readouterr()
    assert "echo {'x': 1}" in captured.out
    assert "structured content:" in captured.out
    body = captured.out.split("structured content:\n", 1)[1]
    assert json.loads(body) == {"big": 2**62, "echo": {"x": 1}}
    assert "finding: secret x1 redacted at content[0].text" in captured.err
    assert fake.timeouts[-1] == pytest.approx(0.9)
    assert fake.sessions == {}


async def test_call_tool_error_exits_1(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "call", "--profile", "time", "fails") == 1
    captured = capsys.readouterr()
    assert "it broke" in captured.out and "reported an error" in captured.err


async def test_call_stream_shows_progress(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "call", "--profile", "time", "progress", "{}", "--stream") == 0
    captured = capsys.readouterr()
    assert "progress 1/3: step 1" in captured.err and "progress 3/3: step 3" in captured.err
    assert "structured content:" in captured.out


async def test_call_bad_json_is_usage_error(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "call", "--profile", "time", "echo", "{nope") == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert await run(address, "call", "--profile", "time", "echo", "[1]") == 2
    assert "JSON object" in capsys.readouterr().err


async def test_grpc_error_prints_code_and_exits_2(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "tools", "--profile", "missing") == 2
    assert capsys.readouterr().err.strip() == "error: NOT_FOUND: no profile 'missing'"


async def test_call_deadline_exceeded(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "call", "--profile", "time", "slow", "--timeout-ms", "50") == 2
    assert capsys.readouterr().err.startswith("error: DEADLINE_EXCEEDED: ")


async def test_sessions_table(address: str, fake: FakeManager, capsys: pytest.CaptureFixture[str]) -> None:
    await fake.open("time", caller="bob", labels={"team": "a", "env": "dev"})
    assert await run(address, "sessions") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["SESSION", "PROFILE", "CALLER", "STATE", "AGE", "CALLS", "LABELS"]
    assert row.split() == ["s1", "time", "bob", "ready", "0.0s", "0", "env=dev,team=a"]


def test_unreachable_server_is_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--address", "127.0.0.1:1", "sessions"]) == 2
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


def test_address_default_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_RUNNER_ADDRESS", raising=False)
    assert cli.build_parser().parse_args(["sessions"]).address == DEFAULT_ADDRESS
    monkeypatch.setenv("MCP_RUNNER_ADDRESS", "10.0.0.1:9")
    assert cli.build_parser().parse_args(["sessions"]).address == "10.0.0.1:9"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "serve" in capsys.readouterr().err


def test_serve_loads_settings_and_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def load_settings(config_path: str | None = None, *, listen: str | None = None) -> str:
        seen["load"] = (config_path, listen)
        return "settings"

    async def run_service(settings: str) -> None:
        seen["run"] = settings

    monkeypatch.setitem(
        sys.modules, "runner.config", types.SimpleNamespace(load_settings=load_settings)
    )
    monkeypatch.setitem(sys.modules, "runner.service", types.SimpleNamespace(run_service=run_service))
    assert cli.main(["serve", "--config", "r.yaml", "--listen", "0.0.0.0:1"]) == 0
    assert seen == {"load": ("r.yaml", "0.0.0.0:1"), "run": "settings"}


def test_images(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import runner.images

    def ensure_images(*, force: bool = False) -> dict[str, str]:
        return {"rootfs": "mcp-runner/rootfs:1" + ("f" if force else "")}

    monkeypatch.setattr(runner.images, "ensure_images", ensure_images)
    monkeypatch.setattr(runner.images, "list_images", lambda: [("rootfs", "mcp-runner/rootfs:1", False)])
    assert cli.main(["images", "build", "--force"]) == 0
    assert cli.main(["images", "list"]) == 0
    out = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert out == ["rootfs mcp-runner/rootfs:1f", "rootfs mcp-runner/rootfs:1 missing (run: mcp-runner images build)"]


def test_images_build_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import runner.images

    def broken(*, force: bool = False) -> dict[str, str]:
        raise runner.images.ImageBuildError("docker build failed: disk full")

    monkeypatch.setattr(runner.images, "ensure_images", broken)
    assert cli.main(["images", "build"]) == 2
    assert "disk full" in capsys.readouterr().err
