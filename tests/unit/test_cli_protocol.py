"""``mcp-runner templates``, ``complete``, and ``call`` meeting a server's request, against the fake of
test_servicer_protocol (the blocking CLI runs in a thread)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from runner import cli
from tests.unit.test_servicer_protocol import ALICE, FakeManager, _serving


@pytest.fixture
async def address() -> AsyncIterator[tuple[str, FakeManager]]:
    fake = FakeManager()
    async with _serving(fake) as address:
        yield address, fake


async def run(address: str, *argv: str) -> int:
    return await asyncio.to_thread(cli.main, ["--address", address, "--token", ALICE, *argv])


async def test_templates(address: tuple[str, FakeManager], capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address[0], "templates", "--profile", "everything") == 0
    assert capsys.readouterr().out.splitlines() == ["# 1 resource templates", "test://static/resource/{id}  static"]


async def test_complete(address: tuple[str, FakeManager], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("complete", "--profile", "everything", "--prompt", "langs", "language", "py", "--context", "a=b")
    assert await run(address[0], *argv) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["python", "pytorch"] and "(2 of 2 values)" in captured.err
    params = address[1].asked[0][1]
    assert (params.ref.name, params.argument.value, params.context.arguments) == ("langs", "py", {"a": "b"})
    assert await run(address[0], "complete", "--profile", "e", "--prompt", "p", "a", "--context", "nope") == 2
    assert "use NAME=VALUE" in capsys.readouterr().err


async def test_call_prints_the_input_request_and_exits_1(
    address: tuple[str, FakeManager], capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(address[0], "call", "--profile", "everything", "ask") == 1
    captured = capsys.readouterr()
    shown = json.loads(captured.out)
    assert shown["method"] == "elicitation/create" and shown["params"]["message"] == "Your name?"
    assert "`mcp-runner call` cannot answer it" in captured.err and "call_tool_answering" in captured.err
    async with asyncio.timeout(10):
        while "ask" not in address[1].cancelled:  # the session's end cancelled the waiting call
            await asyncio.sleep(0.02)
