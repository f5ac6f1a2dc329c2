"""``mcp-runner bench``: the price of the sandbox, measured side by side in one process.

Baseline: the same MCP server started on the host over stdio with the mcp SDK
(spawn + initialize + tools/list; then tools/call). Sandboxed: the full path a
caller sees, through a real gRPC server on a loopback port, the session
manager and a fresh hardened container per session. Figures are wall-clock on
whatever machine runs this; compare the two columns, not numbers across
machines.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from runner.api.server import start_server
from runner.client import AsyncRunnerClient
from runner.config import Settings
from runner.sandbox.docker import DockerBackend
from runner.sessions.manager import SessionManager


@dataclass(frozen=True)
class Figures:
    samples: int
    p50_ms: float
    p95_ms: float

    def cell(self) -> str:
        return f"p50 {self.p50_ms:8.1f} ms  p95 {self.p95_ms:8.1f} ms  (n={self.samples})"


def _figures(seconds: list[float]) -> Figures:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return Figures(len(ms), statistics.median(ms), p95)


async def _timed(times: int, step: Callable[[], Awaitable[Any]]) -> list[float]:
    out = []
    for _ in range(times):
        start = time.perf_counter()
        await step()
        out.append(time.perf_counter() - start)
    return out


async def _open_close(times: int, open_: Callable[[], Awaitable[Any]], close: Callable[[Any], Awaitable[Any]]
                      ) -> tuple[Figures, Figures]:
    opens, closes = [], []
    for _ in range(times):
        start = time.perf_counter()
        handle = await open_()
        opened = time.perf_counter()
        await close(handle)
        opens.append(opened - start)
        closes.append(time.perf_counter() - opened)
    return _figures(opens), _figures(closes)


async def _host_baseline(command: list[str], tool: str, arguments: dict[str, Any], opens: int, calls: int
                         ) -> tuple[Figures, Figures, Figures]:
    from contextlib import AsyncExitStack

    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))

    async def open_once() -> tuple[AsyncExitStack, ClientSession]:
        stack = AsyncExitStack()
        read, write = await stack.enter_async_context(stdio_client(params))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        await session.list_tools()
        return stack, session

    async def close(handle: tuple[AsyncExitStack, ClientSession]) -> None:
        await handle[0].aclose()

    open_figures, close_figures = await _open_close(opens, open_once, close)
    stack, session = await open_once()
    try:
        call_times = await _timed(calls, lambda: session.call_tool(tool, arguments))
    finally:
        await stack.aclose()
    return open_figures, close_figures, _figures(call_times)


async def _sandboxed(settings: Settings, profile: str, tool: str, arguments: dict[str, Any], opens: int, calls: int
                     ) -> tuple[Figures, Figures, Figures]:
    backend = DockerBackend()
    manager = SessionManager(backend, settings)
    await manager.start()
    server = await start_server(manager, "127.0.0.1:0")
    try:
        async with AsyncRunnerClient(f"127.0.0.1:{server.port}") as client:

            async def open_once() -> str:
                return (await client.open_session(profile)).session_id

            async def close(session_id: str) -> None:
                await client.close_session(session_id)

            open_figures, close_figures = await _open_close(opens, open_once, close)
            session_id = await open_once()
            call_times = await _timed(calls, lambda: client.call_tool(session_id, tool, arguments))
            await close(session_id)
        return open_figures, close_figures, _figures(call_times)
    finally:
        await server.stop(1.0)
        await manager.shutdown()
        backend.close()


async def run_bench(settings: Settings, *, profile: str = "time", opens: int = 10, calls: int = 200,
                    out: Callable[[str], None] = print) -> None:
    chosen = settings.profiles[profile]
    tool, arguments = "get_current_time", {"timezone": "UTC"}
    settings = Settings(
        listen="127.0.0.1:0",
        instance="bench",
        profiles=MappingProxyType({profile: chosen}),
        max_message_bytes=settings.max_message_bytes,
    )
    out(f"mcp-runner bench: profile {profile!r} ({' '.join(chosen.command)}), {opens} opens, {calls} calls of {tool}")
    out("wall-clock on this machine; compare the columns, not machines\n")
    host: tuple[Figures, Figures, Figures] | None = None
    # The dev install puts the PyPI servers next to this interpreter, which need not be on PATH.
    search = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    host_command = shutil.which(chosen.command[0], path=search)
    if host_command:
        host = await _host_baseline([host_command, *chosen.command[1:]], tool, arguments, opens, calls)
    sandbox = await _sandboxed(settings, profile, tool, arguments, opens, calls)
    rows = [("session open (start+initialize+tools/list)", 0), ("session close", 1), ("tools/call", 2)]
    out(f"{'':44} {'host (same server, stdio)':46} sandboxed via gRPC")
    for label, index in rows:
        baseline = host[index].cell() if host else f"{'(' + chosen.command[0] + ' not on the host)':46}"
        out(f"{label:44} {baseline:46} {sandbox[index].cell()}")
    if host:
        for label, index in rows:
            ratio = sandbox[index].p50_ms / host[index].p50_ms if host[index].p50_ms else float("nan")
            out(f"  {label}: sandbox p50 is {ratio:.2f}x the host's")


def bench_main(settings: Settings, opens: int, calls: int, profile: str) -> None:
    asyncio.run(run_bench(settings, profile=profile, opens=opens, calls=calls))
