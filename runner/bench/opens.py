"""The open section: from asking for a session to its answer, and to the first call's, warm, cold and direct.

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
class Column:
    """One column's figures: the open alone (its answer, audit record durable), and open -> first call's answer."""

    open: Figures
    first_call: Figures


@dataclass(frozen=True)
class OpenFigures:
    """Per column, in the order printed; the warm pool's (ready, target) after the run."""

    columns: dict[str, Column]
    pool: tuple[int, int] | None


Step = Callable[[], Awaitable[tuple[float, Callable[[], Awaitable[Any]]]]]
"""Opens (timed: returns the ``perf_counter`` its open was answered at) and makes the first call (timed);
returns how to close what it opened (untimed)."""


def _through(client: AsyncRunnerClient, profile: str, tool: str, arguments: dict[str, Any]) -> Step:
    async def step() -> tuple[float, Callable[[], Awaitable[Any]]]:
        session_id = (await client.open_session(profile)).session_id
        opened = time.perf_counter()
        await client.call_tool(session_id, tool, arguments)
        return opened, lambda: client.close_session(session_id)

    return step


def _direct(command: list[str], tool: str, arguments: dict[str, Any]) -> Step:
    async def step() -> tuple[float, Callable[[], Awaitable[Any]]]:
        direct = await DirectSession.open(command)
        opened = time.perf_counter()
        await direct.session.call_tool(tool, arguments)
        return opened, direct.close

    return step


async def measure(steps: dict[str, Step], settle: Callable[[], Awaitable[None]], rounds: int) -> dict[str, Column]:
    """Each step ``rounds`` times, columns rotating each round, ``settle`` awaited before every timed step."""
    opens: dict[str, list[float]] = {name: [] for name in steps}
    firsts: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(rounds):
        for name in rotated(list(steps), round_):
            await settle()
            start = time.perf_counter()
            opened, close = await steps[name]()
            firsts[name].append(time.perf_counter() - start)
            opens[name].append(opened - start)
            await close()
    return {name: Column(figures(opens[name]), figures(firsts[name])) for name in steps}


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
    rows: list[list[str]] = []
    for label, of in (("open", _open), ("open + first call", _first_call)):
        rows.append([label, *(of(columns[name]).cell() for name in names)])
        if base is not None:
            rows.append(["  ratio to direct, p50", *(ratio(of(columns[n]).p50_ms, of(base).p50_ms) for n in names)])
            rows.append(["  ratio to direct, p95", *(ratio(of(columns[n]).p95_ms, of(base).p95_ms) for n in names)])
    if base is None:
        out("  (the server is not installed on the host: no direct column)")
    table(out, ["", *names], rows)
    warm, cold = columns[WARM], columns[COLD]
    out(f"  reading: a warm open takes {ratio(warm.open.p50_ms, cold.open.p50_ms)} of a cold one at p50 "
        f"({warm.open.p50_ms:.1f} ms against {cold.open.p50_ms:.1f} ms, its audit record durable), and to its first "
        f"answer {ratio(warm.first_call.p50_ms, cold.first_call.p50_ms)} ({warm.first_call.p50_ms:.1f} ms against "
        f"{cold.first_call.p50_ms:.1f} ms)")
    if result.pool is not None:
        ready, target = result.pool
        out(f"  warm pool of {profile!r} at the end: {ready} of {target} ready")


def _open(column: Column) -> Figures:
    return column.open


def _first_call(column: Column) -> Figures:
    return column.first_call


async def run(out: Out, config: str | None, profile: Profile, tool: str, arguments: dict[str, Any], rounds: int
              ) -> None:
    open_report(out, profile.name, await measure_opens(config, profile, tool, arguments, rounds))
