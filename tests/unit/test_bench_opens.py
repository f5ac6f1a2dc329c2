"""The open section: columns take turns, the warm pool settles before every open, closes stay outside the timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from runner.bench.common import figures
from runner.bench.opens import COLD, DIRECT, WARM, Column, OpenFigures, measure, open_report


def test_opens_take_turns_settle_before_each_and_close_untimed() -> None:
    log: list[str] = []

    def step(name: str) -> Callable[[], Awaitable[tuple[float, Callable[[], Awaitable[Any]]]]]:
        async def open_and_call() -> tuple[float, Callable[[], Awaitable[Any]]]:
            log.append(f"open {name}")
            opened = time.perf_counter()
            log.append(f"call {name}")

            async def close() -> None:
                log.append(f"close {name}")

            return opened, close

        return open_and_call

    async def settle() -> None:
        log.append("settle")

    columns = asyncio.run(measure({WARM: step("warm"), COLD: step("cold")}, settle, 2))
    assert [(column.open.samples, column.first_call.samples) for column in columns.values()] == [(2, 2), (2, 2)]
    assert all(column.open.p50_ms <= column.first_call.p50_ms for column in columns.values())
    assert log == ["settle", "open warm", "call warm", "close warm", "settle", "open cold", "call cold", "close cold",
                   "settle", "open cold", "call cold", "close cold", "settle", "open warm", "call warm", "close warm"]


def test_the_open_report_gives_ratios_to_direct_and_warm_against_cold() -> None:
    result = OpenFigures({
        WARM: Column(figures([0.010] * 3), figures([0.011] * 3)),
        COLD: Column(figures([1.0] * 3), figures([1.1] * 3)),
        DIRECT: Column(figures([0.5] * 3), figures([0.55] * 3)),
    }, (1, 1))
    lines: list[str] = []
    open_report(lines.append, "time", result)
    header = next(line for line in lines if WARM in line)
    assert header.index(DIRECT) < header.index(WARM) < header.index(COLD)
    open_p50, first_p50 = [line for line in lines if "ratio to direct, p50" in line]
    assert open_p50.split()[-3:] == first_p50.split()[-3:] == ["1.00x", "0.02x", "2.00x"]
    assert any("a warm open takes 0.01x of a cold one at p50 (10.0 ms against 1000.0 ms" in line for line in lines)
    assert any("to its first answer 0.01x (11.0 ms against 1100.0 ms)" in line for line in lines)
    assert lines[-1].endswith("1 of 1 ready")
