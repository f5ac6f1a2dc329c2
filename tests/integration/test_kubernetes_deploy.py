"""deploy/kubernetes/ on the real test cluster: the service runs as a pod, a caller on the host opens a session.

The images are built if missing and loaded into the cluster's containerd (`images load --kubernetes`); the
manifests are applied, as shipped except for four things, into a fresh namespace of this run (deleted at the
end): the namespace, the service image's tag, the test caller's token digest in the policy, and the name of the
one cluster-scoped binding. The caller's token goes into a Secret, as a real caller would get it. From the host,
kube-proxy routes the Service's ClusterIP to the pod (the test cluster has no DNS), so the session below travels
host -> ClusterIP -> service pod -> API server -> session pod (attach), the whole in-cluster path.
"""

from __future__ import annotations

import copy
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from runner.api.auth import hash_token, new_token
from runner.client import RunnerClient
from runner.image_transfer import load_into_containerd
from runner.sandbox.base import SESSION_LABEL
from tests.kubernetes_cluster import KUBECONFIG

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes]

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
SHIPPED_NAMESPACE = "mcp-runner"
TOKEN_SECRET = "mcp-runner-token-agent"
READY_TIMEOUT_S = 180.0
API_TIMEOUT_S = 10


def shipped_documents() -> list[dict[str, Any]]:
    """Every object of deploy/kubernetes/, in the order the files are numbered (their apply order)."""
    docs: list[dict[str, Any]] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def for_this_run(docs: list[dict[str, Any]], namespace: str, service_image: str, token_digest: str) -> list[
        dict[str, Any]]:
    """The shipped objects, moved to ``namespace``, with this checkout's service image and the caller's digest."""
    out = []
    for original in docs:
        doc = copy.deepcopy(original)
        kind, meta = doc["kind"], doc["metadata"]
        if kind == "Namespace":
            meta["name"] = namespace
        elif "namespace" in meta:
            assert meta["namespace"] == SHIPPED_NAMESPACE, f"{kind} {meta['name']} outside the shipped namespace"
            meta["namespace"] = namespace
        if kind == "ClusterRoleBinding":
            meta["name"] = meta["name"].removesuffix(SHIPPED_NAMESPACE) + namespace
        for subject in doc.get("subjects", []):
            subject["namespace"] = namespace
        if kind == "ConfigMap":
            policy = yaml.safe_load(doc["data"]["policy.yaml"])
            policy["callers"]["agent"]["tokens"] = [token_digest]
            doc["data"]["policy.yaml"] = yaml.safe_dump(policy)
        if kind == "Deployment":
            [container] = doc["spec"]["template"]["spec"]["containers"]
            assert container["image"] == "mcp-runner/service:IMAGE_TAG"
            container["image"] = service_image
        out.append(doc)
    return out


