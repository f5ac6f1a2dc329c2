"""``mcp-runner bench``: the price of the sandbox, measured side by side in one process.

Baseline: the same MCP server started on the host over stdio with the mcp SDK,
in this process (spawn + initialize + tools/list; then tools/call). Sandboxed:
the full path a caller sees, from this process through gRPC to the service
running in its own process on a loopback port, its session manager and a
fresh hardened container per session. Figures are wall-clock on
whatever machine runs this; compare the two columns, not numbers across
machines. The guard's figures (``bench_guard``) follow: tools/call through the
same service with the profile's sanitizer on and off, sanitizer throughput and
the host-side cost per result. Then the sandbox options (``bench_sandbox``):
the profile under gVisor and with an egress allowlist, against the profile as
shipped, through the same service. Last, the audit log (``bench_audit``): the
store's durable append with and without group commit, and tools/call through a
service with the audit log on against one with it off. Every service the bench
starts keeps its own audit database in a temporary directory, never the
operator's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from runner.bench_audit import AuditCalls, audit_off_config, audit_report, measure_audit_calls, measure_store
from runner.bench_guard import guard_report
from runner.bench_sandbox import UNGUARDED, SandboxFigures, measure_sandbox, sandbox_report, variants_settings
from runner.client import AsyncRunnerClient
from runner.config import Profile, load_settings
from runner.errors import ProfileNotFound, Unavailable

BENCH_INSTANCE = "bench"


@dataclass(frozen=True)
class Figures:
    samples: int
    p50_ms: float
    p95_ms: float

    def cell(self) -> str:
        return f"p50 {self.p50_ms:8.1f} ms  p95 {self.p95_ms:8.1f} ms  (n={self.samples})"


def figures(seconds: list[float]) -> Figures:
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
    return figures(opens), figures(closes)


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
    return open_figures, close_figures, figures(call_times)


@contextlib.asynccontextmanager
async def _service(config: str | None) -> AsyncIterator[str]:
    """The real service in its own process on a free loopback port, as callers meet it; yields its address.

    Its audit database is its own, in a temporary directory: two services cannot share one, and the bench's
    records do not belong in the operator's log.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    command = [sys.executable, "-m", "runner.cli", "serve", "--listen", address]
    if config:
        command += ["--config", config]
    with tempfile.TemporaryFile() as log, tempfile.TemporaryDirectory() as state:
        # Its own instance and state directory: the audit-on and audit-off services run side by side, and an
        # instance is one running service (its lock would refuse the second).
        env = {
            **os.environ,
            "MCP_RUNNER_INSTANCE": f"{BENCH_INSTANCE}-{secrets.token_hex(3)}",
            "MCP_RUNNER_STATE_DIR": state,
            "MCP_RUNNER_AUDIT_DB": f"{state}/audit.sqlite3",
        }
        process = await asyncio.create_subprocess_exec(*command, stdout=log, stderr=log, env=env)
        try:
            async with AsyncRunnerClient(address) as client:
                for _ in range(300):
                    if process.returncode is not None:
                        break
                    with contextlib.suppress(grpc.RpcError):
                        await client.list_sessions(timeout=1)
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise Unavailable(f"the service did not answer on {address} within 60 s")
            if process.returncode is not None:
                log.seek(0)
                raise Unavailable(f"the service exited: {log.read()[-2000:].decode(errors='replace')}")
            yield address
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await process.wait()


def _variants_config(profile: Profile, directory: str) -> str:
    """A settings file adding ``profile``'s twins for the A/B comparisons (``bench_sandbox.variants``)."""
    path = Path(directory) / "bench.yaml"
    path.write_text(yaml.safe_dump(variants_settings(profile)), encoding="utf-8")
    return str(path)


