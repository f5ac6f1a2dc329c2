"""The open section: from asking for a session to the first call's answer, warm against cold against direct.

Warm: a service with one warm sandbox of the profile (``pool: {<profile>: 1}``), so an open claims a sandbox
that has already booted. Cold: the same service without a pool (``pool: {}``). Direct: the profile's server
spawned on the host, initialized and listed, then called, with the mcp SDK. Both services run in this process,
because only there can the bench wait for the pool to refill (``WarmPool.filled``): before every timed open,
of any column, the warm pool is full again, so no refill runs in the background of a measurement. Columns take
turns round by round in rotating order; sessions are closed untimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from runner.bench.common import Figures, Out, figures, ratio, rotated, table
from runner.bench.direct import DirectSession, host_command
from runner.bench.service import in_process, settings_file
from runner.client import AsyncRunnerClient
from runner.config import Profile
from runner.errors import Unavailable

WARM, COLD, DIRECT = "warm (pool: 1)", "cold (pool: {})", "direct (host, stdio)"
REFILL_TIMEOUT_S = 120.0
"""A pool that has not refilled by then keeps failing to boot (it retries with a growing backoff)."""


@dataclass(frozen=True)
class OpenFigures:
    """Open -> first call per column, in the order printed; the warm pool's (ready, target) after the run."""

    columns: dict[str, Figures]
    pool: tuple[int, int] | None


Step = Callable[[], Awaitable[Callable[[], Awaitable[Any]]]]
"""Opens and makes the first call (timed); returns how to close what it opened (untimed)."""


def _through(client: AsyncRunnerClient, profile: str, tool: str, arguments: dict[str, Any]) -> Step:
    async def step() -> Callable[[], Awaitable[Any]]:
        session_id = (await client.open_session(profile)).session_id
        await client.call_tool(session_id, tool, arguments)
        return lambda: client.close_session(session_id)

    return step


def _direct(command: list[str], tool: str, arguments: dict[str, Any]) -> Step:
    async def step() -> Callable[[], Awaitable[Any]]:
        direct = await DirectSession.open(command)
        await direct.session.call_tool(tool, arguments)
        return direct.close

    return step


async def measure(steps: dict[str, Step], settle: Callable[[], Awaitable[None]], rounds: int) -> dict[str, Figures]:
    """Each step ``rounds`` times, columns rotating each round, ``settle`` awaited before every timed step."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(rounds):
        for name in rotated(list(steps), round_):
            await settle()
            start = time.perf_counter()
            close = await steps[name]()
            times[name].append(time.perf_counter() - start)
            await close()
    return {name: figures(series) for name, series in times.items()}


async def measure_opens(config: str | None, profile: Profile, tool: str, arguments: dict[str, Any], rounds: int
                        ) -> OpenFigures:
    command = host_command(profile)
    with contextlib.ExitStack() as files:
        warm_file = files.enter_context(settings_file(config, replace={"pool": {profile.name: 1}}))
        cold_file = files.enter_context(settings_file(config, replace={"pool": {}}))
        async with (
            in_process(warm_file) as warm,
            in_process(cold_file) as cold,
            AsyncRunnerClient(warm.address) as warm_client,
            AsyncRunnerClient(cold.address) as cold_client,
        ):
            pool = warm.manager.pool
            steps = {
                WARM: _through(warm_client, profile.name, tool, arguments),
                COLD: _through(cold_client, profile.name, tool, arguments),
            }
            if command:
                steps[DIRECT] = _direct(command, tool, arguments)

            async def settle() -> None:
                try:
                    await asyncio.wait_for(pool.filled(profile.name), REFILL_TIMEOUT_S)
                except TimeoutError:
                    raise Unavailable(f"the warm pool of {profile.name!r} did not refill within "
                                      f"{REFILL_TIMEOUT_S:.0f} s; the service log says why") from None

            columns = await measure(steps, settle, rounds)
            return OpenFigures(columns, pool.status().get(profile.name))


def open_report(out: Out, profile: str, result: OpenFigures) -> None:
    columns = result.columns
    names = [name for name in (DIRECT, WARM, COLD) if name in columns]
    out(f"\nopen -> first call: profile {profile!r}, services in this process (open, then one tools/call; "
        "columns alternated each round, the warm pool refilled before every open)")
    base = columns.get(DIRECT)
    rows = [["open + first call", *(columns[name].cell() for name in names)]]
    if base is not None:
        rows.append(["  ratio to direct, p50", *(ratio(columns[name].p50_ms, base.p50_ms) for name in names)])
        rows.append(["  ratio to direct, p95", *(ratio(columns[name].p95_ms, base.p95_ms) for name in names)])
    else:
        out("  (the server is not installed on the host: no direct column)")
    table(out, ["", *names], rows)
    warm, cold = columns[WARM], columns[COLD]
    out(f"  reading: a warm open to its first answer takes {ratio(warm.p50_ms, cold.p50_ms)} of a cold one at p50 "
        f"({warm.p50_ms:.1f} ms against {cold.p50_ms:.1f} ms)")
    if result.pool is not None:
        ready, target = result.pool
        out(f"  warm pool of {profile!r} at the end: {ready} of {target} ready")


async def run(out: Out, config: str | None, profile: Profile, tool: str, arguments: dict[str, Any], rounds: int
              ) -> None:
    open_report(out, profile.name, await measure_opens(config, profile, tool, arguments, rounds))
