"""The at-once section: N sessions of ``time`` asked for at the same moment, then calls on all of them at once.

What it counts, not just how fast: sessions opened and failed (with why), the wall time until the last open
answered, memory per session (each container's cgroup memory minus page cache, averaged), the service's RSS
idle and with every session open; then every session's calls, each answer checked against the call that asked
(``check``): a call's arguments are unique to its session and to the call, and the time server's answer echoes
them, so an answer delivered to the wrong session or call is seen. Last, after closing every session, the
containers still labelled with the service's instance (there must be none). The service runs in its own process,
without warm sandboxes, with room for N sessions of one caller (``capacity``).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import grpc

from runner.bench.common import Out
from runner.bench.machine import container_memory, mib, process_rss
from runner.bench.options import MAX_AT_ONCE, MAX_AT_ONCE_CALLS
from runner.bench.service import capacity, close_all, open_all, served, settings_file
from runner.client import AsyncRunnerClient, ToolResult
from runner.sandbox.base import INSTANCE_LABEL

PROFILE, TOOL = "time", "convert_time"
ZONES = tuple(f"Etc/GMT{offset:+d}" if offset else "Etc/GMT" for offset in range(-14, 13))
"""Fixed-offset zones every tz database has: 27 of them, so 27 x 27 (source, target) pairs tell sessions apart."""

Verdict = Literal["answered", "cross-delivered", "unreadable"]


def convert_arguments(session: int, call: int) -> dict[str, str]:
    """Arguments unique to (``session``, ``call``) while session < 729 and call < 1440."""
    return {
        "source_timezone": ZONES[session % len(ZONES)],
        "target_timezone": ZONES[session // len(ZONES) % len(ZONES)],
        "time": f"{call // 60 % 24:02d}:{call % 60:02d}",
    }


def check(arguments: dict[str, str], answer: Any) -> Verdict:
    """Whether ``answer`` is the time server's conversion of exactly ``arguments``; a conversion of anything else
    was meant for another call; an answer that is no conversion at all is unreadable."""
    try:
        source, target = answer["source"], answer["target"]
        echoed = (source["timezone"], target["timezone"], source["datetime"][11:16])
    except (KeyError, TypeError, IndexError):
        return "unreadable"
    asked = (arguments["source_timezone"], arguments["target_timezone"], arguments["time"])
    return "answered" if echoed == asked else "cross-delivered"


def answer_of(result: ToolResult) -> Any:
    """The structured answer, or the text parsed as JSON when the server gave none."""
    if result.structured_content is not None:
        return result.structured_content
    try:
        return json.loads(result.text)
    except ValueError:
        return None


def reason(exc: BaseException) -> str:
    """A failure as one short line, so equal failures count together."""
    if isinstance(exc, grpc.aio.AioRpcError):
        details = (exc.details() or "").splitlines()
        return f"{exc.code().name}: {details[0][:160] if details else ''}"
    return f"{type(exc).__name__}: {str(exc)[:160]}"


@dataclass(frozen=True)
class AtOnce:
    asked: int
    opened: int
    open_failures: Counter[str]
    open_s: float
    memory: list[int]
    """Each container's memory that could be read (cgroup usage minus page cache), bytes."""
    rss_idle: int | None
    rss_open: int | None
    calls: int
    verdicts: Counter[str]
    """``check`` verdicts, and failed calls by ``reason``."""
    calls_s: float
    close_failures: int
    left: int
    """Containers with the service's instance label after every session was closed."""

    @property
    def answered(self) -> int:
        return self.verdicts["answered"]

    @property
    def cross_deliveries(self) -> int:
        return self.verdicts["cross-delivered"]

    @property
    def failed_calls(self) -> int:
        return self.calls - self.answered - self.cross_deliveries

    @property
    def memory_per_session(self) -> float | None:
        return sum(self.memory) / len(self.memory) if self.memory else None


def _containers(instance: str) -> list[str]:
    """Ids of every container, running or not, labelled with ``instance``."""
    engine = docker.from_env()
    labelled: dict[str, str | list[str] | bool] = {"label": f"{INSTANCE_LABEL}={instance}"}
    try:
        for _ in range(20):
            try:
                return [c.id for c in engine.containers.list(all=True, filters=labelled) if c.id is not None]
            except docker.errors.NotFound:
                continue  # docker-py lists, then inspects each: one was removed in between, so list again
        raise RuntimeError("containers kept vanishing while being listed")
    finally:
        engine.close()


