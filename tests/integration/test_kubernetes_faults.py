"""Faults on the real test cluster, all through the gRPC API of a service on the Kubernetes backend.

A pod the cluster cannot place, the API server out of reach, a session pod deleted from outside, the service
SIGKILLed with sessions open, and the NetworkPolicy objects of each kind of session. The API server is made
unreachable without touching the shared cluster: the service reaches it through a TCP forwarder of the test's
own on loopback, which the test stops and starts again. (Twenty sessions side by side on pods:
test_sessions.py::test_twenty_parallel_sessions_no_crosstalk[kubernetes].)
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import yaml

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.sandbox.base import INSTANCE_LABEL, SESSION_LABEL
from runner.sandbox.egress import PROXY_PORT, ROLE_LABEL
from tests.integration.conftest import Service, free_port, start_service, stop_service
from tests.kubernetes_cluster import API_TIMEOUT_S, KUBECONFIG, NAMESPACE, core_api, ensure_images_loaded

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes]

SERVERS = Path(__file__).resolve().parents[1] / "servers"
SCRIPTED = {"image": "python-servers", "command": ["python3", "/srv/servers/scripted_server.py", "good"],
            "mounts": [{"source": str(SERVERS), "target": "/srv/servers"}]}
PRIVATE_RANGES = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16"}
HEALTH_FOLLOW_S = 40
"""How long health may take to follow the API server: a check every 5 s, each bounded by the API timeout and its
retries. A bound to wait within, never a measured time."""


@pytest.fixture(scope="module")
def loaded(images: dict[str, str]) -> dict[str, str]:
    ensure_images_loaded()
    return images


@pytest.fixture(scope="module")
def service(loaded: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(tmp_path_factory.mktemp("faults"), f"it-kf-{secrets.token_hex(4)}", backend="kubernetes")
    yield svc
    stop_service(svc)


def _code(caught: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return caught.value.code()  # type: ignore[attr-defined,no-any-return]


def _details(caught: pytest.ExceptionInfo[grpc.RpcError]) -> str:
    return caught.value.details() or ""  # type: ignore[attr-defined,no-any-return]


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.3)


def _objects(selector: str) -> dict[str, list[Any]]:
    """The pods (deleted ones excluded), Secrets and NetworkPolicies in the test namespace matching ``selector``."""
    from kubernetes import client

    api = core_api()
    pods = api.list_namespaced_pod(NAMESPACE, label_selector=selector, _request_timeout=API_TIMEOUT_S).items
    return {
        "pods": [p for p in pods if p.metadata.deletion_timestamp is None],
        "secrets": api.list_namespaced_secret(NAMESPACE, label_selector=selector, _request_timeout=API_TIMEOUT_S).items,
        "policies": client.NetworkingV1Api(api.api_client).list_namespaced_network_policy(
            NAMESPACE, label_selector=selector, _request_timeout=API_TIMEOUT_S
        ).items,
    }


def _counts(selector: str) -> dict[str, int]:
    return {kind: len(items) for kind, items in _objects(selector).items()}


NOTHING = {"pods": 0, "secrets": 0, "policies": 0}


# ------------------------------------------------------------------------------- a pod the cluster cannot place


def test_an_unschedulable_pod_is_resource_exhausted_naming_why_and_leaves_nothing(
    loaded: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "settings.yaml"
    huge = {**SCRIPTED, "limits": {"memory": "10000g"}}  # the node has 24 GiB
    config.write_text(yaml.safe_dump({"pool": {}, "builtin_profiles": False, "profiles": {"huge": huge}}))
    service = start_service(tmp_path, f"it-kf-huge-{secrets.token_hex(4)}", config=config, backend="kubernetes")
    try:
        with service.client() as client, pytest.raises(grpc.RpcError) as refused:
            client.open_session("huge", timeout=120)
        assert _code(refused) is grpc.StatusCode.RESOURCE_EXHAUSTED, _details(refused)
        assert "cannot place its pod" in _details(refused)
        assert "Insufficient memory" in _details(refused)  # the scheduler's own words
        instance = f"{INSTANCE_LABEL}={service.instance}"
        _wait_for(lambda: _counts(instance) == NOTHING, 30, "the refused session's objects removed")
        assert service.healthy()
    finally:
        stop_service(service)


# ------------------------------------------------------------------------------ the API server out of reach


class Forwarder:
    """TCP from 127.0.0.1:``port`` to ``target``, in threads; ``stop`` closes the listener and every connection."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                far = socket.create_connection(self.target, timeout=5)
            except OSError:
                near.close()
                continue
            far.settimeout(None)
            with self._lock:
                self._open.update((near, far))
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(sock)
            sock.close()


