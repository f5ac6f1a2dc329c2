"""What the machine spent: CPU busy time from /proc/stat, a container's memory from its cgroup, a process's RSS.

CPU is counted for the whole machine, every process included (the service, its containers, Docker, this
process, and anything else running): a sandbox's cost is spread over processes no single one of them shows.
Standard library only; the parsers take text so tests feed them samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_MEMORY = Path("/sys/fs/cgroup/memory/docker")
"""cgroup v1 with Docker's cgroupfs driver: one directory per container, named by its full id."""
_BUSY_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_IDLE = {"idle", "iowait"}


@dataclass(frozen=True)
class CpuSample:
    """Jiffies since boot, summed over every core: busy (not idle or waiting on I/O) and in all."""

    busy: int
    total: int


def parse_proc_stat(text: str) -> CpuSample:
    """The aggregate ``cpu`` line of /proc/stat. guest and guest_nice are already inside user and nice."""
    for line in text.splitlines():
        name, *values = line.split()
        if name == "cpu":
            counts = dict(zip(_BUSY_FIELDS, map(int, values), strict=False))
            busy = sum(count for field, count in counts.items() if field not in _IDLE)
            return CpuSample(busy=busy, total=sum(counts.values()))
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def read_cpu() -> CpuSample:
    return parse_proc_stat(Path("/proc/stat").read_text(encoding="ascii"))


@dataclass(frozen=True)
class CpuWindow:
    """What the machine spent between two samples, ``seconds`` of wall clock apart."""

    busy_s: float
    total_s: float
    seconds: float

    @property
    def utilisation(self) -> float:
        """Busy share of every core's time, 0 to 1."""
        return self.busy_s / self.total_s if self.total_s else 0.0

    def per_call_ms(self, calls: int) -> float:
        return self.busy_s * 1000 / calls if calls else float("nan")


def cpu_window(before: CpuSample, after: CpuSample, seconds: float, hz: int | None = None) -> CpuWindow:
    ticks = hz or os.sysconf("SC_CLK_TCK")
    return CpuWindow((after.busy - before.busy) / ticks, (after.total - before.total) / ticks, seconds)


def parse_memory_stat(text: str) -> dict[str, int]:
    """A cgroup v1 ``memory.stat`` file as numbers by name."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def container_memory(container_id: str, root: Path = CGROUP_MEMORY) -> int | None:
    """Bytes a container's cgroup uses, page cache excluded (what its processes hold); None if not readable here.

    ``total_cache`` rather than ``cache``: ``usage_in_bytes`` counts the whole subtree, so the cache must too.
    """
    directory = root / container_id
    try:
        usage = int((directory / "memory.usage_in_bytes").read_text(encoding="ascii"))
        stat = parse_memory_stat((directory / "memory.stat").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    return usage - stat.get("total_cache", stat.get("cache", 0))


def parse_rss(status: str) -> int | None:
    """``VmRSS`` of a /proc/<pid>/status text, in bytes."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def process_rss(pid: int) -> int | None:
    try:
        return parse_rss(Path(f"/proc/{pid}/status").read_text(encoding="utf-8"))
    except OSError:
        return None


def mib(size: float | None) -> str:
    return f"{size / 1024**2:.1f} MiB" if size is not None else "n/a"
