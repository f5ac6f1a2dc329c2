"""Waiting for a session's pod to run: a node full for the moment gets a grace, one that stays full does not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from runner.config import KubernetesConfig
from runner.sandbox import kubernetes as kube_backend
from runner.sandbox.kube_status import Unschedulable
from runner.sandbox.kubernetes import KubernetesBackend
from tests.unit.test_kube_status import container, pod

FULL = pod({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                "message": "0/1 nodes are available: 1 Insufficient cpu."}]})
RUNNING = pod({"phase": "Running", **container({"running": {}}, "sha256:ab")})


class ReadPods(KubernetesBackend):
    """The backend with its API reads answered from a list of pods, the last one repeated."""

    def __init__(self, reads: list[Any]) -> None:
        super().__init__(KubernetesConfig())
        self.reads = reads
        self.asked = 0

    async def _run(self, action: str, fn: Callable[..., Any]) -> Any:
        self.asked += 1
        return self.reads[min(self.asked, len(self.reads)) - 1]


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_backend, "POLL_FIRST_S", 0.001)
    monkeypatch.setattr(kube_backend, "POLL_MAX_S", 0.001)
    monkeypatch.setattr(kube_backend, "UNSCHEDULABLE_GRACE_S", 0.05)


async def test_a_pod_placed_once_the_node_has_room_starts() -> None:
    backend = ReadPods([FULL, FULL, RUNNING])
    try:
        assert await backend._wait_running("p", "the sandbox", "i") is RUNNING
    finally:
        backend.close()


async def test_a_pod_no_node_takes_within_the_grace_is_resource_exhausted_naming_why() -> None:
    backend = ReadPods([FULL])
    try:
        with pytest.raises(Unschedulable, match="Insufficient cpu"):
            await backend._wait_running("p", "the sandbox", "i")
        assert backend.asked > 2  # asked again during the grace, not failed at the first answer
    finally:
        backend.close()
