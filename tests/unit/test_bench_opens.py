"""The open section: columns take turns, the warm pool settles before every open, closes stay outside the timing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from runner.bench.common import figures
from runner.bench.opens import COLD, DIRECT, WARM, OpenFigures, measure, open_report


def test_opens_take_turns_settle_before_each_and_close_untimed() -> None:
    log: list[str] = []

    def step(name: str) -> Callable[[], Awaitable[Callable[[], Awaitable[Any]]]]:
        async def open_and_call() -> Callable[[], Awaitable[Any]]:
            log.append(f"open {name}")

            async def close() -> None:
                log.append(f"close {name}")

            return close

        return open_and_call

    async def settle() -> None:
        log.append("settle")

    columns = asyncio.run(measure({WARM: step("warm"), COLD: step("cold")}, settle, 2))
    assert [figure.samples for figure in columns.values()] == [2, 2]
    assert log == ["settle", "open warm", "close warm", "settle", "open cold", "close cold",
                   "settle", "open cold", "close cold", "settle", "open warm", "close warm"]


def test_the_open_report_gives_ratios_to_direct_and_warm_against_cold() -> None:
    result = OpenFigures({WARM: figures([0.011] * 3), COLD: figures([1.1] * 3), DIRECT: figures([0.55] * 3)}, (1, 1))
    lines: list[str] = []
    open_report(lines.append, "time", result)
    header = next(line for line in lines if WARM in line)
    assert header.index(DIRECT) < header.index(WARM) < header.index(COLD)
    p50 = next(line for line in lines if "ratio to direct, p50" in line)
    assert p50.split()[-3:] == ["1.00x", "0.02x", "2.00x"]
    assert any("takes 0.01x of a cold one at p50 (11.0 ms against 1100.0 ms)" in line for line in lines)
    assert lines[-1].endswith("1 of 1 ready")
