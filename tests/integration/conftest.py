"""Integration fixtures: the real service as a subprocess on a free loopback port, driven through the client.

Each test run uses its own instance name, so the start-up orphan sweep never
touches containers of another run; fixtures force-remove what they made.

Backend-independent modules say so with ``pytest.mark.backends("docker", "kubernetes")``: each of their
tests then runs once per backend (the ``backend`` fixture, ids ``[docker]`` and ``[kubernetes]``), against
a service started with that backend; a test marked ``backends("docker")`` inside such a module runs on
Docker only. Tests without the marker run on Docker.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runner.client import RunnerClient, tls_credentials
from runner.sandbox.base import INSTANCE_LABEL
from tests.kubernetes_cluster import KUBECONFIG, NAMESPACE, Sandbox, pods

PROFILES = Path(__file__).parent / "profiles.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Service:
    address: str
    instance: str
    process: subprocess.Popen[bytes]
    log_path: Path
    audit_db: Path
    state_dir: Path
    ca: Path | None = None
    """Set when the service speaks TLS: the CA that signed its certificate."""
    probe_cert: tuple[Path, Path] | None = None
    """A client certificate and key for the health probe, when the service requires mutual TLS."""
    backend: str = "docker"
    mcp_listen: str = ""
    """The MCP door's ``host:port`` (a free loopback port unless MCP_RUNNER_MCP_LISTEN names one); "" for none."""

    def client(
        self, *, token: str | None = None, cert: tuple[Path, Path] | None = None, ca: Path | None = None
    ) -> RunnerClient:
        """A client; with TLS it trusts ``ca`` (default: the service's) and presents ``cert`` if given."""
        trusted = ca or self.ca
        if trusted is None:
            return RunnerClient(self.address, token=token)
        credentials = tls_credentials(trusted, *(cert or (None, None)))
        return RunnerClient(self.address, credentials=credentials, token=token)

    def healthy(self) -> bool:
        """The standard health check (it needs no caller credentials, only the transport's)."""
        if self.ca is None:
            channel = grpc.insecure_channel(self.address)
        else:
            channel = grpc.secure_channel(self.address, tls_credentials(self.ca, *(self.probe_cert or (None, None))))
        with channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sandboxes(self) -> list[Sandbox]:
        """The sandboxes (containers or pods, with their egress proxies) this service's instance has now."""
        if self.backend == "kubernetes":
            return pods(f"{INSTANCE_LABEL}={self.instance}")
        return [Sandbox(c.id, dict(c.labels), c.status == "running") for c in self.containers()]

    def containers(self) -> list[docker.models.containers.Container]:
        engine = docker.from_env()
        for _ in range(20):
            try:
                return engine.containers.list(all=True, filters={"label": f"{INSTANCE_LABEL}={self.instance}"})
            except docker.errors.NotFound:
                continue  # docker-py lists, then inspects each: one was removed in between, so list again
        raise AssertionError("containers kept vanishing while being listed")


def start_service(
    tmp: Path,
    instance: str,
    port: int | None = None,
    *,
    config: Path = PROFILES,
    ca: Path | None = None,
    probe_cert: tuple[Path, Path] | None = None,
    state_dir: Path | None = None,
    backend: str = "docker",
    kubeconfig: Path = KUBECONFIG,
) -> Service:
    """The service on ``port`` (default: a free one); its audit log is ``tmp``/audit-``instance``.sqlite3.

    Its state directory (instance lock, guard store) is ``state_dir``, default ``tmp``/state: never the
    user's, so parallel runs and a developer's own service never see each other's locks. On Kubernetes it
    reaches the cluster through ``kubeconfig`` (default: the test cluster's).
    """
    port = port or free_port()
    if backend == "kubernetes":
        config = cluster_variant(config, tmp / f"settings-{instance}.yaml")
    log_path = tmp / f"service-{instance}-{port}.log"
    audit_db = tmp / f"audit-{instance}.sqlite3"
    state_dir = state_dir or tmp / "state"
    # A free port each, as for gRPC: the default 50052 would have services started side by side refuse each other.
    mcp_listen = os.environ.get("MCP_RUNNER_MCP_LISTEN", f"127.0.0.1:{free_port()}")
    env = {
        **os.environ,
        "MCP_RUNNER_INSTANCE": instance,
        "MCP_RUNNER_AUDIT_DB": str(audit_db),
        "MCP_RUNNER_STATE_DIR": str(state_dir),
        "MCP_RUNNER_BACKEND": backend,
        "MCP_RUNNER_KUBECONFIG": str(kubeconfig),
        "MCP_RUNNER_NAMESPACE": NAMESPACE,
        "MCP_RUNNER_MCP_LISTEN": mcp_listen,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "serve", "--listen", f"127.0.0.1:{port}", "--config", str(config)],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    service = Service(
        f"127.0.0.1:{port}", instance, process, log_path, audit_db, state_dir, ca, probe_cert, backend=backend,
        mcp_listen=mcp_listen,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}:\n{service.log()}")
        if service.healthy():
            return service
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the service did not answer within 60 s:\n{service.log()}")


