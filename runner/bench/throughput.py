"""The throughput section: calls/s and machine CPU per call with 1, 10, 50 sessions busy at once.

Each session has one caller looping tools/call for a fixed number of calls, all callers at once; the baseline is
as many server processes on the host, each driven the same way with the mcp SDK over stdio (``direct``). The
service runs in its own process, without warm sandboxes, with room for the largest count (``capacity``).
CPU is the whole machine's busy time over the window (``machine``): the service, containers, Docker, the
host servers and this process's clients alike, so the two sides pay for their clients too. Sides take turns
count by count, in rotating order; opens and one warm-up call per session are outside the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from mcp.shared.exceptions import MCPError

from runner.bench.common import Out, ratio, rotated, table
from runner.bench.direct import direct_sessions, host_command
from runner.bench.machine import CpuWindow, cpu_window, read_cpu
from runner.bench.service import capacity, close_all, open_all, served, settings_file
from runner.client import AsyncRunnerClient
from runner.config import Profile

SERVICE, DIRECT = "service", "direct"

Call = Callable[[], Awaitable[bool]]
"""One tools/call; True when it answered without error."""


@dataclass(frozen=True)
class Load:
    """``sessions`` callers at once: calls answered, calls failed, and what the machine spent meanwhile."""

    sessions: int
    answered: int
    failed: int
    window: CpuWindow

    @property
    def per_second(self) -> float:
        return self.answered / self.window.seconds if self.window.seconds else float("nan")

    @property
    def cpu_per_call_ms(self) -> float:
        return self.window.per_call_ms(self.answered)


async def drive(callers: Sequence[Call], calls: int) -> Load:
    """Every caller loops ``calls`` calls, all at once; the window runs from the first call to the last answer."""

    async def loop(call: Call) -> int:
        return sum([await call() for _ in range(calls)])

    before, start = read_cpu(), time.perf_counter()
    answered = sum(await asyncio.gather(*(loop(call) for call in callers)))
    seconds, after = time.perf_counter() - start, read_cpu()
    return Load(len(callers), answered, len(callers) * calls - answered, cpu_window(before, after, seconds))


async def _through_service(client: AsyncRunnerClient, profile: str, tool: str, arguments: dict[str, Any],
                           sessions: int, calls: int) -> Load:
    opened = await open_all(client, profile, sessions)
    session_ids = [item for item in opened if isinstance(item, str)]
    try:
        failure = next((item for item in opened if isinstance(item, BaseException)), None)
        if failure is not None:
            raise failure

        def caller(session_id: str) -> Call:
            async def call() -> bool:
                try:
                    return not (await client.call_tool(session_id, tool, arguments)).is_error
                except grpc.RpcError:
                    return False

            return call

        callers = [caller(session_id) for session_id in session_ids]
        await asyncio.gather(*(call() for call in callers))  # untimed: the first call warms each session
        return await drive(callers, calls)
    finally:
        await close_all(client, session_ids)


async def _direct(command: list[str], tool: str, arguments: dict[str, Any], sessions: int, calls: int) -> Load:
    async with direct_sessions(command, sessions) as opened:

        def caller(index: int) -> Call:
            async def call() -> bool:
                try:
                    return not (await opened[index].session.call_tool(tool, arguments)).is_error
                except MCPError:
                    return False

            return call

        callers = [caller(index) for index in range(sessions)]
        await asyncio.gather(*(call() for call in callers))
        return await drive(callers, calls)


async def measure_throughput(config: str | None, profile: Profile, tool: str, arguments: dict[str, Any],
                             counts: Sequence[int], calls: int) -> dict[int, dict[str, Load]]:
    command = host_command(profile)
    out: dict[int, dict[str, Load]] = {}
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as files:
        changes = {**capacity(max(counts), Path(scratch)), "pool": {}}
        settings = files.enter_context(settings_file(config, replace=changes))
        async with served(settings) as service, AsyncRunnerClient(service.address) as client:
            for index, count in enumerate(counts):
                sides = [SERVICE, DIRECT] if command else [SERVICE]
                out[count] = {}
                for side in rotated(sides, index):
                    if side == SERVICE:
                        out[count][side] = await _through_service(client, profile.name, tool, arguments, count, calls)
                    elif command:
                        out[count][side] = await _direct(command, tool, arguments, count, calls)
    return out


def _cpu_cell(load: Load) -> str:
    return f"{load.cpu_per_call_ms:.2f} ms (machine {load.window.utilisation:.0%} busy)"


def throughput_report(out: Out, profile: str, tool: str, calls: int, result: dict[int, dict[str, Load]]) -> None:
    out(f"\nthroughput: profile {profile!r}, one caller per session looping {calls} calls of {tool}, all at once; "
        "direct = as many server processes on the host (mcp SDK, stdio); CPU = whole machine (/proc/stat)")
    header = ["sessions", "service calls/s", "direct calls/s", "ratio", "service CPU/call", "direct CPU/call",
              "ratio", "failed (service, direct)"]
    rows = []
    for count, sides in result.items():
        service, direct = sides[SERVICE], sides.get(DIRECT)
        rows.append([
            str(count),
            f"{service.per_second:.0f}",
            f"{direct.per_second:.0f}" if direct else "n/a",
            ratio(service.per_second, direct.per_second) if direct else "n/a",
            _cpu_cell(service),
            _cpu_cell(direct) if direct else "n/a",
            ratio(service.cpu_per_call_ms, direct.cpu_per_call_ms) if direct else "n/a",
            f"{service.failed}, {direct.failed if direct else 'n/a'}",
        ])
    table(out, header, rows)
    out("  reading: calls/s ratio is the service's share of direct throughput (higher is better); "
        "CPU ratio is what a call costs the machine through the service, as a multiple of direct")


async def run(out: Out, config: str | None, profile: Profile, tool: str, arguments: dict[str, Any],
              counts: Sequence[int], calls: int) -> None:
    result = await measure_throughput(config, profile, tool, arguments, counts, calls)
    throughput_report(out, profile.name, tool, calls, result)
