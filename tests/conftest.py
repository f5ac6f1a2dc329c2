"""Shared test set-up: Docker (and the test cluster for `kubernetes` tests) must be there; under CI, absence fails."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kubernetes_cluster import cluster_problem


def docker_problem() -> str | None:
    """Why the Docker engine cannot be used, or None when it answers."""
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as exc:
        return f"no Docker engine answers ({exc}); run `make docker`"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs_docker = [i for i in items if i.get_closest_marker("integration") or i.get_closest_marker("hostile")]
    needs_cluster = [i for i in items if i.get_closest_marker("kubernetes")]
    _require(needs_docker, docker_problem() if needs_docker else None, "_fail_without_docker")
    _require(needs_cluster, cluster_problem() if needs_cluster else None, "_fail_without_cluster")


def _require(items: list[pytest.Item], problem: str | None, failing_fixture: str) -> None:
    """Skip ``items`` for ``problem``; under CI a missing engine or cluster is a broken set-up, never a pass."""
    if problem is None:
        return
    marker = pytest.mark.usefixtures(failing_fixture) if os.environ.get("CI") == "true" else pytest.mark.skip(
        reason=problem
    )
    for item in items:
        item.add_marker(marker)


@pytest.fixture
def _fail_without_docker() -> None:
    pytest.fail(f"CI=true and {docker_problem()}")


@pytest.fixture
def _fail_without_cluster() -> None:
    pytest.fail(f"CI=true and {cluster_problem()}")


MCP_DOOR_PROFILES = Path(__file__).parent / "integration" / "conformance-profiles.yaml"


def listening(port: int, process: subprocess.Popen[Any], within_s: float = 30) -> bool:
    """Whether something accepts connections on loopback ``port`` before ``process`` exits or the time is up."""
    deadline = time.monotonic() + within_s
    while process.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def mcp_tools() -> Path:
    """The bin/ of the pinned MCP test tools (`make mcp-tools`): node, conformance, mcp-inspector-cli."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "mcp-tools.sh"
    answer = subprocess.run(["bash", str(script), "--dir"], capture_output=True, text=True, check=True)
    where = Path(answer.stdout.strip())
    if not (where / ".installed").is_file():
        problem = f"the MCP test tools are not installed in {where}; run `make mcp-tools`"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {problem}")
        pytest.skip(problem)
    return where / "bin"


@pytest.fixture(scope="session")
def mcp_door(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service with the profiles of tests/integration/conformance-profiles.yaml and its MCP HTTP door on a free
    loopback port; yields the door's base URL (a profile's endpoint is ``<base>/<profile>``)."""
    from tests.integration.conftest import free_port, start_service, stop_service

    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MCP_RUNNER_MCP_LISTEN", f"127.0.0.1:{port}")
        service = start_service(
            tmp_path_factory.mktemp("mcp-door"), f"door-{secrets.token_hex(4)}", config=MCP_DOOR_PROFILES
        )
    try:
        if not listening(port, service.process):  # gRPC answers first; the door may bind a moment later
            raise RuntimeError(f"the MCP door never listened on {port}:\n{service.log()}")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        stop_service(service)