CLUSTER_CPUS = 0.08
"""Each test sandbox's CPU on the test cluster. A pod's CPU request equals its limit, and the one node has 2 CPUs:
at the profiles' 1 CPU only two sessions fit at once, while the tests open twenty side by side."""


def cluster_variant(config: Path, written: Path) -> Path:
    """``config`` for a service on the test cluster, written to ``written``: every profile with ``CLUSTER_CPUS``, and
    every path the file names made absolute (they were relative to ``config``'s directory, and ``written`` may be
    elsewhere): mount sources, secret and credential files, policy, TLS files, state and audit paths."""
    settings = yaml.safe_load(config.read_text())
    base = config.parent

    def absolute(holder: dict[str, Any], *keys: str) -> None:
        for key in keys:
            if isinstance(holder.get(key), str):
                holder[key] = str((base / Path(holder[key]).expanduser()).resolve())

    settings.setdefault("defaults", {})["cpus"] = CLUSTER_CPUS
    absolute(settings, "policy", "state_dir")
    absolute(settings.get("tls") or {}, "cert", "key", "client_ca")
    absolute(settings.get("audit") or {}, "path", "export_dir")
    for profile in (settings.get("profiles") or {}).values():
        if "limits" in profile:
            profile["limits"].pop("cpus", None)
        for mount in profile.get("mounts", []):
            absolute(mount, "source")
        for secret in (profile.get("secrets") or {}).values():
            absolute(secret, "file")
        for rule in (profile.get("network") or {}).get("egress", []):
            for credential in (rule.get("headers") or {}).values() if isinstance(rule, dict) else ():
                absolute(credential, "file")
    written.write_text(yaml.safe_dump(settings))
    return written


def stop_service(service: Service) -> None:
    if service.process.poll() is None:
        service.process.send_signal(signal.SIGTERM)
        try:
            service.process.wait(30)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()
    if service.backend == "kubernetes":
        from tests.kubernetes_cluster import remove_instance

        remove_instance(service.instance)
        return
    for container in service.containers():
        container.remove(force=True)


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    from runner.images import ensure_images

    return ensure_images()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the tests of a ``backends(...)`` module once per backend it names (session-scoped: one service each)."""
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is None or "backend" not in metafunc.fixturenames:
        return
    params = [pytest.param(name, marks=[getattr(pytest.mark, name)]) for name in marker.args]
    metafunc.parametrize("backend", params, indirect=True, scope="session")


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    """The backend the test's service runs on: a ``backends(...)`` parameter, else docker."""
    return str(getattr(request, "param", "docker"))


@pytest.fixture(scope="session")
def service(images: dict[str, str], backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    if backend == "kubernetes":
        from tests.kubernetes_cluster import ensure_images_loaded

        ensure_images_loaded()
    svc = start_service(tmp_path_factory.mktemp("service"), f"it-{secrets.token_hex(4)}", backend=backend)
    yield svc
    stop_service(svc)


@pytest.fixture
def client(service: Service) -> Iterator[RunnerClient]:
    with service.client() as c:
        yield c
