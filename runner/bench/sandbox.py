"""The sandbox options' section: gVisor against runc, a networked session against none.

Both are switches in a profile (``runtime: runsc``, ``network.egress``), so what an operator needs to know is
what each adds to the profile they would otherwise run. The section measures the profile's generated twins
(``twins``: each differs from it in exactly one respect) through one service of their own. The variants
alternate each round, in rotating order, so drift in the machine's load and any order effect (the previous
close still being cleaned up by Docker) fall on every column alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc

from runner.bench.common import Figures, Out, change, figures, rotated, row
from runner.bench.service import served, settings_file
from runner.bench.twins import BENCH_EGRESS, EGRESS, RUNSC, twin_settings
from runner.client import AsyncRunnerClient
from runner.config import Profile

_SHIPPED, _GVISOR, _NETWORKED = "shipped", "gvisor", "networked"


def unavailable(variant: str, profile: str, code: grpc.StatusCode, details: str) -> str:
    """Why a twin could not be measured, for the report; a missing gVisor runtime is said plainly."""
    if variant == _GVISOR and code == grpc.StatusCode.FAILED_PRECONDITION and "runtime" in details.lower():
        return f"gVisor is not available on this Docker engine, so it is not measured: {details}"
    what = "gVisor" if variant == _GVISOR else "the networked session"
    return f"{what} could not be measured: opening {profile!r} failed with {code.name}: {details}"


@dataclass(frozen=True)
class Lifecycle:
    """One variant's session open (start + initialize + tools/list) and close."""

    open: Figures
    close: Figures


@dataclass(frozen=True)
class SandboxFigures:
    """The section's figures; a variant that could not run has None and the reason in ``missing``."""

    shipped: Lifecycle
    gvisor: Lifecycle | None
    calls: tuple[Figures, Figures] | None
    """tools/call under runc and under gVisor, alternated; measured only when gVisor runs."""
    networked: Lifecycle | None
    missing: dict[str, str]


async def _open_close(client: AsyncRunnerClient, profile: str) -> tuple[float, float]:
    start = time.perf_counter()
    session_id = (await client.open_session(profile)).session_id
    opened = time.perf_counter()
    await client.close_session(session_id)
    return opened - start, time.perf_counter() - opened


async def measure_sandbox(client: AsyncRunnerClient, profile: str, tool: str, arguments: dict[str, Any],
                          opens: int, calls: int) -> SandboxFigures:
    """The shipped profile against its ``-runsc`` and ``-egress`` twins, through the service behind ``client``."""
    names = {_SHIPPED: profile, _GVISOR: profile + RUNSC, _NETWORKED: profile + EGRESS}
    missing: dict[str, str] = {}
    for variant, name in names.items():
        # One untimed round first: it finds out whether the variant can run here at all, and warms the
        # runtime's and Docker's caches so the first timed round is not an outlier of one column only.
        try:
            await _open_close(client, name)
        except grpc.RpcError as exc:
            if variant == _SHIPPED:
                raise
            missing[variant] = unavailable(variant, name, exc.code(), exc.details() or "")
    live = [variant for variant in names if variant not in missing]
    opened: dict[str, list[float]] = {variant: [] for variant in live}
    closed: dict[str, list[float]] = {variant: [] for variant in live}
    for round_ in range(opens):
        for variant in rotated(live, round_):
            open_s, close_s = await _open_close(client, names[variant])
            opened[variant].append(open_s)
            closed[variant].append(close_s)

    calling = [_SHIPPED, _GVISOR] if _GVISOR in live else []
    sessions: dict[str, str] = {}
    called: dict[str, list[float]] = {variant: [] for variant in calling}
    try:
        for variant in calling:
            sessions[variant] = (await client.open_session(names[variant])).session_id
        for round_ in range(calls):
            for variant in rotated(calling, round_):
                start = time.perf_counter()
                await client.call_tool(sessions[variant], tool, arguments)
                called[variant].append(time.perf_counter() - start)
    finally:
        for session_id in sessions.values():
            await client.close_session(session_id)

    def lifecycle(variant: str) -> Lifecycle | None:
        return Lifecycle(figures(opened[variant]), figures(closed[variant])) if variant in live else None

    shipped = lifecycle(_SHIPPED)
    assert shipped is not None
    return SandboxFigures(
        shipped=shipped,
        gvisor=lifecycle(_GVISOR),
        calls=(figures(called[_SHIPPED]), figures(called[_GVISOR])) if calling else None,
        networked=lifecycle(_NETWORKED),
        missing=missing,
    )


def _row(out: Out, label: str, baseline: Figures, other: Figures) -> None:
    row(out, label, baseline.cell(), other.cell())


def sandbox_report(out: Out, profile: str, result: SandboxFigures | None) -> None:
    """Print both comparisons with a reading each; a variant that could not run is reported, not fatal."""
    out(f"\nsandbox runtime and network: profile {profile!r} against its generated twins, one service, "
        "variants alternated each round")
    if result is None:
        out("  (only without --config: the twins are generated next to the built-in profiles)")
        return
    shipped = result.shipped
    opening, closing = "session open (start+initialize+tools/list)", "session close"
    if result.gvisor is not None and result.calls is not None:
        gvisor, (runc_call, runsc_call) = result.gvisor, result.calls
        row(out, "", "runc (the profile as shipped)", f"runsc (gVisor, profile {profile + RUNSC!r})")
        _row(out, opening, shipped.open, gvisor.open)
        _row(out, closing, shipped.close, gvisor.close)
        _row(out, "tools/call", runc_call, runsc_call)
        out(f"  reading: gVisor changes p50 by {change(shipped.open.p50_ms, gvisor.open.p50_ms)} for session open, "
            f"{change(shipped.close.p50_ms, gvisor.close.p50_ms)} for close and "
            f"{change(runc_call.p50_ms, runsc_call.p50_ms)} per tools/call")
    else:
        out(f"  {result.missing.get(_GVISOR, 'gVisor was not measured')}")
    out("")
    if result.networked is not None:
        networked, rule = result.networked, f"{BENCH_EGRESS.host}:{BENCH_EGRESS.port}"
        row(out, "", "no network (the profile as shipped)", f"egress allowlist [{rule}] (network + proxy)")
        _row(out, opening, shipped.open, networked.open)
        _row(out, closing, shipped.close, networked.close)
        out(f"  reading: the session's own network and egress proxy change p50 by "
            f"{change(shipped.open.p50_ms, networked.open.p50_ms)} for session open and "
            f"{change(shipped.close.p50_ms, networked.close.p50_ms)} for close")
    else:
        out(f"  {result.missing.get(_NETWORKED, 'the networked session was not measured')}")


async def run(out: Out, config: str | None, profile: Profile, tool: str, arguments: dict[str, Any], opens: int,
              calls: int) -> None:
    """Measure and report; with a user's settings file there are no twins, and the report says so."""
    if config is not None:
        sandbox_report(out, profile.name, None)
        return
    with settings_file(None, replace=twin_settings(profile)) as settings:
        async with served(settings) as service, AsyncRunnerClient(service.address) as client:
            result = await measure_sandbox(client, profile.name, tool, arguments, opens, calls)
    sandbox_report(out, profile.name, result)
