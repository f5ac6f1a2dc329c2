"""The bench's machine accounting reads /proc and cgroup files as the kernel writes them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.bench.machine import (
    CpuSample,
    container_memory,
    cpu_window,
    mib,
    parse_memory_stat,
    parse_proc_stat,
    parse_rss,
    process_rss,
    read_cpu,
)

PROC_STAT = """cpu  100 5 40 800 20 3 2 1 7 0
cpu0 50 2 20 400 10 1 1 0 3 0
cpu1 50 3 20 400 10 2 1 1 4 0
intr 12345 0 0
ctxt 999
"""


def test_busy_jiffies_leave_out_idle_and_iowait_and_do_not_count_guest_twice() -> None:
    sample = parse_proc_stat(PROC_STAT)
    # user nice system idle iowait irq softirq steal (guest 7, already inside user, is not added again)
    assert sample == CpuSample(busy=100 + 5 + 40 + 3 + 2 + 1, total=100 + 5 + 40 + 800 + 20 + 3 + 2 + 1)


def test_a_proc_stat_without_the_aggregate_line_is_refused() -> None:
    with pytest.raises(ValueError, match="aggregate"):
        parse_proc_stat("cpu0 1 2 3 4\n")


def test_cpu_per_call_and_utilisation_over_a_window() -> None:
    window = cpu_window(CpuSample(busy=1000, total=5000), CpuSample(busy=1300, total=5400), seconds=2.0, hz=100)
    assert window.busy_s == pytest.approx(3.0) and window.total_s == pytest.approx(4.0)
    assert window.utilisation == pytest.approx(0.75)
    assert window.per_call_ms(1500) == pytest.approx(2.0)
    assert window.per_call_ms(0) != window.per_call_ms(0)  # nan: no calls, no cost per call


def test_this_machine_can_be_read() -> None:
    before = read_cpu()
    assert 0 < before.busy <= before.total
    assert process_rss(os.getpid()) is not None
    assert process_rss(2**22 + 1) is None  # above pid_max's default ceiling: no such process


def test_container_memory_is_usage_minus_the_whole_subtrees_page_cache(tmp_path: Path) -> None:
    container = tmp_path / "abc123"
    container.mkdir()
    (container / "memory.usage_in_bytes").write_text("104857600\n", encoding="ascii")
    (container / "memory.stat").write_text("cache 1000\nrss 5\ntotal_cache 20971520\ntotal_rss 7\n", encoding="ascii")
    assert container_memory("abc123", root=tmp_path) == 80 * 1024**2
    assert container_memory("gone", root=tmp_path) is None
    assert parse_memory_stat("cache 12\nhierarchical_memory_limit 9223372036854771712\nbad line\n") == {
        "cache": 12, "hierarchical_memory_limit": 9223372036854771712,
    }  # fmt: skip


def test_rss_from_proc_status() -> None:
    assert parse_rss("Name:\tpython\nVmPeak:\t  9 kB\nVmRSS:\t  2048 kB\n") == 2 * 1024**2
    assert parse_rss("Name:\tkthreadd\n") is None
    assert mib(80 * 1024**2) == "80.0 MiB" and mib(None) == "n/a"
