"""The audit log's share of ``mcp-runner bench``: what write-ahead recording costs a call.

Each tools/call waits twice for the disk: its intent before it is sent, its outcome before the answer leaves.

Two measurements. In this process, the store on its own with a real SQLite file: a lone append's latency
with one commit per record (``batch_max=1``) against group commit (the default), alternated append by
append, then N concurrent appenders against each, as records/s and the commits they took. That is the
case for group commit: under load, many records share one fsync. Through the service: tools/call with
the audit log on (as shipped) against a second service whose settings add ``audit: {enabled: false}``,
same profiles, calls alternated one by one so drift in the machine's load falls on both; the p50
difference is the audit cost per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from runner.audit.records import REQUEST, AuditEvent
from runner.audit.store import AuditStore
from runner.bench_sandbox import change, rotated
from runner.config_document import read_document

if TYPE_CHECKING:
    from runner.bench import Figures
    from runner.client import AsyncRunnerClient

SEQUENTIAL = 200
"""Appends timed one at a time, per store."""
CONCURRENT = 2000
"""Records appended under concurrency, per store."""
APPENDERS = 32
_LABEL, _BASELINE = 44, 46
"""Column widths of the bench's tables."""


def sample_event() -> AuditEvent:
    """About the size of the record the service writes for one tools/call of the time server."""
    return AuditEvent(
        kind=REQUEST,
        session_id="ses_0123456789abcdef",
        caller="bench",
        data={
            "method": "tools/call",
            "tool": "get_current_time",
            "arguments": {"timezone": "UTC"},
            "result": {
                "content": [{"type": "text", "text": '{"timezone": "UTC", "datetime": "2026-11-26T10:00:00+00:00"}'}],
                "structuredContent": {"timezone": "UTC", "datetime": "2026-11-26T10:00:00+00:00", "is_dst": False},
                "isError": False,
            },
            "duration_ms": 4.2,
        },
    )


@dataclass(frozen=True)
class Throughput:
    """``records`` appended by concurrent appenders in ``seconds``, using ``commits`` transactions."""

    records: int
    seconds: float
    commits: int

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds else float("nan")

    def cell(self) -> str:
        return f"{self.per_second:8.0f} records/s  {self.commits:6d} commits  (n={self.records})"


@dataclass(frozen=True)
class StoreSide:
    latency: Figures
    """One durable append at a time."""
    burst: Throughput


@dataclass(frozen=True)
class StoreFigures:
    one_commit: StoreSide
    """``batch_max=1``: every record its own transaction and fsync."""
    group: StoreSide
    """The store's default batching."""
    appenders: int


@dataclass(frozen=True)
class AuditCalls:
    """tools/call through a service without and with the audit log."""

    off: Figures
    on: Figures


async def _latencies(stores: list[AuditStore], count: int) -> list[list[float]]:
    """``count`` appends per store, alternated in rotating order, each awaited until durable."""
    times: list[list[float]] = [[] for _ in stores]
    for round_ in range(count):
        for index in rotated(range(len(stores)), round_):
            start = time.perf_counter()
            await stores[index].append(sample_event())
            times[index].append(time.perf_counter() - start)
    return times


async def _burst(store: AuditStore, records: int, appenders: int) -> Throughput:
    remaining = records

    async def appender() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await store.append(sample_event())

    commits = store.commits
    start = time.perf_counter()
    await asyncio.gather(*(appender() for _ in range(appenders)))
    return Throughput(records, time.perf_counter() - start, store.commits - commits)


