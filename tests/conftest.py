"""Shared test set-up: Docker (and the test cluster for `kubernetes` tests) must be there; under CI, absence fails."""

from __future__ import annotations

import os

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
