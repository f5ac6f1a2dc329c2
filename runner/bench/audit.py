"""The audit log's section: what write-ahead recording costs a call.

Each tools/call waits for the disk: its intent is committed before it is sent, its outcome is durable before the
answer leaves.

Two measurements. In this process, the store on its own with a real SQLite file: a lone append's latency
with one commit per record (``batch_max=1``) against group commit (the default), alternated append by
append, then N concurrent appenders against each, as records/s and the commits they took. That is the
case for group commit: under load, many records share one fsync. Through the service: tools/call with
the audit log off (``audit: {enabled: false}``), on as shipped, and on with ``audit: {fsync_intents: true}``
(each intent fsync'd on its own before its message is sent), three services with the same profiles, calls
alternated one by one so drift in the machine's load falls on all; the p50 differences are the audit cost
per call and the cost of syncing intents separately.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.audit.records import REQUEST, AuditEvent
from runner.audit.store import AuditStore
from runner.bench.common import Figures, Out, change, figures, rotated, row
from runner.bench.service import served, settings_file
from runner.client import AsyncRunnerClient

SEQUENTIAL = 200
"""Appends timed one at a time, per store."""
CONCURRENT = 2000
"""Records appended under concurrency, per store."""
APPENDERS = 32


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
    """tools/call through a service without the audit log, with it as shipped, and with intents fsync'd alone."""

    off: Figures
    on: Figures
    fsync_intents: Figures


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


async def measure_audit_calls(clients: Sequence[AsyncRunnerClient], profile: str, tool: str,
                              arguments: dict[str, Any], calls: int) -> list[Figures]:
    """tools/call on one session per service, alternated call by call in rotating order; figures per client."""
    sessions: list[str] = []
    times: list[list[float]] = [[] for _ in clients]
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
    return [figures(series) for series in times]


def audit_report(out: Out, where: str, store: StoreFigures, calls: AuditCalls) -> None:
    """Print the store's figures and the service's audit cost per call, each with a reading.

    ``where`` names the directory the store's files were in: fsync costs what that filesystem makes it cost.
    """
    one, group = store.one_commit, store.group
    out(f"\naudit store in this process (SQLite WAL, synchronous=FULL, temporary files under {where}):")
    row(out, "", "one commit per record (batch_max=1)", "group commit (the default)")
    row(out, "durable append, one at a time", one.latency.cell(), group.latency.cell())
    row(out, f"durable append, {store.appenders} concurrent appenders", one.burst.cell(), group.burst.cell())
    speedup = group.burst.per_second / one.burst.per_second if one.burst.per_second else float("nan")
    out(f"  reading: group commit changes a lone append's p50 by {change(one.latency.p50_ms, group.latency.p50_ms)}; "
        f"under {store.appenders} concurrent appenders it appends {speedup:.1f}x the records/s "
        f"in {group.burst.commits} commits instead of {one.burst.commits}")
    out("\ntools/call through the service, audit log off, on, and on with intents synced alone; three services "
        "alternated call by call")
    row(out, "", "audit off (audit: {enabled: false})", "audit on (the default: held until durable)")
    row(out, "tools/call", calls.off.cell(), calls.on.cell())
    out(f"  reading: the audit cost per call is {change(calls.off.p50_ms, calls.on.p50_ms)} at p50 "
        f"({change(calls.off.p95_ms, calls.on.p95_ms)} at p95)")
    row(out, "", "audit on (fsync_intents: false, the default)", "fsync_intents: true (intent fsync'd alone)")
    row(out, "tools/call", calls.on.cell(), calls.fsync_intents.cell())
    out(f"  reading: syncing each intent on its own costs {change(calls.on.p50_ms, calls.fsync_intents.p50_ms)} "
        f"per call at p50 ({change(calls.on.p95_ms, calls.fsync_intents.p95_ms)} at p95)")


async def audit_calls(config: str | None, profile: str, tool: str, arguments: dict[str, Any], calls: int
                      ) -> AuditCalls:
    """tools/call through three services that differ only in their audit settings."""
    cold: dict[str, Any] = {"pool": {}}  # no warm sandbox boots in the background of the measured calls
    with contextlib.ExitStack() as files:
        variants = [
            files.enter_context(settings_file(config, replace=cold, audit=audit))
            for audit in ({"enabled": False}, {}, {"fsync_intents": True})
        ]
        async with contextlib.AsyncExitStack() as services:
            clients = []
            for settings in variants:
                service = await services.enter_async_context(served(settings))
                clients.append(await services.enter_async_context(AsyncRunnerClient(service.address)))
            off, on, fsync_intents = await measure_audit_calls(clients, profile, tool, arguments, calls)
    return AuditCalls(off=off, on=on, fsync_intents=fsync_intents)


async def run(out: Out, config: str | None, profile: str, tool: str, arguments: dict[str, Any], calls: int) -> None:
    calls_figures = await audit_calls(config, profile, tool, arguments, calls)
    with tempfile.TemporaryDirectory() as scratch:
        # With every service stopped: the store's figures are the disk's, not shared with containers.
        store = await measure_store(Path(scratch))
    audit_report(out, tempfile.gettempdir(), store, calls_figures)
