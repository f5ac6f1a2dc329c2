"""Throughput figures come from what was counted: calls answered and failed, the machine's CPU over the window."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from runner.bench.machine import CpuWindow
from runner.bench.throughput import DIRECT, SERVICE, Load, drive, throughput_report


def test_drive_runs_every_caller_for_its_calls_and_counts_failures() -> None:
    made: list[int] = []

    def caller(index: int) -> Callable[[], Awaitable[bool]]:
        async def call() -> bool:
            made.append(index)
            await asyncio.sleep(0)
            return not (index == 2 and len([m for m in made if m == 2]) <= 3)  # caller 2 fails its first 3 calls

        return call

    load = asyncio.run(drive([caller(index) for index in range(4)], 10))
    assert sorted(made) == sorted(list(range(4)) * 10)
    assert made[:4] == [0, 1, 2, 3]  # all at once, not one caller after another
    assert (load.sessions, load.answered, load.failed) == (4, 37, 3)
    assert load.window.seconds > 0 and load.window.busy_s >= 0


def test_calls_per_second_and_cpu_per_call() -> None:
    load = Load(sessions=10, answered=2000, failed=0, window=CpuWindow(busy_s=12.0, total_s=16.0, seconds=8.0))
    assert load.per_second == 250 and load.cpu_per_call_ms == 6.0


def test_the_throughput_table_puts_both_sides_and_their_ratios_side_by_side() -> None:
    service = Load(10, 2860, 0, CpuWindow(busy_s=17.16, total_s=20.0, seconds=10.0))
    direct = Load(10, 2000, 0, CpuWindow(busy_s=3.8, total_s=3.9, seconds=1.949))
    lines: list[str] = []
    throughput_report(lines.append, "time", "get_current_time", 200, {10: {SERVICE: service, DIRECT: direct}})
    header = next(line for line in lines if line.startswith("sessions"))
    assert header.index("service calls/s") < header.index("direct calls/s") < header.index("ratio")
    [figures_row] = [line for line in lines if line.startswith("10 ")]
    cells = figures_row.split()
    assert cells[:4] == ["10", "286", "1026", "0.28x"]
    assert "6.00 ms (machine 86% busy)" in figures_row and "1.90 ms (machine 97% busy)" in figures_row
    assert "3.16x" in figures_row