async def measure_store(directory: Path, *, sequential: int = SEQUENTIAL, concurrent: int = CONCURRENT,
                        appenders: int = APPENDERS) -> StoreFigures:
    """One store with one commit per record and one with group commit, each on its own file in ``directory``."""
    from runner.bench import figures  # here, not at the top: runner.bench imports this module

    stores = [AuditStore(directory / "one-commit.sqlite3", batch_max=1), AuditStore(directory / "group.sqlite3")]
    with contextlib.ExitStack() as opened:
        for store in stores:
            store.open()
            opened.callback(store.close)
            await store.append(sample_event())  # untimed: creates the schema and warms the file
        latencies = await _latencies(stores, sequential)
        bursts = [await _burst(store, concurrent, appenders) for store in stores]
    one, group = (StoreSide(figures(times), burst) for times, burst in zip(latencies, bursts, strict=True))
    return StoreFigures(one_commit=one, group=group, appenders=appenders)


@contextlib.contextmanager
def audit_off_config(config: str) -> Iterator[str]:
    """``config`` with ``audit: {enabled: false}`` merged in, as YAML written beside it (so relative paths in it
    still resolve) and removed afterwards.
    """
    source = Path(config)
    document = read_document(source, "settings file")
    document["audit"] = {**(document.get("audit") or {}), "enabled": False}
    fd, name = tempfile.mkstemp(prefix=f".{source.stem}-audit-off-", suffix=".yaml", dir=source.resolve().parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            yaml.safe_dump(document, out)
        yield name
    finally:
        os.unlink(name)


async def measure_audit_calls(on: AsyncRunnerClient, off: AsyncRunnerClient, profile: str, tool: str,
                              arguments: dict[str, Any], calls: int) -> AuditCalls:
    """tools/call on one session per service, alternated call by call in rotating order."""
    from runner.bench import figures

    clients = [off, on]
    sessions: list[str] = []
    times: list[list[float]] = [[], []]
    try:
        for client in clients:
            sessions.append((await client.open_session(profile)).session_id)
            await client.call_tool(sessions[-1], tool, arguments)  # untimed: the first call warms the session
        for round_ in range(calls):
            for index in rotated(range(len(clients)), round_):
                start = time.perf_counter()
                await clients[index].call_tool(sessions[index], tool, arguments)
                times[index].append(time.perf_counter() - start)
    finally:
        for client, session_id in zip(clients, sessions, strict=False):
            await client.close_session(session_id)
    return AuditCalls(off=figures(times[0]), on=figures(times[1]))


def _row(out: Callable[[str], None], label: str, baseline: str, other: str) -> None:
    out(f"{label:{_LABEL}} {baseline:{_BASELINE}} {other}")


def audit_report(out: Callable[[str], None], where: str, store: StoreFigures, calls: AuditCalls) -> None:
    """Print the store's figures and the service's audit cost per call, each with a reading.

    ``where`` names the directory the store's files were in: fsync costs what that filesystem makes it cost.
    """
    one, group = store.one_commit, store.group
    out(f"\naudit store in this process (SQLite WAL, synchronous=FULL, temporary files under {where}):")
    _row(out, "", "one commit per record (batch_max=1)", "group commit (the default)")
    _row(out, "durable append, one at a time", one.latency.cell(), group.latency.cell())
    _row(out, f"durable append, {store.appenders} concurrent appenders", one.burst.cell(), group.burst.cell())
    speedup = group.burst.per_second / one.burst.per_second if one.burst.per_second else float("nan")
    out(f"  reading: group commit changes a lone append's p50 by {change(one.latency.p50_ms, group.latency.p50_ms)}; "
        f"under {store.appenders} concurrent appenders it appends {speedup:.1f}x the records/s "
        f"in {group.burst.commits} commits instead of {one.burst.commits}")
    out("\ntools/call through the service, audit log off and on, two services alternated call by call")
    _row(out, "", "audit off (audit: {enabled: false})", "audit on (the default: held until durable)")
    _row(out, "tools/call", calls.off.cell(), calls.on.cell())
    out(f"  reading: the audit cost per call is {change(calls.off.p50_ms, calls.on.p50_ms)} at p50 "
        f"({change(calls.off.p95_ms, calls.on.p95_ms)} at p95)")
