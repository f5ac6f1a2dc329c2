"""The project's test cluster (`make kubernetes`) is what the Kubernetes backend relies on.

One Ready node without taints, the API groups the backend uses, the `kubernetes` Service that in-cluster
clients reach, the namespace with its service-account token, and a second `make kubernetes` that finds it up
instead of starting another one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.kubernetes_cluster import API_TIMEOUT_S, NAMESPACE, core_api

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes]

REPO = Path(__file__).resolve().parents[2]
API_SERVICE_IP = "10.96.0.1"  # scripts/kubernetes.sh: the first address of the service range


def resource_names(api: Any) -> set[str]:
    return {resource.name for resource in api.get_api_resources(_request_timeout=API_TIMEOUT_S).resources}


def test_the_one_node_is_ready_and_schedulable() -> None:
    nodes = core_api().list_node(_request_timeout=API_TIMEOUT_S).items
    assert len(nodes) == 1
    node = nodes[0]
    ready = [c.status for c in node.status.conditions if c.type == "Ready"]
    assert ready == ["True"]
    assert not node.spec.taints
    assert node.status.node_info.kubelet_version == "v1.20.2"
    assert node.status.node_info.container_runtime_version.startswith("containerd://")


def test_the_api_serves_what_the_backend_uses() -> None:
    from kubernetes import client

    api_client = core_api().api_client
    assert {"pods", "pods/attach", "pods/log", "secrets", "namespaces"} <= resource_names(core_api())
    assert "networkpolicies" in resource_names(client.NetworkingV1Api(api_client))
    assert "runtimeclasses" in resource_names(client.NodeV1Api(api_client))


def test_in_cluster_clients_find_the_api_service() -> None:
    api = core_api()
    api.read_namespace("kube-system", _request_timeout=API_TIMEOUT_S)
    service = api.read_namespaced_service("kubernetes", "default", _request_timeout=API_TIMEOUT_S)
    assert service.spec.cluster_ip == API_SERVICE_IP
    assert [port.port for port in service.spec.ports] == [443]
    endpoints = api.read_namespaced_endpoints("kubernetes", "default", _request_timeout=API_TIMEOUT_S)
    assert endpoints.subsets and endpoints.subsets[0].addresses


def test_the_namespace_exists_with_a_service_account_token() -> None:
    api = core_api()
    assert api.read_namespace(NAMESPACE, _request_timeout=API_TIMEOUT_S).status.phase == "Active"
    account = api.read_namespaced_service_account("default", NAMESPACE, _request_timeout=API_TIMEOUT_S)
    assert account.secrets, "the controller-manager made no token Secret for the default service account"
    secret = api.read_namespaced_secret(account.secrets[0].name, NAMESPACE, _request_timeout=API_TIMEOUT_S)
    assert secret.type == "kubernetes.io/service-account-token"
    assert {"ca.crt", "token"} <= set(secret.data)


def test_a_second_make_kubernetes_finds_the_cluster_up() -> None:
    done = subprocess.run(["make", "-s", "kubernetes"], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already up" in done.stderr
    assert "starting the cluster" not in done.stderr
