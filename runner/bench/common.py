"""What every section shares: latency figures, comparisons, the order variants take turns, and tables.

Standard library only, and imports nothing of the bench: every other module may import it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

Out = Callable[[str], None]
"""Where a section prints its report, one line at a time."""
LABEL, BASELINE = 44, 46
"""Column widths of the two-column tables: the row label, and the baseline's cell."""


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


async def timed(step: Callable[[], Awaitable[Any]]) -> float:
    """Seconds ``step`` took."""
    start = time.perf_counter()
    await step()
    return time.perf_counter() - start


def rotated(items: Sequence[T], round_: int) -> list[T]:
    """``items`` starting at ``round_`` (mod its length), so no variant always goes first."""
    if not items:
        return []
    start = round_ % len(items)
    return [*items[start:], *items[:start]]


def change(base_ms: float, other_ms: float) -> str:
    """``other`` against ``base`` as signed milliseconds and percent, e.g. ``+412.0 ms (+38 %)``."""
    diff = other_ms - base_ms
    percent = f"{diff / base_ms * 100:+.0f} %" if base_ms else "n/a"
    return f"{diff:+.1f} ms ({percent})"


def ratio(value: float, base: float) -> str:
    """``value`` as a multiple of ``base``, e.g. ``1.93x``; ``n/a`` without a base."""
    return f"{value / base:.2f}x" if base else "n/a"


def row(out: Out, label: str, baseline: str, other: str) -> None:
    """One line of a two-column table: the baseline first."""
    out(f"{label:{LABEL}} {baseline:{BASELINE}} {other}")


def table(out: Out, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns as wide as their widest cell; the first column labels the row."""
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]
    for line in [header, *rows]:
        out("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def machine_caveat() -> str:
    """Which caveat applies to this run's figures: the machine they come from, and how busy it already was."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    busy = " (already busy: expect noise)" if load > cores / 2 else ""
    return (f"this machine: {cores} cores, load average {load:.1f} at the start{busy}. Figures are wall clock on a "
            "shared machine: compare the columns of one run (they alternate round by round), not runs or machines")
