"""The backends section: a session's open, one tools/call and its close on Kubernetes pods next to Docker containers.

Two services of the bench's own, one per backend, from the same settings (the user's file or none, without
warm sandboxes so every open is a cold one); only ``--backend`` differs. Each round runs one session per
backend, one at a time (the test cluster's one node has 2 CPUs and a pod's CPU request equals its limit, so
only about two sessions fit on it at once), in an order that rotates each round, so drift in the machine's load
and any order effect fall on both columns alike. One untimed round first finds out whether the cluster can run
the profile at all and warms both backends' caches. The images are loaded into the cluster before anything is
timed. Without the cluster the section says so, with the command that brings it up, and Docker's column still
prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from runner.bench.common import Figures, Out, change, figures, ratio, rotated, row
from runner.bench.service import served, settings_file
from runner.client import AsyncRunnerClient
from runner.config import KubernetesConfig, Profile
from runner.errors import RunnerError
from runner.images import IMAGE_NAMES, ImageBuildError
from runner.settings_file import load_settings

DOCKER, KUBERNETES = "docker", "kubernetes"
BRING_UP = "bring it up with `make kubernetes`"
NEEDS_CLUSTER = (f"not run: it measures Kubernetes next to Docker, so it needs `--backend kubernetes` and the "
                 f"test cluster ({BRING_UP})")
OPENING, CALLING, CLOSING = "session open (start+initialize+tools/list)", "tools/call", "session close"

CELL = len(Figures(10, 0.0, 0.0).cell())
"""Width of a figures cell, so the ratio's heading stands over the ratios."""

Round = Callable[[], Awaitable[tuple[float, float, float]]]
"""One session on one backend: opened, called once, closed; the seconds each of the three took."""


@dataclass(frozen=True)
class Lifecycle:
    """One backend's figures over the rounds."""

    open: Figures
    call: Figures
    close: Figures


@dataclass(frozen=True)
class BackendFigures:
    """Docker's figures, and Kubernetes' or why it could not be measured."""

    docker: Lifecycle
    kubernetes: Lifecycle | None
    missing: str = ""


def session_round(client: AsyncRunnerClient, profile: str, tool: str, arguments: dict[str, Any]) -> Round:
    async def one() -> tuple[float, float, float]:
        start = time.perf_counter()
        session_id = (await client.open_session(profile)).session_id
        opened = time.perf_counter()
        try:
            await client.call_tool(session_id, tool, arguments)
        finally:
            called = time.perf_counter()
            await client.close_session(session_id)
        return opened - start, called - opened, time.perf_counter() - called

    return one


async def measure(rounds: Mapping[str, Round], count: int) -> tuple[dict[str, Lifecycle], dict[str, str]]:
    """Each backend's round ``count`` times after one untimed warm-up round, backends rotating each round.

    The first backend is the baseline: its failure is the run's. Another that fails is dropped, with why: its
    figures from before the failure would be a column of fewer, earlier rounds, not comparable.
    """
    baseline = next(iter(rounds))
    live, missing = list(rounds), {}
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in rounds}
    for round_ in range(-1, count):  # -1: the warm-up
        for name in rotated(list(live), max(round_, 0)):
            try:
                seconds = await rounds[name]()
            except grpc.aio.AioRpcError as exc:
                if name == baseline:
                    raise
                when = "the untimed first round" if round_ < 0 else f"round {round_ + 1} of {count}"
                missing[name] = f"{name} failed in {when}: {exc.code().name}: {exc.details()}"
                live.remove(name)
                continue
            if round_ >= 0:
                samples[name].append(seconds)
    return {
        name: Lifecycle(*(figures([s[step] for s in samples[name]]) for step in range(3))) for name in live
    }, missing


def _row(out: Out, label: str, docker: Figures, kubernetes: Figures | None) -> None:
    if kubernetes is None:
        row(out, label, docker.cell(), "(not measured)")
        return
    row(out, label, docker.cell(), f"{kubernetes.cell()}  p50 {ratio(kubernetes.p50_ms, docker.p50_ms)}, "
                                   f"p95 {ratio(kubernetes.p95_ms, docker.p95_ms)}")


def caveat(cpus: float) -> str:
    cores = os.cpu_count() or 1
    return (f"  caveat: the cluster is one node on this VM ({cores} cores shared with Docker's containers and both "
            f"services); a pod's CPU request equals its limit ({cpus:g} CPU here, the profile's), so sessions open "
            "one at a time; NetworkPolicies are applied but not enforced (no policy-capable CNI); a pod's close "
            "ends when the API server accepts its deletion (the kubelet stops it afterwards) and reads no usage "
            "(no metrics-server), a container's once Docker removed it")


