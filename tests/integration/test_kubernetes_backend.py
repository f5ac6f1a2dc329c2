"""KubernetesBackend driven directly on the project's test cluster (`make kubernetes`), no service around it.

Each test uses its own instance name; a fixture removes whatever the instance left. Under CI=true a missing
cluster fails the tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as kube

from runner.channel import agent_env
from runner.config import KubernetesConfig, Limits
from runner.egress.rules import Rule
from runner.errors import FailedPrecondition, ResourceExhausted
from runner.sandbox.base import INSTANCE_LABEL, SandboxNetwork, SandboxSpec
from runner.sandbox.kube_objects import OWNER_ANNOTATION, object_name
from runner.sandbox.kube_status import DELETED_OUTSIDE
from runner.sandbox.kubernetes import KubernetesBackend
from tests.kubernetes_cluster import (
    KUBECONFIG,
    NAMESPACE,
    core_api,
    instance_on_cluster,
)

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes]

TIME_SERVER = ("mcp-server-time", "--local-timezone", "UTC")
OWNER = '{"owner": "kube-backend-test"}'
LIMITS = Limits(cpus=0.1, memory_bytes=256 * 1024**2)
"""Small: the test node has two cores, and CPU requests equal limits, so default sessions (1 CPU) fill it."""


@pytest.fixture
def instance() -> Iterator[str]:
    yield from instance_on_cluster("kt")


def backend(**config: Any) -> KubernetesBackend:
    return KubernetesBackend(KubernetesConfig(kubeconfig=KUBECONFIG, namespace=NAMESPACE, **config), owner=OWNER)


def spec(instance: str, **fields: Any) -> SandboxSpec:
    base: dict[str, Any] = {
        "session_id": secrets.token_hex(8), "instance": instance, "image": "python-servers", "command": TIME_SERVER,
        "env": {**agent_env(4 * 1024**2), "MCP_AGENT_INIT_TIMEOUT": "30", "SOME_SECRET": "hunter2-value"},
        "labels": {"mcp-runner.profile": "time"}, "lifetime_s": 600.0, "limits": LIMITS,
    }
    return SandboxSpec(**{**base, **fields})


def left_over(instance: str) -> list[str]:
    """Every object of the instance still there (pods being deleted count as gone)."""
    selector = f"{INSTANCE_LABEL}={instance}"
    core = core_api()
    pods = core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
    found = [f"pod/{p.metadata.name}" for p in pods if p.metadata.deletion_timestamp is None]
    secrets_left = core.list_namespaced_secret(NAMESPACE, label_selector=selector).items
    found += [f"secret/{s.metadata.name}" for s in secrets_left]
    policies = kube.NetworkingV1Api(core.api_client).list_namespaced_network_policy(NAMESPACE, label_selector=selector)
    return found + [f"networkpolicy/{p.metadata.name}" for p in policies.items]


def policies(instance: str) -> list[Any]:
    core = core_api()
    listed = kube.NetworkingV1Api(core.api_client).list_namespaced_network_policy(
        NAMESPACE, label_selector=f"{INSTANCE_LABEL}={instance}")
    return list(listed.items)


async def first_line(handle: Any) -> bytes:
    data = b""
    async with asyncio.timeout(60):
        while b"\n" not in data:
            chunk = await handle.read_stdout()
            assert chunk, f"stdout ended before a line; stderr: {handle.stderr_tail()}"
            data += chunk
    return data.split(b"\n", 1)[0]


async def test_a_session_pod_runs_the_agent_hardened_and_leaves_nothing(instance: str) -> None:
    kube_backend = backend()
    session = spec(instance)
    handle = await kube_backend.start(session)
    try:
        assert b'"type":"ready"' in await first_line(handle)
        assert handle.image_id.startswith("sha256:")
        pod = core_api().read_namespaced_pod(object_name(session), NAMESPACE)
        container = pod.spec.containers[0]
        assert pod.spec.security_context.run_as_user == 10001 and pod.spec.security_context.run_as_non_root
        assert pod.spec.security_context.seccomp_profile.type == "RuntimeDefault"
        assert container.security_context.read_only_root_filesystem
        assert container.security_context.capabilities.drop == ["ALL"]
        assert not pod.spec.automount_service_account_token and not pod.spec.enable_service_links
        assert container.resources.limits == container.resources.requests
        assert pod.spec.active_deadline_seconds is not None
        assert "hunter2-value" not in str(pod.spec)  # the env travels in the session's Secret
        assert pod.metadata.annotations[OWNER_ANNOTATION] == OWNER
        [deny_all] = policies(instance)
        assert deny_all.spec.policy_types == ["Ingress", "Egress"]
        assert not deny_all.spec.ingress and not deny_all.spec.egress
    finally:
        await handle.destroy()
        await kube_backend.settle()
        kube_backend.close()
    assert left_over(instance) == []


async def test_over_its_memory_the_sandbox_is_oom_killed(instance: str) -> None:
    kube_backend = backend()
    hog = ("/opt/agent/bin/python", "-c", "b = bytearray(1024**3); import time; time.sleep(60)")
    handle = await kube_backend.start(spec(instance, command=hog, limits=Limits(cpus=0.1, memory_bytes=128 * 1024**2)))
    try:
        async with asyncio.timeout(60):
            while await handle.read_stdout():
                pass
        ending = await handle.wait_exit(30)
        assert ending.oom_killed, ending
    finally:
        await handle.destroy()
        await kube_backend.settle()
        kube_backend.close()


async def test_an_unschedulable_pod_is_resource_exhausted_and_nothing_is_left(instance: str) -> None:
    kube_backend = backend()
    with pytest.raises(ResourceExhausted, match="Insufficient memory"):
        await kube_backend.start(spec(instance, limits=Limits(cpus=0.1, memory_bytes=10000 * 1024**3)))
    await kube_backend.settle()
    kube_backend.close()
    assert left_over(instance) == []


async def test_a_missing_runtime_class_is_a_failed_precondition(instance: str) -> None:
    kube_backend = backend(runtime_classes={"runsc": "mcp-runner-absent"})
    with pytest.raises(FailedPrecondition, match="RuntimeClass 'mcp-runner-absent'"):
        await kube_backend.start(spec(instance, runtime="runsc"))
    await kube_backend.settle()
    kube_backend.close()
    assert left_over(instance) == []


async def test_a_pod_deleted_from_outside_ends_with_that_reason(instance: str) -> None:
    kube_backend = backend()
    session = spec(instance)
    handle = await kube_backend.start(session)
    try:
        await first_line(handle)
        core_api().delete_namespaced_pod(object_name(session), NAMESPACE, grace_period_seconds=1)
        async with asyncio.timeout(60):
            while await handle.read_stdout():
                pass
        assert (await handle.wait_exit(10)).reason == DELETED_OUTSIDE
    finally:
        await handle.destroy()
        await kube_backend.settle()
        kube_backend.close()


async def test_the_sweep_removes_an_abandoned_owner_s_objects_only(instance: str) -> None:
    crashed = backend()
    handle = await crashed.start(spec(instance))  # never destroyed: its service "died"
    crashed.close()
    kept = KubernetesBackend(KubernetesConfig(kubeconfig=KUBECONFIG, namespace=NAMESPACE), owner='{"owner": "alive"}')
    alive = await kept.start(spec(instance))
    sweeper = KubernetesBackend(KubernetesConfig(kubeconfig=KUBECONFIG, namespace=NAMESPACE),
                                abandoned=lambda owner: owner == OWNER)
    try:
        assert await sweeper.sweep_orphans(instance) == 1
        assert left_over(instance) == [f"pod/{alive.id}", f"secret/{alive.id}", f"networkpolicy/{alive.id}"]
        assert handle.id != alive.id
    finally:
        await alive.destroy()
        await kept.settle()
        kept.close()
        sweeper.close()


async def test_a_networked_session_gets_its_proxy_pod_and_policies(instance: str) -> None:
    kube_backend = backend()
    session = spec(instance, network=SandboxNetwork(rules=(Rule(host="example.org", port=443),), upstream=""))
    handle = await kube_backend.start(session)
    try:
        assert b'"type":"ready"' in await first_line(handle)
        proxy = core_api().read_namespaced_pod(object_name(session, "-egress"), NAMESPACE)
        env = {e.name: e.value for e in core_api().read_namespaced_pod(handle.id, NAMESPACE).spec.containers[0].env}
        assert env["HTTPS_PROXY"] == f"http://{proxy.status.pod_ip}:3128"
        by_name = {p.metadata.name: p.spec for p in policies(instance)}
        to_sandbox = by_name[object_name(session, "-sandbox")]
        assert to_sandbox.ingress is None or to_sandbox.ingress == []
        assert to_sandbox.egress[0].to[0].pod_selector.match_labels["mcp-runner.role"] == "egress-proxy"
        from_proxy = by_name[object_name(session, "-egress")]
        assert "10.0.0.0/8" in from_proxy.egress[0].to[0].ip_block.var_except
    finally:
        await handle.destroy()
        await kube_backend.settle()
        kube_backend.close()
    assert left_over(instance) == []