async def _sandboxed(config: str | None, profile: str, tool: str, arguments: dict[str, Any], opens: int, calls: int,
                     unguarded: str | None
                     ) -> tuple[Figures, Figures, Figures, Figures | None, SandboxFigures | None]:
    async with _service(config) as address, AsyncRunnerClient(address) as client:

        async def open_once(name: str = profile) -> str:
            return (await client.open_session(name)).session_id

        async def close(session_id: str) -> None:
            await client.close_session(session_id)

        open_figures, close_figures = await _open_close(opens, open_once, close)
        guarded_id = await open_once()
        unguarded_id = await open_once(unguarded) if unguarded is not None else None
        call_times: list[float] = []
        unguarded_times: list[float] = []
        # Interleaved, so drift in the machine's load hits both sides alike.
        for _ in range(calls):
            call_times += await _timed(1, lambda: client.call_tool(guarded_id, tool, arguments))
            if unguarded_id is not None:
                unguarded_times += await _timed(1, lambda: client.call_tool(unguarded_id, tool, arguments))
        await close(guarded_id)
        if unguarded_id is not None:
            await close(unguarded_id)
        # The twins come with the generated file, as the unguarded one does.
        options = await measure_sandbox(client, profile, tool, arguments, opens, calls) if unguarded else None
    unguarded_figures = figures(unguarded_times) if unguarded_times else None
    return open_figures, close_figures, figures(call_times), unguarded_figures, options


async def _audit_calls(config: str, profile: str, tool: str, arguments: dict[str, Any], calls: int) -> AuditCalls:
    """tools/call through a service with ``config`` as given against one with the audit log turned off."""
    with audit_off_config(config) as quiet:
        async with (
            _service(config) as on_address,
            _service(quiet) as off_address,
            AsyncRunnerClient(on_address) as on,
            AsyncRunnerClient(off_address) as off,
        ):
            return await measure_audit_calls(on, off, profile, tool, arguments, calls)


async def run_bench(config: str | None, *, profile: str = "time", opens: int = 10, calls: int = 200,
                    out: Callable[[str], None] = print) -> None:
    chosen = load_settings(config).profiles.get(profile)
    if chosen is None:
        raise ProfileNotFound(f"no profile named {profile!r}")
    tool, arguments = "get_current_time", {"timezone": "UTC"}
    out(f"mcp-runner bench: profile {profile!r} ({' '.join(chosen.command)}), {opens} opens, {calls} calls of {tool}")
    out("wall-clock on this machine; compare the columns, not machines\n")
    host: tuple[Figures, Figures, Figures] | None = None
    # The dev install puts the PyPI servers next to this interpreter, which need not be on PATH.
    search = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    host_command = shutil.which(chosen.command[0], path=search)
    if host_command:
        host = await _host_baseline([host_command, *chosen.command[1:]], tool, arguments, opens, calls)
    with tempfile.TemporaryDirectory() as scratch:
        # Without a user's file, a generated one adds the twins (sanitizer off, gVisor, egress); a user's file
        # is used as given.
        unguarded = profile + UNGUARDED if config is None else None
        service_config = _variants_config(chosen, scratch) if config is None else config
        *sandbox, unguarded_calls, options = await _sandboxed(
            service_config, profile, tool, arguments, opens, calls, unguarded
        )
        audit_calls = await _audit_calls(service_config, profile, tool, arguments, calls)
        # Last, with every service stopped: the store's figures are the disk's, not shared with containers.
        store = await measure_store(Path(scratch))
    rows = [("session open (start+initialize+tools/list)", 0), ("session close", 1), ("tools/call", 2)]
    out(f"{'':44} {'host (same server, stdio)':46} sandboxed, service in its own process")
    for label, index in rows:
        baseline = host[index].cell() if host else f"{'(' + chosen.command[0] + ' not on the host)':46}"
        out(f"{label:44} {baseline:46} {sandbox[index].cell()}")
    if host:
        for label, index in rows:
            ratio = sandbox[index].p50_ms / host[index].p50_ms if host[index].p50_ms else float("nan")
            out(f"  {label}: sandbox p50 is {ratio:.2f}x the host's")
    out(f"\n{'':44} {'sanitizer off (same service)':46} sanitizer on (the profile as shipped)")
    off = unguarded_calls.cell() if unguarded_calls else f"{'(only without --config)':46}"
    out(f"{'tools/call':44} {off:46} {sandbox[2].cell()}")
    guard_report(out, sandbox[2].p50_ms)
    sandbox_report(out, profile, options)
    audit_report(out, tempfile.gettempdir(), store, audit_calls)


def bench_main(config: str | None, opens: int, calls: int, profile: str) -> None:
    asyncio.run(run_bench(config, profile=profile, opens=opens, calls=calls))