def backends_report(out: Out, profile: Profile, tool: str, result: BackendFigures | None, namespace: str) -> None:
    """Docker's column beside Kubernetes' with the ratio, a reading and the caveat; ``None``: not run."""
    out(f"\nbackends: Kubernetes pods next to Docker containers, profile {profile.name!r}, one service each, "
        "sessions one at a time, backends alternated each round")
    if result is None:
        out(f"  {NEEDS_CLUSTER}")
        return
    kube = result.kubernetes
    row(out, "", "docker (containers)", f"{f'kubernetes (pods, namespace {namespace})':{CELL}}  kubernetes/docker")
    _row(out, OPENING, result.docker.open, kube.open if kube else None)
    _row(out, f"{CALLING} ({tool})", result.docker.call, kube.call if kube else None)
    _row(out, CLOSING, result.docker.close, kube.close if kube else None)
    if kube is None:
        out(f"  kubernetes not measured: {result.missing}")
    else:
        docker = result.docker
        out(f"  reading: a pod instead of a container changes p50 by {change(docker.open.p50_ms, kube.open.p50_ms)} "
            f"for session open, {change(docker.call.p50_ms, kube.call.p50_ms)} per tools/call and "
            f"{change(docker.close.p50_ms, kube.close.p50_ms)} for close")
    out(caveat(profile.limits.cpus))


def session_images(profile: Profile) -> tuple[str, ...]:
    """The runner images a session of ``profile`` runs: its own (unless it names an image of its own, which the
    cluster must already hold) and, with a network, the egress proxy's."""
    names = (profile.image,) if profile.image in IMAGE_NAMES else ()
    return (*names, "egress") if profile.network is not None else names


def progress(out: Out) -> Out:
    """The image transfer's steps, without the build's and ``ctr``'s own output (indented, in brackets)."""
    return lambda line: None if line.startswith("  [") else out(f"  images: {line}")


async def prepare_cluster(out: Out, config: KubernetesConfig, images: tuple[str, ...]) -> None:
    """Untimed: the cluster answers, and holds ``images`` (loaded into its containerd unless a registry is set).

    Raises RunnerError or ImageBuildError saying what is missing. The Kubernetes client is imported here, only
    when the section runs, as the service does.
    """
    from runner.image_transfer import load_into_containerd
    from runner.sandbox.kubernetes import KubernetesBackend

    backend = KubernetesBackend(config)
    try:
        await backend.check()
    finally:
        backend.close()
    if config.registry is not None:
        out(f"  images: pulled from {config.registry} (pushed there by `mcp-runner images push`)")
        return
    # A thread: the transfer blocks (docker save | ctr import, seconds per image missing).
    await asyncio.to_thread(load_into_containerd, log=progress(out), names=images)


async def run(out: Out, config: str | None, profile: Profile, tool: str, arguments: dict[str, Any], count: int,
              backend: str) -> None:
    """Measure and report; without ``--backend kubernetes`` the section only says what it needs."""
    if backend != KUBERNETES:
        backends_report(out, profile, tool, None, "")
        return
    with settings_file(config, replace={"pool": {}}) as settings:
        cluster = load_settings(settings, backend=KUBERNETES).kubernetes
        missing = ""
        try:
            await prepare_cluster(out, cluster, session_images(profile))
        except (RunnerError, ImageBuildError) as exc:
            missing = f"the cluster is not usable ({exc}); {BRING_UP}"
        async with contextlib.AsyncExitStack() as stack:
            rounds: dict[str, Round] = {}
            for name in (DOCKER, KUBERNETES) if not missing else (DOCKER,):
                try:
                    service = await stack.enter_async_context(served(settings, backend=name))
                except RunnerError as exc:
                    if name == DOCKER:
                        raise
                    missing = f"its service did not start: {exc}"
                    continue
                client = await stack.enter_async_context(AsyncRunnerClient(service.address))
                rounds[name] = session_round(client, profile.name, tool, arguments)
            measured, failed = await measure(rounds, count)
    result = BackendFigures(measured[DOCKER], measured.get(KUBERNETES), missing or failed.get(KUBERNETES, ""))
    backends_report(out, profile, tool, result, cluster.namespace)
