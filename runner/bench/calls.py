"""The calls section: session open, close and tools/call through the service against the same server on the host.

Baseline: the profile's server started on the host over stdio with the mcp SDK, in this process (``direct``).
Sandboxed: the full path a caller sees, from this process through gRPC to the service in its own process on a
loopback port, its session manager and a fresh hardened container per session, with no warm pool (every open
is cold). On the same service, tools/call on the profile's ``-unguarded`` twin (its sanitizer off) is alternated
with the profile's, call by call, so the guard's share of a call shows.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from runner.bench.common import Figures, Out, figures, ratio, row, timed
from runner.bench.direct import DirectSession, host_command
from runner.bench.service import served, settings_file
from runner.bench.twins import UNGUARDED, twin_settings
from runner.client import AsyncRunnerClient
from runner.config import Profile


@dataclass(frozen=True)
class Lifecycle:
    """Open, close and tools/call on one side."""

    open: Figures
    close: Figures
    call: Figures


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


async def _host(command: list[str], tool: str, arguments: dict[str, Any], opens: int, calls: int) -> Lifecycle:
    async def close(session: DirectSession) -> None:
        await session.close()

    open_figures, close_figures = await _open_close(opens, lambda: DirectSession.open(command), close)
    direct = await DirectSession.open(command)
    try:
        call_times = [await timed(lambda: direct.session.call_tool(tool, arguments)) for _ in range(calls)]
    finally:
        await direct.close()
    return Lifecycle(open_figures, close_figures, figures(call_times))


async def _sandboxed(config: str, profile: str, tool: str, arguments: dict[str, Any], opens: int, calls: int,
                     unguarded: str | None) -> tuple[Lifecycle, Figures | None]:
    async with served(config) as service, AsyncRunnerClient(service.address) as client:

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
            call_times.append(await timed(lambda: client.call_tool(guarded_id, tool, arguments)))
            if unguarded_id is not None:
                unguarded_times.append(await timed(lambda: client.call_tool(unguarded_id, tool, arguments)))
        await close(guarded_id)
        if unguarded_id is not None:
            await close(unguarded_id)
    unguarded_figures = figures(unguarded_times) if unguarded_times else None
    return Lifecycle(open_figures, close_figures, figures(call_times)), unguarded_figures


async def run(out: Out, config: str | None, profile: Profile, tool: str, arguments: dict[str, Any], opens: int,
              calls: int) -> float:
    """Measure and report; returns the sandboxed tools/call p50 in ms (the guard section reads its share of it)."""
    out(f"\ncalls: profile {profile.name!r} ({' '.join(profile.command)}), {opens} opens, {calls} calls of {tool}")
    command = host_command(profile)
    host = await _host(command, tool, arguments, opens, calls) if command else None
    # Without a user's file a generated one adds the twins; a user's file is used as given, without warm sandboxes.
    unguarded = profile.name + UNGUARDED if config is None else None
    changes = twin_settings(profile) if config is None else {"pool": {}}
    with settings_file(config, replace=changes) as settings:
        sandbox, unguarded_calls = await _sandboxed(settings, profile.name, tool, arguments, opens, calls, unguarded)
    rows = [("session open (start+initialize+tools/list)", "open"), ("session close", "close"), ("tools/call", "call")]
    row(out, "", "host (same server, stdio)", "sandboxed, service in its own process")
    for label, name in rows:
        baseline = getattr(host, name).cell() if host else "(its server is not installed on the host)"
        row(out, label, baseline, getattr(sandbox, name).cell())
    if host:
        for label, name in rows:
            sandboxed, direct = getattr(sandbox, name).p50_ms, getattr(host, name).p50_ms
            out(f"  {label}: sandbox p50 is {ratio(sandboxed, direct)} the host's")
    out("")
    row(out, "", "sanitizer off (same service)", "sanitizer on (the profile as shipped)")
    off = unguarded_calls.cell() if unguarded_calls else "(only without --config)"
    row(out, "tools/call", off, sandbox.call.cell())
    return sandbox.call.p50_ms
