"""The bench's generated twins load back as the measured profile plus one change; its readings come from the figures."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import cast

import grpc
import yaml

from runner.bench.common import change, figures, rotated
from runner.bench.sandbox import Lifecycle, SandboxFigures, measure_sandbox, sandbox_report, unavailable
from runner.bench.twins import (
    BENCH_EGRESS,
    EGRESS,
    RUNSC,
    UNGUARDED,
    profile_document,
    twin_settings,
    variants,
    variants_settings,
)
from runner.client import AsyncRunnerClient
from runner.config import (
    Credential,
    EgressRule,
    Limits,
    Mount,
    NetworkPolicy,
    Profile,
    SecretSource,
)
from runner.guard.sanitize import SanitizeConfig
from runner.settings_file import load_settings


def _load(tmp_path: Path, document: dict[str, object]) -> dict[str, Profile]:
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return dict(load_settings(path).profiles)


def _rich(tmp_path: Path) -> Profile:
    """A profile using every field a settings file can set, with non-default values."""
    return Profile(
        name="rich",
        image="node-servers",
        command=("mcp-server-filesystem", "/data"),
        env=MappingProxyType({"A": "1", "B": "two words"}),
        mounts=(Mount(str(tmp_path / "data"), "/data"),),
        limits=Limits(memory_bytes=256 * 1024**2, cpus=0.5, pids=64, tmpfs_bytes=16 * 1024**2,
                      call_timeout_s=5.0, idle_timeout_s=30.0, max_lifetime_s=120.0),
        description="every field",
        secrets=MappingProxyType({"TOKEN": SecretSource(env="BENCH_TOKEN"),
                                  "KEY": SecretSource(file=str(tmp_path / "key"))}),
        sanitize=SanitizeConfig(enabled=True, redact=frozenset({"email", "ip_address"}), injection_action="block"),
        pins=MappingProxyType({"read_file": "sha256:" + "ab" * 32}),
        network=NetworkPolicy(
            egress=(EgressRule("api.example.com", 80, credentials=(
                Credential("Authorization", SecretSource(env="API_TOKEN"), "Bearer {}"),)),
                EgressRule("*.internal.example", 8443, private=True)),
        ),
        runtime="runsc",
    )


def test_profile_document_loads_back_as_the_same_profile(tmp_path: Path) -> None:
    rich = _rich(tmp_path)
    remote = Profile(
        name="remote", image="python-servers", command=(), remote_url="http://api.example.com/mcp",
        network=NetworkPolicy(egress=(EgressRule("api.example.com", 80),), upstream="my-upstream"),
    )
    loaded = _load(tmp_path, {"builtin_profiles": False,
                              "profiles": {p.name: profile_document(p) for p in (rich, remote)}})
    assert loaded == {"rich": rich, "remote": remote}


def test_each_twin_is_the_builtin_profile_plus_one_change(tmp_path: Path) -> None:
    time_profile = load_settings(None).profiles["time"]
    loaded = _load(tmp_path, variants_settings(time_profile))
    assert loaded["time"] == time_profile  # the built-ins stay on
    unguarded = dataclasses.replace(time_profile.sanitize, enabled=False)
    expected = {
        UNGUARDED: dataclasses.replace(time_profile, sanitize=unguarded),
        RUNSC: dataclasses.replace(time_profile, runtime="runsc"),
        EGRESS: dataclasses.replace(time_profile, network=NetworkPolicy(egress=(BENCH_EGRESS,))),
    }
    for suffix, twin in expected.items():
        assert loaded["time" + suffix] == dataclasses.replace(twin, name="time" + suffix)


def test_twins_copy_mounts_and_limits(tmp_path: Path) -> None:
    rich = _rich(tmp_path)
    twins = variants(rich)
    loaded = _load(tmp_path, variants_settings(rich))
    for name, twin in twins.items():
        assert loaded[name] == twin
        assert (twin.mounts, twin.limits, twin.env, twin.image, twin.command) == (
            rich.mounts, rich.limits, rich.env, rich.image, rich.command)


def test_the_twins_service_has_no_warm_pool_so_every_open_is_cold(tmp_path: Path) -> None:
    time_profile = load_settings(None).profiles["time"]
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(twin_settings(time_profile)), encoding="utf-8")
    settings = load_settings(path)
    assert dict(settings.pool) == {}
    assert {"time", "time" + UNGUARDED, "time" + RUNSC, "time" + EGRESS} <= set(settings.profiles)


def test_the_bench_egress_rule_can_never_resolve() -> None:
    assert BENCH_EGRESS.host.endswith(".invalid")


def test_rotated_starts_each_round_at_the_next_variant() -> None:
    assert [rotated("abc", r) for r in range(4)] == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert rotated([], 3) == []


def test_change_is_signed_in_ms_and_percent() -> None:
    assert change(100.0, 150.0) == "+50.0 ms (+50 %)"
    assert change(200.0, 190.0) == "-10.0 ms (-5 %)"
    assert change(0.0, 1.0) == "+1.0 ms (n/a)"


def test_a_missing_runtime_says_gvisor_is_not_available() -> None:
    details = "opening: the Docker engine has no such runtime (unknown or invalid runtime name: runsc)"
    reason = unavailable("gvisor", "time-runsc", grpc.StatusCode.FAILED_PRECONDITION, details)
    assert reason.startswith("gVisor is not available") and "unknown or invalid runtime name" in reason
    other = unavailable("gvisor", "time-runsc", grpc.StatusCode.UNAVAILABLE, "engine unreachable")
    assert "could not be measured" in other and "UNAVAILABLE" in other and "time-runsc" in other
    network = unavailable("networked", "time-egress", grpc.StatusCode.FAILED_PRECONDITION, "no such runtime")
    assert network.startswith("the networked session could not be measured")


def _lifecycle(open_ms: float, close_ms: float) -> Lifecycle:
    return Lifecycle(figures([open_ms / 1000] * 3), figures([close_ms / 1000] * 3))


def test_report_readings_come_from_the_figures() -> None:
    lines: list[str] = []
    result = SandboxFigures(
        shipped=_lifecycle(1000, 200),
        gvisor=_lifecycle(1500, 300),
        calls=(figures([0.004] * 3), figures([0.005] * 3)),
        networked=_lifecycle(1250, 400),
        missing={},
    )
    sandbox_report(lines.append, "time", result)
    text = "\n".join(lines)
    assert ("gVisor changes p50 by +500.0 ms (+50 %) for session open, +100.0 ms (+50 %) for close and "
            "+1.0 ms (+25 %) per tools/call") in text
    assert "network and egress proxy change p50 by +250.0 ms (+25 %) for session open and +200.0 ms (+100 %)" in text


def test_report_without_gvisor_still_prints_the_network_figures() -> None:
    lines: list[str] = []
    reason = "gVisor is not available on this Docker engine, so it is not measured: no such runtime"
    result = SandboxFigures(shipped=_lifecycle(1000, 200), gvisor=None, calls=None,
                            networked=_lifecycle(1100, 200), missing={"gvisor": reason})
    sandbox_report(lines.append, "time", result)
    text = "\n".join(lines)
    assert reason in text and "runsc (gVisor" not in text
    assert "+100.0 ms (+10 %) for session open" in text


def test_report_with_a_users_file_says_why_it_is_skipped() -> None:
    lines: list[str] = []
    sandbox_report(lines.append, "time", None)
    assert "only without --config" in lines[-1]


class _FakeClient:
    """Opens any profile; without ``runsc`` the gVisor twin fails as it does on an engine without that runtime."""

    def __init__(self, runsc: bool) -> None:
        self.runsc = runsc
        self.open: set[str] = set()
        self.opened: list[str] = []
        self.calls: list[str] = []
        self._next = 0

    async def open_session(self, profile: str) -> SimpleNamespace:
        self.opened.append(profile)
        if profile.endswith(RUNSC) and not self.runsc:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.FAILED_PRECONDITION, grpc.aio.Metadata(), grpc.aio.Metadata(),
                "starting the sandbox: the Docker engine has no such runtime (unknown or invalid runtime name: runsc)",
                None,
            )
        self._next += 1
        session_id = f"{profile}#{self._next}"
        self.open.add(session_id)
        return SimpleNamespace(session_id=session_id)

    async def close_session(self, session_id: str) -> None:
        self.open.remove(session_id)

    async def call_tool(self, session_id: str, tool: str, arguments: dict[str, object]) -> None:
        self.calls.append(session_id)


def test_without_runsc_the_bench_measures_the_network_and_says_why() -> None:
    client = _FakeClient(runsc=False)
    result = asyncio.run(measure_sandbox(cast(AsyncRunnerClient, client), "time", "get_current_time", {}, 3, 5))
    assert result.gvisor is None and result.calls is None and not client.calls
    assert result.networked is not None and result.networked.open.samples == 3
    assert result.shipped.open.samples == 3
    assert "gVisor is not available" in result.missing["gvisor"] and "runsc" in result.missing["gvisor"]
    assert not client.open  # every session it opened was closed
    lines: list[str] = []
    sandbox_report(lines.append, "time", result)
    assert any(line.strip().startswith("gVisor is not available") for line in lines)
    assert any("egress allowlist" in line for line in lines)


def test_variants_alternate_each_round_in_rotating_order() -> None:
    client = _FakeClient(runsc=True)
    result = asyncio.run(measure_sandbox(cast(AsyncRunnerClient, client), "time", "get_current_time", {}, 2, 3))
    assert not result.missing and not client.open
    assert result.calls is not None and result.calls[0].samples == result.calls[1].samples == 3
    # Warm-up of each, two rounds of opens, then the two call sessions.
    assert client.opened == ["time", "time-runsc", "time-egress", "time", "time-runsc", "time-egress",
                             "time-runsc", "time-egress", "time", "time", "time-runsc"]
    assert [call.split("#")[0] for call in client.calls] == ["time", "time-runsc", "time-runsc", "time", "time",
                                                               "time-runsc"]
