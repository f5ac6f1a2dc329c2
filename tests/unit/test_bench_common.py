"""The figures and tables every bench section prints."""

from __future__ import annotations

import pytest

from runner.bench.common import Figures, figures, machine_caveat, ratio, row, table


def test_figures_are_median_and_nearest_rank_p95_in_ms() -> None:
    result = figures([i / 1000 for i in range(1, 21)])
    assert result == Figures(20, pytest.approx(10.5), pytest.approx(19.0))
    assert figures([0.002]).cell() == "p50      2.0 ms  p95      2.0 ms  (n=1)"


def test_ratio_is_a_multiple_of_the_base_or_not_applicable() -> None:
    assert ratio(3.0, 2.0) == "1.50x"
    assert ratio(1.0, 0.0) == "n/a"


def test_a_table_aligns_columns_to_their_widest_cell() -> None:
    lines: list[str] = []
    table(lines.append, ["", "direct", "service"], [["calls/s", "1026", "286"], ["  ratio", "", "0.28x"]])
    assert lines == [
        "         direct  service",
        "calls/s  1026    286",
        "  ratio          0.28x",
    ]


def test_a_two_column_row_puts_the_baseline_first() -> None:
    lines: list[str] = []
    row(lines.append, "tools/call", "host", "sandboxed")
    assert lines[0].index("host") < lines[0].index("sandboxed") and lines[0].startswith("tools/call ")


def test_the_caveat_names_the_machine_and_says_to_compare_columns() -> None:
    caveat = machine_caveat()
    assert "cores, load average" in caveat and "shared machine" in caveat and "compare the columns" in caveat
