"""The project's test cluster as the tests see it (`make kubernetes`): reachability, pods by label, clean-up.

Tests talk to it with the official client and the kubeconfig `make kubernetes` writes; nothing here starts or
stops the cluster (the Makefile does, before pytest runs).
"""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.config import DEFAULT_KUBECONFIG, KubernetesConfig
from runner.sandbox.base import INSTANCE_LABEL

KUBECONFIG = Path(os.environ.get("MCP_RUNNER_TEST_KUBECONFIG", str(DEFAULT_KUBECONFIG.expanduser())))
NAMESPACE = KubernetesConfig.namespace
API_TIMEOUT_S = 10


@dataclass(frozen=True)
class Sandbox:
    """A container or pod of a service, as the backend-independent tests look at it."""

    id: str
    labels: dict[str, str] = field(default_factory=dict)
    running: bool = True


@functools.cache
def core_api() -> Any:
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(config_file=str(KUBECONFIG)))


def cluster_problem() -> str | None:
    """Why the test cluster cannot be used, or None when its API answers and the namespace exists."""
    if not KUBECONFIG.exists():
        return f"no kubeconfig at {KUBECONFIG}; run `make kubernetes`"
    try:
        core_api().read_namespace(NAMESPACE, _request_timeout=API_TIMEOUT_S)
    except Exception as exc:
        return f"the test cluster does not answer ({type(exc).__name__}: {exc}); run `make kubernetes`"
    return None


def pods(selector: str) -> list[Sandbox]:
    """The pods in the test namespace matching a label selector (``key=value,...``), deleted ones excluded."""
    listed = core_api().list_namespaced_pod(NAMESPACE, label_selector=selector, _request_timeout=API_TIMEOUT_S)
    return [
        Sandbox(pod.metadata.name, dict(pod.metadata.labels or {}), getattr(pod.status, "phase", "") == "Running")
        for pod in listed.items
        if pod.metadata.deletion_timestamp is None
    ]


def network_policies(selector: str) -> list[str]:
    """The names of the NetworkPolicies in the test namespace matching a label selector."""
    from kubernetes import client

    listed = client.NetworkingV1Api(core_api().api_client).list_namespaced_network_policy(
        NAMESPACE, label_selector=selector, _request_timeout=API_TIMEOUT_S
    )
    return [policy.metadata.name for policy in listed.items]


def remove_instance(instance: str) -> None:
    """Delete every pod and secret a test service of ``instance`` left (NetworkPolicies go with the namespace's)."""
    from kubernetes import client

    api = core_api()
    selector = f"{INSTANCE_LABEL}={instance}"
    api.delete_collection_namespaced_pod(
        NAMESPACE, label_selector=selector, grace_period_seconds=0, _request_timeout=API_TIMEOUT_S
    )
    api.delete_collection_namespaced_secret(NAMESPACE, label_selector=selector, _request_timeout=API_TIMEOUT_S)
    client.NetworkingV1Api(api.api_client).delete_collection_namespaced_network_policy(
        NAMESPACE, label_selector=selector, _request_timeout=API_TIMEOUT_S
    )


def instance_on_cluster(prefix: str) -> Iterator[str]:
    """A fresh instance name for a test driving the backend directly; what it left is removed after it.

    The cluster's absence needs no check here: tests marked ``kubernetes`` are skipped, or under CI failed,
    before they start (``tests/conftest.py``)."""
    ensure_images_loaded()
    name = f"{prefix}-{secrets.token_hex(4)}"
    yield name
    remove_instance(name)


@functools.cache
def ensure_images_loaded() -> None:
    """The sandbox images in the cluster's runtime (only missing ones are imported), once per test run."""
    subprocess.run([sys.executable, "-m", "runner.cli", "images", "load", "--kubernetes"], check=True)