@pytest.fixture
def forwarded(tmp_path: Path) -> Iterator[tuple[Forwarder, Path]]:
    """A forwarder to the test cluster's API server and a kubeconfig that reaches the server through it."""
    kubeconfig = yaml.safe_load(KUBECONFIG.read_text())
    (cluster,) = kubeconfig["clusters"]
    server = urlsplit(cluster["cluster"]["server"])
    assert server.hostname and server.port, server
    forwarder = Forwarder(free_port(), (server.hostname, server.port))
    # The API server's certificate names 127.0.0.1, so TLS verification holds through the forwarder.
    cluster["cluster"]["server"] = f"https://127.0.0.1:{forwarder.port}"
    copy = tmp_path / "kubeconfig-forwarded.yaml"
    copy.write_text(yaml.safe_dump(kubeconfig))
    forwarder.start()
    yield forwarder, copy
    forwarder.stop()


def test_api_server_unreachable_is_unavailable_and_not_serving_then_serving_again(
    loaded: dict[str, str], tmp_path: Path, forwarded: tuple[Forwarder, Path]
) -> None:
    forwarder, kubeconfig = forwarded
    service = start_service(
        tmp_path, f"it-kf-api-{secrets.token_hex(4)}", backend="kubernetes", kubeconfig=kubeconfig
    )
    try:
        assert f"sandbox backend: Kubernetes (namespace {NAMESPACE}, {kubeconfig})" in service.log()
        with service.client() as client:
            with client.session("scripted") as opened:  # through the forwarder
                assert client.call_tool(opened.session_id, "add", {"a": 1, "b": 2}).structured_content == {"sum": 3}
            forwarder.stop()
            with pytest.raises(grpc.RpcError) as down:
                client.open_session("scripted", timeout=120)
            assert _code(down) is grpc.StatusCode.UNAVAILABLE, _details(down)
            assert "Kubernetes API server unreachable" in _details(down)
            _wait_for(lambda: not service.healthy(), HEALTH_FOLLOW_S, "health NOT_SERVING")
            assert "health NOT_SERVING" in service.log()

            forwarder.start()  # the same port again
            _wait_for(service.healthy, HEALTH_FOLLOW_S, "health SERVING again")
            assert "health SERVING" in service.log()
            with client.session("scripted") as opened:
                assert client.call_tool(opened.session_id, "add", {"a": 2, "b": 2}).structured_content == {"sum": 4}
    finally:
        if not forwarder.running:
            forwarder.start()  # the service removes its sandboxes through it as it stops
        stop_service(service)


# ------------------------------------------------------------------------------- a pod deleted from outside


def test_a_session_pod_deleted_from_outside_ends_the_session_failed_with_the_reason(service: Service) -> None:
    with service.client() as client:
        opened = client.open_session("scripted")
        session = f"{SESSION_LABEL}={opened.session_id}"
        (pod,) = _objects(session)["pods"]
        core_api().delete_namespaced_pod(pod.metadata.name, NAMESPACE, grace_period_seconds=0,
                                         _request_timeout=API_TIMEOUT_S)

        def failed() -> bool:
            return client.get_session(opened.session_id).state == pb.SESSION_STATE_FAILED

        _wait_for(failed, 60, "the session FAILED")
        assert "deleted from outside" in client.get_session(opened.session_id).failure
        with pytest.raises(grpc.RpcError) as gone:
            client.call_tool(opened.session_id, "echo", {"text": "x"})
        assert _code(gone) is grpc.StatusCode.FAILED_PRECONDITION
        assert "deleted from outside" in _details(gone)
        _wait_for(lambda: _counts(session) == NOTHING, 30, "the session's Secret and NetworkPolicy removed")
        with client.session("scripted") as fresh:  # the service itself is unharmed
            assert client.call_tool(fresh.session_id, "add", {"a": 1, "b": 1}).structured_content == {"sum": 2}


# ----------------------------------------------------------------------- the service SIGKILLed, then started


