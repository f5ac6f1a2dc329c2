"""The Kubernetes backend on the test cluster (`make kubernetes`) when starts are given up and sandboxes misbehave.

Each test uses its own instance (``kh-…``); a fixture removes whatever the instance left. Under CI=true a
missing cluster fails the tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator

import pytest

from runner.config import KubernetesConfig
from runner.egress.rules import Rule
from runner.errors import RunnerError
from runner.sandbox.base import SandboxNetwork
from runner.sandbox.kubernetes import KubernetesBackend
from tests.integration.test_kubernetes_backend import OWNER, first_line, left_over, spec
from tests.kubernetes_cluster import KUBECONFIG, NAMESPACE, instance_on_cluster

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes]


@pytest.fixture
def instance() -> Iterator[str]:
    yield from instance_on_cluster("kh")
    # The cancelled starts leave cycles (tracebacks through frames); collected later, inside pytest's own
    # ast.parse, they trip CPython 3.11.7's "AST constructor recursion depth mismatch" SystemError.
    gc.collect()


def backend() -> KubernetesBackend:
    return KubernetesBackend(KubernetesConfig(kubeconfig=KUBECONFIG, namespace=NAMESPACE), owner=OWNER)


@pytest.mark.parametrize("networked", [False, True])
async def test_a_start_cancelled_at_any_point_leaves_nothing_behind(instance: str, networked: bool) -> None:
    """Cancelled while its objects are made, while it polls, while it attaches, after the gate: after settle(),
    no pod, Secret or policy of the instance is left (a start that finished first is destroyed instead)."""
    kube_backend = backend()
    network = SandboxNetwork(rules=(Rule(host="example.org", port=443),), upstream="") if networked else None
    try:
        for delay in (0.0, 0.02, 0.1, 0.4, 0.8, 1.5, 3.0):
            starting = asyncio.create_task(kube_backend.start(spec(instance, network=network)))
            await asyncio.sleep(delay)
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                handle = await starting
                await handle.destroy()  # it had started: a handle's owner destroys it
            async with asyncio.timeout(60):
                await kube_backend.settle()
            assert left_over(instance) == [], f"cancelled after {delay} s"
    finally:
        await kube_backend.settle()
        kube_backend.close()


async def test_a_huge_line_in_and_a_destroy_midway_end_cleanly(instance: str) -> None:
    """More stdin than the pipe and the relays hold, its writer cancelled, then the session destroyed: the
    destroy and the clean-up finish, the writer sees a ConnectionError or finishes, nothing is left."""
    kube_backend = backend()
    try:
        handle = await kube_backend.start(spec(instance))
        assert b'"type":"ready"' in await first_line(handle)
        writing = asyncio.create_task(handle.write_stdin(b"x" * (64 * 1024**2)))  # no newline: the agent waits
        await asyncio.sleep(0.5)
        writing.cancel()
        async with asyncio.timeout(60):
            await handle.destroy()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RunnerError):
                await writing
            while await handle.read_stdout():
                pass
            await kube_backend.settle()
        assert left_over(instance) == []
    finally:
        await kube_backend.settle()
        kube_backend.close()
