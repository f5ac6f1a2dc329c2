"""The door section: the MCP door (Streamable HTTP, and the stdio bridge in front of it) beside gRPC and the host.

One service of the bench's own with its door on a free loopback port, from the same settings as the other
sections (the user's file or none, without warm sandboxes: every open is a cold one). Every MCP client is the
SDK's own ``mcp.Client``, as a host would use it.

Session open, baseline gRPC ``OpenSession``: the door's stateful ``initialize`` (2025-11-25; the door opens the
sandbox before it answers), and the stdio bridge as a host launches it (``mcp-runner mcp --url … PROFILE``
started, then its ``initialize`` relayed to the door). Each open is closed again, untimed, before the next.

tools/call, baseline gRPC ``CallTool``: one held session per path: the door's stateful session, the door's
2026-07-28 lease (no session; its first request, untimed, opens the caller's lease and lists the tools), the
stdio bridge, and the profile's server started on the host over stdio (no runner at all, as in ``calls``).

Each round every path runs once, in an order that rotates each round, so drift in the machine's load and any
order effect fall on every column alike; one untimed round first warms every path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from runner.bench.common import Figures, Out, change, figures, ratio, rotated, table, timed
from runner.bench.direct import DirectSession, host_command
from runner.bench.service import served, settings_file
from runner.client import AsyncRunnerClient
from runner.config import Profile
from runner.door.host_configs import bridge_command

GRPC, STATEFUL, LEASE, BRIDGE, HOST = "grpc", "stateful", "lease", "bridge", "host"
STATELESS_ERA = "2026-07-28"
OPEN_LABELS = {
    GRPC: "gRPC OpenSession",
    STATEFUL: "door: initialize (stateful, 2025-11-25)",
    BRIDGE: "stdio bridge: start + initialize",
}
CALL_LABELS = {
    GRPC: "gRPC CallTool",
    STATEFUL: "door: stateful session (2025-11-25)",
    LEASE: f"door: stateless lease ({STATELESS_ERA})",
    BRIDGE: "stdio bridge (mcp-runner mcp)",
    HOST: "host: the server over stdio, no runner",
}
NOT_ON_HOST = "(its server is not installed on the host)"


Step = Callable[[], Awaitable[float]]
"""One round of one path: the seconds that count (an open without its close, or one tools/call)."""


@dataclass(frozen=True)
class DoorFigures:
    """Per path: session open, and tools/call (without ``host`` when the profile's server is not installed here)."""

    open: Mapping[str, Figures]
    call: Mapping[str, Figures]


async def alternate(steps: Mapping[str, Step], count: int) -> dict[str, Figures]:
    """Each path's step ``count`` times after one untimed warm-up round, the paths' order rotating each round."""
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(-1, count):  # -1: the warm-up
        for name in rotated(list(steps), max(round_, 0)):
            seconds = await steps[name]()
            if round_ >= 0:
                samples[name].append(seconds)
    return {name: figures(seconds) for name, seconds in samples.items()}


def door_url(door: str, profile: str) -> str:
    """The profile's endpoint on the door listening on ``door`` (``host:port``)."""
    return f"http://{door}/mcp/{profile}"


def bridge_params(door: str, profile: str) -> StdioServerParameters:
    """What a host launches for ``profile``: ``mcp-runner mcp`` as ``--print-config`` writes it, at this door."""
    command = bridge_command()
    return StdioServerParameters(
        command=command[0], args=[*command[1:], "mcp", "--url", f"http://{door}/mcp", profile], env=dict(os.environ)
    )


def stateful_client(door: str, profile: str) -> Client:
    return Client(door_url(door, profile), mode="legacy")


def lease_client(door: str, profile: str) -> Client:
    return Client(door_url(door, profile), mode=STATELESS_ERA)


def bridge_client(door: str, profile: str, errlog: TextIO) -> Client:
    """The SDK's stdio client launching the bridge; the bridge's stderr goes to ``errlog``, not into the report."""
    return Client(stdio_client(bridge_params(door, profile), errlog=errlog), mode="legacy")


def called(call: Callable[[], Awaitable[Any]]) -> Step:
    return lambda: timed(call)


def sdk_open(client: Callable[[], Client]) -> Step:
    """A session opened by entering a fresh ``client`` (its initialize); left again, untimed, before the next."""

    async def one() -> float:
        async with contextlib.AsyncExitStack() as stack:
            return await timed(lambda: stack.enter_async_context(client()))

    return one


def grpc_open(runner: AsyncRunnerClient, profile: str) -> Step:
    """A session opened through gRPC; closed again, untimed."""

    async def one() -> float:
        start = time.perf_counter()
        session_id = (await runner.open_session(profile)).session_id
        seconds = time.perf_counter() - start
        await runner.close_session(session_id)
        return seconds

    return one


def open_steps(runner: AsyncRunnerClient, door: str, profile: str, errlog: TextIO) -> dict[str, Step]:
    return {
        GRPC: grpc_open(runner, profile),
        STATEFUL: sdk_open(lambda: stateful_client(door, profile)),
        BRIDGE: sdk_open(lambda: bridge_client(door, profile, errlog)),
    }


@contextlib.asynccontextmanager
async def call_steps(runner: AsyncRunnerClient, door: str, profile: str, tool: str, arguments: dict[str, Any],
                     errlog: TextIO, host: list[str] | None) -> AsyncIterator[dict[str, Step]]:
    """One open session per path, each step one tools/call on it; all closed on the way out, in reverse order
    (anyio's transports must be left in the task, and the order, they were entered)."""
    async with contextlib.AsyncExitStack() as stack:
        session_id = (await runner.open_session(profile)).session_id
        stack.push_async_callback(runner.close_session, session_id)
        stateful = await stack.enter_async_context(stateful_client(door, profile))
        lease = await stack.enter_async_context(lease_client(door, profile))
        # Opens the caller's lease; the listing also spares the first call the SDK's HEADER_MISMATCH retry.
        await lease.list_tools()
        bridge = await stack.enter_async_context(bridge_client(door, profile, errlog))
        steps = {
            GRPC: called(lambda: runner.call_tool(session_id, tool, arguments)),
            STATEFUL: called(lambda: stateful.call_tool(tool, arguments)),
            LEASE: called(lambda: lease.call_tool(tool, arguments)),
            BRIDGE: called(lambda: bridge.call_tool(tool, arguments)),
        }
        if host is not None:
            direct = await DirectSession.open(host)
            stack.push_async_callback(direct.close)
            steps[HOST] = called(lambda: direct.session.call_tool(tool, arguments))
        yield steps


def _table(out: Out, heading: str, labels: Mapping[str, str], measured: Mapping[str, Figures],
           host: Figures | None, with_host: bool) -> None:
    grpc = measured[GRPC]
    header = [heading, "p50 ms", "p95 ms", "n", "p50 / gRPC", "p95 / gRPC", *(["p50 / host"] if with_host else [])]
    rows = []
    for name, label in labels.items():
        got = measured.get(name)
        if got is None:
            rows.append([label, NOT_ON_HOST, *[""] * (len(header) - 2)])
            continue
        rows.append([label, f"{got.p50_ms:.1f}", f"{got.p95_ms:.1f}", str(got.samples),
                     ratio(got.p50_ms, grpc.p50_ms), ratio(got.p95_ms, grpc.p95_ms),
                     *([ratio(got.p50_ms, host.p50_ms) if host else "n/a"] if with_host else [])])
    table(lambda line: out(f"  {line}"), header, rows)


def door_report(out: Out, profile: Profile, tool: str, result: DoorFigures) -> None:
    """The open and the call tables, each path beside gRPC (and the host for calls), and what they say."""
    out(f"\ndoor: the MCP door beside gRPC, profile {profile.name!r}, one service with its door on loopback, every "
        "MCP client the SDK's own, paths alternated each round")
    _table(out, "session open (start+initialize+tools/list)", OPEN_LABELS, result.open, None, with_host=False)
    out("")
    host = result.call.get(HOST)
    _table(out, f"tools/call ({tool})", CALL_LABELS, result.call, host, with_host=True)
    opened, call = result.open, result.call
    grpc = call[GRPC].p50_ms
    out(f"  reading: a tools/call's p50 through the door's stateful session is {change(grpc, call[STATEFUL].p50_ms)} "
        f"against gRPC's, through the lease {change(grpc, call[LEASE].p50_ms)}; the bridge adds "
        f"{change(call[STATEFUL].p50_ms, call[BRIDGE].p50_ms)} to the door's session; opening through the door is "
        f"{change(opened[GRPC].p50_ms, opened[STATEFUL].p50_ms)} against gRPC")
    out("  the bridge's open includes starting its process (Python and the SDK's client imported) as a host does; "
        "the lease's first request, which opens its sandbox, is not timed")


async def run(out: Out, config: str | None, profile: Profile, tool: str, arguments: dict[str, Any], opens: int,
              calls: int) -> None:
    """Measure and report."""
    host = host_command(profile)
    with settings_file(config, replace={"pool": {}}) as settings, tempfile.TemporaryFile("w+") as errlog:
        try:
            async with served(settings, door=True) as service, AsyncRunnerClient(service.address) as runner:
                open_figures = await alternate(open_steps(runner, service.door, profile.name, errlog), opens)
                async with call_steps(runner, service.door, profile.name, tool, arguments, errlog, host) as steps:
                    call_figures = await alternate(steps, calls)
        except BaseException:
            errlog.seek(0)
            if tail := errlog.read()[-2000:].strip():
                out(f"  the stdio bridge's stderr: {tail}")
            raise
    door_report(out, profile, tool, DoorFigures(open_figures, call_figures))