def test_orphan_pods_secrets_and_policies_removed_at_restart(loaded: dict[str, str], tmp_path: Path) -> None:
    instance = f"it-kf-kill-{secrets.token_hex(4)}"
    selector = f"{INSTANCE_LABEL}={instance}"
    first = start_service(tmp_path, instance, backend="kubernetes")
    try:
        with first.client() as client:
            for profile in ("scripted", "networked"):
                client.open_session(profile)
        # Two sandboxes and the networked one's egress proxy, the sandboxes' env Secrets, a deny-all policy and
        # the networked pair.
        left = _counts(selector)
        assert left == {"pods": 3, "secrets": 2, "policies": 3}, left
        first.process.kill()
        first.process.wait(10)
        assert _counts(selector) == left, "SIGKILL leaves the session's objects behind"
    finally:
        if first.process.poll() is None:
            first.process.kill()
    second = start_service(tmp_path, instance, backend="kubernetes")  # same instance, same state directory
    try:
        assert f"removed 3 orphaned sandbox(es) of instance '{instance}'" in second.log()
        assert _counts(selector) == NOTHING
        with second.client() as client, client.session("scripted") as fresh:
            assert client.call_tool(fresh.session_id, "add", {"a": 1, "b": 2}).structured_content == {"sum": 3}
        _wait_for(lambda: _counts(selector) == NOTHING, 30, "the fresh session's objects removed on close")
    finally:
        stop_service(second)


# ----------------------------------------------------------------------------- NetworkPolicies of a session


def _spec(policy: Any) -> dict[str, Any]:
    spec: dict[str, Any] = core_api().api_client.sanitize_for_serialization(policy.spec)
    return spec


def test_a_session_without_network_gets_a_deny_all_policy_gone_after_close(service: Service) -> None:
    with service.client() as client:
        opened = client.open_session("scripted")
        session = f"{SESSION_LABEL}={opened.session_id}"
        (policy,) = _objects(session)["policies"]
        spec = _spec(policy)
        assert spec["podSelector"] == {"matchLabels": {SESSION_LABEL: opened.session_id}}
        assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
        assert not spec.get("ingress") and not spec.get("egress")  # no rule: nothing in, nothing out
        client.close_session(opened.session_id)
    _wait_for(lambda: _counts(session) == NOTHING, 30, "the session's objects removed on close")


def test_a_networked_session_reaches_only_its_proxy_and_the_proxy_only_the_public_world(service: Service) -> None:
    with service.client() as client:
        opened = client.open_session("networked")
        session = f"{SESSION_LABEL}={opened.session_id}"
        # The sandbox really goes through its proxy pod (this cluster does not enforce the policies below).
        assert client.call_tool(opened.session_id, "echo", {"text": "x"}).structured_content == {"text": "x"}
        found = _objects(session)
        assert sorted(p.metadata.labels[ROLE_LABEL] for p in found["pods"]) == ["egress-proxy", "sandbox"]
        policies = {_spec(p)["podSelector"]["matchLabels"].get(ROLE_LABEL): _spec(p) for p in found["policies"]}
        assert set(policies) == {"sandbox", "egress-proxy"}
        sandbox, proxy = policies["sandbox"], policies["egress-proxy"]
        for role, spec in policies.items():
            assert spec["podSelector"] == {"matchLabels": {SESSION_LABEL: opened.session_id, ROLE_LABEL: role}}
            assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]

        to_proxy = {"podSelector": {"matchLabels": {SESSION_LABEL: opened.session_id, ROLE_LABEL: "egress-proxy"}}}
        assert not sandbox.get("ingress")
        assert sandbox["egress"] == [{"to": [to_proxy], "ports": [{"protocol": "TCP", "port": PROXY_PORT}]}]

        from_sandbox = {"podSelector": {"matchLabels": {SESSION_LABEL: opened.session_id, ROLE_LABEL: "sandbox"}}}
        assert proxy["ingress"] == [{"from": [from_sandbox], "ports": [{"protocol": "TCP", "port": PROXY_PORT}]}]
        world, dns = proxy["egress"]
        blocks = {block["ipBlock"]["cidr"]: set(block["ipBlock"].get("except", ())) for block in world["to"]}
        assert "ports" not in world or not world["ports"]
        assert blocks["0.0.0.0/0"] >= PRIVATE_RANGES, blocks  # the world minus private, loopback, link-local
        assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
        assert not dns.get("to")  # DNS to any resolver: the proxy resolves the allowlisted names itself

        client.close_session(opened.session_id)
    _wait_for(lambda: _counts(session) == NOTHING, 30, "the session's pods and policies removed on close")