def _memory(instance: str) -> list[int]:
    readings = (container_memory(container_id) for container_id in _containers(instance))
    return [reading for reading in readings if reading is not None]


async def _session_calls(client: AsyncRunnerClient, session_id: str, session: int, calls: int) -> Counter[str]:
    verdicts: Counter[str] = Counter()
    for call in range(calls):
        arguments = convert_arguments(session, call)
        try:
            result = await client.call_tool(session_id, TOOL, arguments)
        except grpc.RpcError as exc:
            verdicts[reason(exc)] += 1
            continue
        verdicts["tool error" if result.is_error else check(arguments, answer_of(result))] += 1
    return verdicts


async def measure_at_once(config: str | None, sessions: int, calls: int) -> AtOnce:
    if not (1 <= sessions <= MAX_AT_ONCE and 1 <= calls <= MAX_AT_ONCE_CALLS):
        raise ValueError(f"at most {MAX_AT_ONCE} sessions and {MAX_AT_ONCE_CALLS} calls each can be told apart")
    with tempfile.TemporaryDirectory() as scratch:
        changes = {**capacity(sessions, Path(scratch)), "pool": {}}
        with settings_file(config, replace=changes) as settings:
            async with served(settings) as service, AsyncRunnerClient(service.address) as client:
                rss_idle = process_rss(service.pid)
                start = time.perf_counter()
                opened = await open_all(client, PROFILE, sessions)
                open_s = time.perf_counter() - start
                session_ids = [item for item in opened if isinstance(item, str)]
                try:
                    memory = await asyncio.to_thread(_memory, service.instance)
                    rss_open = process_rss(service.pid)
                    start = time.perf_counter()
                    tallies = await asyncio.gather(*(
                        _session_calls(client, session_id, index, calls) for index, session_id in enumerate(session_ids)
                    ))
                    calls_s = time.perf_counter() - start
                finally:
                    close_failures = await close_all(client, session_ids)
                left = len(await asyncio.to_thread(_containers, service.instance))
    return AtOnce(
        asked=sessions,
        opened=len(session_ids),
        open_failures=Counter(reason(item) for item in opened if isinstance(item, BaseException)),
        open_s=open_s,
        memory=memory,
        rss_idle=rss_idle,
        rss_open=rss_open,
        calls=len(session_ids) * calls,
        verdicts=sum(tallies, Counter()),
        calls_s=calls_s,
        close_failures=len(close_failures),
        left=left,
    )


def at_once_report(out: Out, result: AtOnce, calls: int) -> None:
    out(f"\nat once: {result.asked} sessions of {PROFILE!r} asked for at the same moment (service in its own process, "
        f"no warm pool), then {calls} calls of {TOOL} on each, all sessions at once, every answer checked")
    failed = result.asked - result.opened
    share = result.opened / result.asked
    out(f"  opened              {result.opened} of {result.asked} ({share:.0%}), {failed} failed, "
        f"last answer after {result.open_s:.1f} s")
    out(f"  memory per session  {mib(result.memory_per_session)} (container cgroup memory minus page cache, mean of "
        f"{len(result.memory)} containers)")
    growth = ""
    if result.rss_idle is not None and result.rss_open is not None and result.opened:
        growth = f", {mib((result.rss_open - result.rss_idle) / result.opened)} more per session"
    out(f"  service RSS         {mib(result.rss_idle)} idle, {mib(result.rss_open)} with {result.opened} sessions "
        f"open{growth}")
    rate = result.calls / result.calls_s if result.calls_s else float("nan")
    out(f"  calls               {result.calls}: {result.answered} answered, {result.failed_calls} failed, "
        f"{result.cross_deliveries} cross-delivered, in {result.calls_s:.1f} s ({rate:.0f} calls/s)")
    out(f"  closed              {result.opened - result.close_failures} of {result.opened}; containers left with "
        f"the service's instance label: {result.left}")
    for why, count in result.open_failures.most_common(5):
        out(f"  open failed x{count}: {why}")
    failures = Counter({why: n for why, n in result.verdicts.items() if why not in ("answered", "cross-delivered")})
    for why, count in failures.most_common(5):
        out(f"  call failed x{count}: {why}")


async def run(out: Out, config: str | None, sessions: int, calls: int) -> None:
    at_once_report(out, await measure_at_once(config, sessions, calls), calls)
