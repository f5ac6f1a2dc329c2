"""The backends section: chosen by ``--backend kubernetes``, backends taking turns, side by side; no cluster."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

import runner.bench.backends as backends
from runner.bench.backends import (
    DOCKER,
    KUBERNETES,
    NEEDS_CLUSTER,
    BackendFigures,
    Lifecycle,
    backends_report,
    measure,
    progress,
    session_images,
    session_round,
)
from runner.bench.common import Figures
from runner.bench.options import DEFAULT_SECTIONS, BenchOptions, options_from
from runner.cli import build_parser
from runner.config import EgressRule, Limits, NetworkPolicy, Profile
from runner.errors import Unavailable

PROFILE = Profile(name="time", image="python-servers", command=("mcp-server-time",), limits=Limits(cpus=1.0))


def _options(*argv: str) -> BenchOptions:
    return options_from(build_parser().parse_args(["bench", *argv]))


def _refused(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


# --------------------------------------------------------------------------------------------- options


def test_without_kubernetes_the_section_runs_only_when_named() -> None:
    assert _options().sections == DEFAULT_SECTIONS
    assert "backends" not in DEFAULT_SECTIONS
    assert _options("--backend", "docker").sections == DEFAULT_SECTIONS
    assert _options("--sections", "backends") == BenchOptions(sections=("backends",), backend="docker")


def test_backend_kubernetes_adds_the_section_after_the_others() -> None:
    assert _options("--backend", "kubernetes").sections == (*DEFAULT_SECTIONS, "backends")
    assert _options("--backend", "kubernetes", "--sections", "backends").sections == ("backends",)
    options = _options("--sections", "backends,open", "--backend", "kubernetes", "--opens", "4")
    assert options == BenchOptions(sections=("open", "backends"), backend="kubernetes", opens=4)


def test_an_unknown_backend_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["bench", "--backend", "nomad"])
    assert exited.value.code == 2
    assert "invalid choice: 'nomad'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- rounds


def _recording(name: str, order: list[str], seconds: tuple[float, float, float]) -> backends.Round:
    async def one() -> tuple[float, float, float]:
        order.append(name)
        return seconds

    return one


def test_backends_take_turns_in_rotating_order_after_an_untimed_first_round() -> None:
    order: list[str] = []
    rounds = {DOCKER: _recording(DOCKER, order, (1.0, 0.001, 0.1)),
              KUBERNETES: _recording(KUBERNETES, order, (2.0, 0.002, 0.3))}
    measured, missing = asyncio.run(measure(rounds, 3))
    warm_up, timed = order[:2], order[2:]
    assert warm_up == [DOCKER, KUBERNETES]
    assert timed == [DOCKER, KUBERNETES, KUBERNETES, DOCKER, DOCKER, KUBERNETES]
    assert missing == {}
    assert measured[DOCKER] == Lifecycle(Figures(3, 1000.0, 1000.0), Figures(3, 1.0, 1.0), Figures(3, 100.0, 100.0))
    assert measured[KUBERNETES].open == Figures(3, 2000.0, 2000.0)
    assert measured[KUBERNETES].close == Figures(3, 300.0, 300.0)


def test_a_kubernetes_failure_drops_its_column_with_why_and_docker_goes_on() -> None:
    order: list[str] = []
    calls = 0

    async def unschedulable() -> tuple[float, float, float]:
        nonlocal calls
        calls += 1
        if calls == 3:  # the warm-up and round 1 pass, round 2 fails
            raise _refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "the cluster cannot place its pod: Insufficient cpu")
        return 2.0, 0.002, 0.3

    rounds = {DOCKER: _recording(DOCKER, order, (1.0, 0.001, 0.1)), KUBERNETES: unschedulable}
    measured, missing = asyncio.run(measure(rounds, 4))
    assert set(measured) == {DOCKER} and measured[DOCKER].open.samples == 4
    assert missing == {KUBERNETES: "kubernetes failed in round 2 of 4: RESOURCE_EXHAUSTED: the cluster cannot "
                                   "place its pod: Insufficient cpu"}


def test_a_docker_failure_is_the_runs() -> None:
    async def refused() -> tuple[float, float, float]:
        raise _refused(grpc.StatusCode.FAILED_PRECONDITION, "image not found")

    with pytest.raises(grpc.aio.AioRpcError):
        asyncio.run(measure({DOCKER: refused, KUBERNETES: _recording(KUBERNETES, [], (1.0, 1.0, 1.0))}, 2))


class _Client:
    """Answers open, call and close, and remembers them; ``fail_call`` makes the call raise."""

    def __init__(self, fail_call: bool = False) -> None:
        self.seen: list[str] = []
        self.fail_call = fail_call

    async def open_session(self, profile: str) -> Any:
        self.seen.append(f"open {profile}")
        return SimpleNamespace(session_id="s1")

    async def call_tool(self, session_id: str, tool: str, arguments: dict[str, Any]) -> None:
        self.seen.append(f"call {session_id} {tool}")
        if self.fail_call:
            raise _refused(grpc.StatusCode.DEADLINE_EXCEEDED, "too slow")

    async def close_session(self, session_id: str) -> None:
        self.seen.append(f"close {session_id}")


def test_a_round_opens_calls_once_and_closes_even_when_the_call_fails() -> None:
    client = _Client()
    seconds: tuple[float, ...] = asyncio.run(
        session_round(client, "time", "get_current_time", {})())  # type: ignore[arg-type]
    assert client.seen == ["open time", "call s1 get_current_time", "close s1"]
    assert len(seconds) == 3 and all(s >= 0 for s in seconds)
    failing = _Client(fail_call=True)
    with pytest.raises(grpc.aio.AioRpcError):
        asyncio.run(session_round(failing, "time", "get_current_time", {})())  # type: ignore[arg-type]
    assert failing.seen[-1] == "close s1"


# --------------------------------------------------------------------------------------------- images


def test_only_the_images_a_session_runs_are_loaded_into_the_cluster() -> None:
    assert session_images(PROFILE) == ("python-servers",)
    networked = dataclasses.replace(PROFILE, image="node-servers",
                                    network=NetworkPolicy(egress=(EgressRule("bench.invalid", 443),)))
    assert session_images(networked) == ("node-servers", "egress")
    assert session_images(dataclasses.replace(PROFILE, image="registry.example/own:1")) == ()


def test_the_transfer_prints_its_steps_not_the_builds_output() -> None:
    lines: list[str] = []
    log = progress(lines.append)
    for line in ("building mcp-runner/python-servers:abc (missing)", "  [docker] Step 1/18 : ARG ROOTFS",
                 "  [ctr] unpacking docker.io/mcp-runner/python-servers:abc", "loaded mcp-runner/python-servers:abc"):
        log(line)
    assert lines == ["  images: building mcp-runner/python-servers:abc (missing)",
                     "  images: loaded mcp-runner/python-servers:abc"]


# --------------------------------------------------------------------------------------------- report


def _lifecycle(open_ms: float, call_ms: float, close_ms: float) -> Lifecycle:
    return Lifecycle(Figures(10, open_ms, open_ms * 1.5), Figures(10, call_ms, call_ms * 2),
                     Figures(10, close_ms, close_ms))


def test_the_report_puts_kubernetes_beside_docker_with_the_ratio_and_the_caveat() -> None:
    lines: list[str] = []
    result = BackendFigures(_lifecycle(1000.0, 2.0, 100.0), _lifecycle(2500.0, 3.0, 50.0))
    backends_report(lines.append, PROFILE, "get_current_time", result, "mcp-runner")
    text = "\n".join(lines)
    heading, opened, called, closed = lines[1:5]
    assert "docker (containers)" in heading and "kubernetes (pods, namespace mcp-runner)" in heading
    assert heading.index("kubernetes/docker") == opened.index("p50 2.50x")
    assert opened.startswith("session open (start+initialize+tools/list)")
    assert "p50   1000.0 ms" in opened and "p50   2500.0 ms" in opened and "p95 2.50x" in opened
    assert called.startswith("tools/call (get_current_time)") and "p50 1.50x" in called
    assert closed.startswith("session close") and "p50 0.50x" in closed
    assert "changes p50 by +1500.0 ms (+150 %) for session open" in text
    assert "+1.0 ms (+50 %) per tools/call" in text and "-50.0 ms (-50 %) for close" in text
    assert "caveat: the cluster is one node on this VM" in lines[-1]
    assert "CPU request equals its limit (1 CPU here" in lines[-1] and "not enforced" in lines[-1]
    assert "close ends when the API server accepts its deletion" in lines[-1]


def test_without_the_cluster_docker_still_prints_and_the_report_says_how_to_bring_it_up() -> None:
    lines: list[str] = []
    why = "the cluster is not usable (API server unreachable); bring it up with `make kubernetes`"
    backends_report(lines.append, PROFILE, "get_current_time", BackendFigures(_lifecycle(1000, 2, 100), None, why),
                    "mcp-runner")
    assert "p50   1000.0 ms" in lines[2] and lines[2].endswith("(not measured)")
    assert f"  kubernetes not measured: {why}" in lines
    assert "caveat" in lines[-1]


def test_named_without_kubernetes_it_says_what_it_needs_and_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_service(*args: object, **kwargs: object) -> None:
        raise AssertionError("no service may start")

    monkeypatch.setattr(backends, "served", no_service)
    lines: list[str] = []
    asyncio.run(backends.run(lines.append, None, PROFILE, "get_current_time", {}, 3, "docker"))
    assert lines[-1] == f"  {NEEDS_CLUSTER}"
    assert "--backend kubernetes" in NEEDS_CLUSTER and "make kubernetes" in NEEDS_CLUSTER


def test_an_unreachable_cluster_leaves_only_the_docker_service(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv("MCP_RUNNER_KUBECONFIG", str(tmp_path / "absent.yaml"))
    started: list[str | None] = []

    async def unreachable(out: object, config: object, images: object) -> None:
        raise Unavailable("checking the Kubernetes API server: Kubernetes API server unreachable")

    @contextlib.asynccontextmanager
    async def served(config: str | None, *, backend: str | None = None) -> AsyncIterator[SimpleNamespace]:
        started.append(backend)
        yield SimpleNamespace(address="127.0.0.1:1")

    class Client(_Client):
        def __init__(self, address: str) -> None:
            super().__init__()

        async def __aenter__(self) -> Client:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(backends, "prepare_cluster", unreachable)
    monkeypatch.setattr(backends, "served", served)
    monkeypatch.setattr(backends, "AsyncRunnerClient", Client)
    lines: list[str] = []
    asyncio.run(backends.run(lines.append, None, PROFILE, "get_current_time", {}, 2, "kubernetes"))
    assert started == ["docker"]
    assert lines[2].startswith("session open") and "(n=2)" in lines[2] and lines[2].endswith("(not measured)")
    assert ("  kubernetes not measured: the cluster is not usable (checking the Kubernetes API server: "
            "Kubernetes API server unreachable); bring it up with `make kubernetes`") in lines