class Cluster:
    """The few API groups this test uses, over the test cluster's kubeconfig."""

    def __init__(self) -> None:
        from kubernetes import client, config

        self.api_client = config.new_client_from_config(config_file=str(KUBECONFIG))
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.rbac = client.RbacAuthorizationV1Api(self.api_client)

    def apply(self, doc: dict[str, Any]) -> None:
        from kubernetes import utils

        try:
            utils.create_from_dict(self.api_client, doc)
        except utils.FailToCreateError as exc:
            # The ClusterRole is shared by every installation on the cluster: an earlier one may have made it.
            if doc["kind"] == "ClusterRole" and all(e.status == 409 for e in exc.api_exceptions):
                return
            raise

    def describe_pods(self, namespace: str) -> str:
        """Each pod's phase, conditions, container states and log tail: what a failed wait shows."""
        lines = []
        for pod in self.core.list_namespaced_pod(namespace, _request_timeout=API_TIMEOUT_S).items:
            lines.append(f"pod {pod.metadata.name}: {pod.status.phase}")
            lines += [f"  condition {c.type}={c.status} {c.reason or ''} {c.message or ''}"
                      for c in pod.status.conditions or []]
            lines += [f"  container {s.name}: {s.state}" for s in pod.status.container_statuses or []]
            try:
                log = self.core.read_namespaced_pod_log(pod.metadata.name, namespace, tail_lines=40,
                                                        _request_timeout=API_TIMEOUT_S)
                lines += [f"  | {line}" for line in log.splitlines()]
            except Exception as exc:
                lines.append(f"  (no log: {exc})")
        events = self.core.list_namespaced_event(namespace, _request_timeout=API_TIMEOUT_S).items
        lines += [f"event {e.involved_object.name}: {e.reason}: {e.message}" for e in events[-20:]]
        return "\n".join(lines)

    @contextmanager
    def explained(self, namespace: str) -> Iterator[None]:
        """A failure inside also shows what the pods said (the namespace, logs included, goes at the end)."""
        try:
            yield
        except Exception as exc:
            pytest.fail(f"{type(exc).__name__}: {exc}\n{self.describe_pods(namespace)}")

    def wait_ready(self, namespace: str, name: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            status = self.apps.read_namespaced_deployment_status(name, namespace, _request_timeout=API_TIMEOUT_S)
            if (status.status.ready_replicas or 0) >= 1:
                return
            time.sleep(1)
        pytest.fail(f"deployment {namespace}/{name} not ready within {READY_TIMEOUT_S:.0f} s\n"
                    + self.describe_pods(namespace))

    def wait_reachable(self, namespace: str, address: tuple[str, int]) -> None:
        """Until the Service's address accepts connections: a Deployment is ready before kube-proxy has synced the
        new endpoint, and until then the ClusterIP refuses (kube-proxy's rule for a Service without endpoints)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                socket.create_connection(address, timeout=2).close()
                return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"{address[0]}:{address[1]} refused connections for {READY_TIMEOUT_S:.0f} s after the deployment "
                    "was ready\n" + self.describe_pods(namespace))

    def session_pods(self, namespace: str) -> list[str]:
        listed = self.core.list_namespaced_pod(namespace, label_selector=SESSION_LABEL,
                                               _request_timeout=API_TIMEOUT_S)
        return [pod.metadata.name for pod in listed.items]


@pytest.fixture(params=[f"mcp-runner-deploy-{secrets.token_hex(3)}"])
def namespace(request: pytest.FixtureRequest) -> str:
    """A namespace of this run alone, so the shipped `mcp-runner` (other tests' sessions) is never touched."""
    name: str = request.param
    return name


@pytest.fixture
def deployed(namespace: str) -> Iterator[tuple[Cluster, str, str]]:
    """The shipped manifests applied into ``namespace``; yields the cluster, the Service's address and the token."""
    from kubernetes import client

    refs = load_into_containerd(log=print)  # builds what is missing; imports what containerd lacks
    cluster = Cluster()
    token = new_token()
    docs = for_this_run(shipped_documents(), namespace, refs["service"], hash_token(token))
    bindings = [d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"]
    try:
        for doc in docs:
            cluster.apply(doc)
            if doc["kind"] == "Namespace":  # the caller's token, where an in-cluster caller would mount it from
                cluster.core.create_namespaced_secret(namespace, client.V1Secret(
                    metadata=client.V1ObjectMeta(name=TOKEN_SECRET), string_data={"token": token}))
        cluster.wait_ready(namespace, "mcp-runner")
        service = cluster.core.read_namespaced_service("mcp-runner", namespace, _request_timeout=API_TIMEOUT_S)
        cluster.wait_reachable(namespace, (service.spec.cluster_ip, 50051))
        yield cluster, f"{service.spec.cluster_ip}:50051", namespace
    finally:
        for name in bindings:
            cluster.rbac.delete_cluster_role_binding(name, _request_timeout=API_TIMEOUT_S)
        cluster.core.delete_namespace(namespace, _request_timeout=API_TIMEOUT_S)


def test_session_through_the_in_cluster_service(deployed: tuple[Cluster, str, str]) -> None:
    import base64

    cluster, address, namespace = deployed
    secret = cluster.core.read_namespaced_secret(TOKEN_SECRET, namespace, _request_timeout=API_TIMEOUT_S)
    token = base64.b64decode(secret.data["token"]).decode()

    with RunnerClient(address) as anonymous, pytest.raises(grpc.RpcError) as refused:
        anonymous.open_session("time", timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with RunnerClient(address, token=token) as client, cluster.explained(namespace):
        opened = client.open_session("time", timeout=120)
        assert "get_current_time" in {tool.name for tool in opened.tools}
        assert cluster.session_pods(namespace), "the session runs as a pod in the service's namespace"
        result = client.call_tool(opened.session_id, "get_current_time", {"timezone": "UTC"}, timeout=60)
        assert not result.is_error, result.text
        assert "UTC" in result.text
        client.close_session(opened.session_id, timeout=60)

    deadline = time.monotonic() + 60
    while cluster.session_pods(namespace) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cluster.session_pods(namespace) == [], "the closed session's pod is gone"
