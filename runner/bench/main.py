"""Runs the chosen sections in their order (``options.SECTIONS``), each printing its figures beside its baseline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from runner.bench import at_once, audit, backends, calls, door, guard, opens, sandbox, throughput
from runner.bench.common import Out, machine_caveat
from runner.bench.options import BenchOptions
from runner.errors import ProfileNotFound
from runner.settings_file import load_settings

TOOL = "get_current_time"
ARGUMENTS: dict[str, Any] = {"timezone": "UTC"}
"""What the open, calls, throughput, sandbox, audit, door and backends sections call: small, answered by the time
server."""


async def run_bench(options: BenchOptions, out: Out = print) -> None:
    profile = load_settings(options.config).profiles.get(options.profile)
    if profile is None:
        raise ProfileNotFound(f"no profile named {options.profile!r}")
    out(f"mcp-runner bench: {', '.join(options.sections)}; profile {profile.name!r}, tool {TOOL}, "
        f"{options.opens} opens, {options.calls} calls")
    out(machine_caveat())
    config, call_p50_ms = options.config, None
    for section in options.sections:
        start = time.monotonic()
        if section == "open":
            await opens.run(out, config, profile, TOOL, ARGUMENTS, options.opens)
        elif section == "calls":
            call_p50_ms = await calls.run(out, config, profile, TOOL, ARGUMENTS, options.opens, options.calls)
        elif section == "throughput":
            await throughput.run(out, config, profile, TOOL, ARGUMENTS, options.concurrency, options.calls)
        elif section == "at-once":
            await at_once.run(out, config, options.at_once, options.at_once_calls)
        elif section == "guard":
            guard.guard_report(out, call_p50_ms)
        elif section == "sandbox":
            await sandbox.run(out, config, profile, TOOL, ARGUMENTS, options.opens, options.calls)
        elif section == "audit":
            await audit.run(out, config, profile.name, TOOL, ARGUMENTS, options.calls)
        elif section == "door":
            await door.run(out, config, profile, TOOL, ARGUMENTS, options.opens, options.calls)
        elif section == "backends":
            await backends.run(out, config, profile, TOOL, ARGUMENTS, options.opens, options.backend)
        out(f"  ({section}: {time.monotonic() - start:.0f} s)")


def bench_main(options: BenchOptions) -> None:
    asyncio.run(run_bench(options))
