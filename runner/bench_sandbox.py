"""The sandbox options' share of ``mcp-runner bench``: gVisor against runc, a networked session against none.

Both are switches in a profile (``runtime: runsc``, ``network.egress``), so what an
operator needs to know is what each adds to the profile they would otherwise run.
The bench therefore generates twins of the measured profile that differ from it in
exactly one respect (``variants``; ``profile_document`` spells every other field out
so nothing else drifts) and measures them through the same service as the main
figures. The variants alternate each round, in rotating order, so drift in the
machine's load and any order effect (the previous close still being cleaned up by
Docker) fall on every column alike.

The egress twin's one rule, ``bench.invalid:443``, is never used: the time server
makes no requests, ``.invalid`` is a reserved name that never resolves, and the proxy
resolves names only when a request asks. What it measures is the price of the
session's own internal network plus its proxy container; no traffic leaves the host.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from runner.config import EgressRule, NetworkPolicy, Profile, SecretSource

if TYPE_CHECKING:
    from runner.bench import Figures
    from runner.client import AsyncRunnerClient

T = TypeVar("T")

UNGUARDED, RUNSC, EGRESS = "-unguarded", "-runsc", "-egress"
"""Suffixes of the generated twins' profile names."""
BENCH_EGRESS = EgressRule(host="bench.invalid", port=443)
"""Never contacted (see the module docstring); it exists so the session gets a network and a proxy."""
_SHIPPED, _GVISOR, _NETWORKED = "shipped", "gvisor", "networked"
_LABEL, _BASELINE = 44, 46
"""Column widths of the bench's tables."""


def variants(profile: Profile) -> dict[str, Profile]:
    """The twins the bench compares ``profile`` with, by name; each differs from it in one respect only."""
    twins: dict[str, dict[str, Any]] = {
        UNGUARDED: {"sanitize": dataclasses.replace(profile.sanitize, enabled=False)},
        RUNSC: {"runtime": "runsc"},
        EGRESS: {"network": NetworkPolicy(egress=(BENCH_EGRESS,))},
    }
    return {
        profile.name + suffix: dataclasses.replace(profile, name=profile.name + suffix, **change)
        for suffix, change in twins.items()
    }


def _source(source: SecretSource) -> dict[str, str]:
    return {"env": source.env} if source.env else {"file": source.file or ""}


def profile_document(profile: Profile) -> dict[str, Any]:
    """A loaded profile in settings-file form, every field spelled out, so it loads back as the same profile.

    Paths are already absolute in a loaded profile, so the document may live in any directory.
    """
    limits = profile.limits
    document: dict[str, Any] = {
        "image": profile.image,
        "runtime": profile.runtime,
        "description": profile.description,
        "env": dict(profile.env),
        "mounts": [{"source": mount.source, "target": mount.target} for mount in profile.mounts],
        "limits": {
            "memory": limits.memory_bytes,
            "cpus": limits.cpus,
            "pids": limits.pids,
            "tmpfs": limits.tmpfs_bytes,
            "call_timeout_s": limits.call_timeout_s,
            "idle_timeout_s": limits.idle_timeout_s,
            "max_lifetime_s": limits.max_lifetime_s,
        },
        "secrets": {name: _source(source) for name, source in profile.secrets.items()},
        "sanitize": {
            "enabled": profile.sanitize.enabled,
            "redact": sorted(profile.sanitize.redact),
            "injection": profile.sanitize.injection_action,
        },
        "pins": dict(profile.pins),
    }
    if profile.command:
        document["command"] = list(profile.command)
    if profile.remote_url:
        document["remote"] = {"url": profile.remote_url}
    if profile.network is not None:
        rules = [
            {
                "host": rule.host,
                "port": rule.port,
                "private": rule.private,
                "headers": {c.header: {**_source(c.source), "template": c.template} for c in rule.credentials},
            }
            for rule in profile.network.egress
        ]
        document["network"] = {"egress": rules, "upstream": profile.network.upstream}
    return document


def variants_settings(profile: Profile) -> dict[str, Any]:
    """A settings document adding ``profile``'s twins (next to the built-in profiles, which stay on)."""
    return {"profiles": {name: profile_document(twin) for name, twin in variants(profile).items()}}


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
    from runner.bench import figures  # here, not at the top: runner.bench imports this module

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


def _row(out: Callable[[str], None], label: str, baseline: Figures, other: Figures) -> None:
    out(f"{label:{_LABEL}} {baseline.cell():{_BASELINE}} {other.cell()}")


def sandbox_report(out: Callable[[str], None], profile: str, result: SandboxFigures | None) -> None:
    """Print both comparisons with a reading each; a variant that could not run is reported, not fatal."""
    out(f"\nsandbox runtime and network: profile {profile!r} against its generated twins, same service, "
        "variants alternated each round")
    if result is None:
        out("  (only without --config: the twins are generated next to the built-in profiles)")
        return
    shipped = result.shipped
    opening, closing = "session open (start+initialize+tools/list)", "session close"
    if result.gvisor is not None and result.calls is not None:
        gvisor, (runc_call, runsc_call) = result.gvisor, result.calls
        out(f"{'':{_LABEL}} {'runc (the profile as shipped)':{_BASELINE}} runsc (gVisor, profile {profile + RUNSC!r})")
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
        out(f"{'':{_LABEL}} {'no network (the profile as shipped)':{_BASELINE}} "
            f"egress allowlist [{rule}] (network + proxy)")
        _row(out, opening, shipped.open, networked.open)
        _row(out, closing, shipped.close, networked.close)
        out(f"  reading: the session's own network and egress proxy change p50 by "
            f"{change(shipped.open.p50_ms, networked.open.p50_ms)} for session open and "
            f"{change(shipped.close.p50_ms, networked.close.p50_ms)} for close")
    else:
        out(f"  {result.missing.get(_NETWORKED, 'the networked session was not measured')}")
