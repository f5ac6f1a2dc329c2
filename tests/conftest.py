"""Shared test set-up: Docker must be there for integration tests, and under CI its absence is a failure."""

from __future__ import annotations

import os

import pytest


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
    if not needs_docker:
        return
    problem = docker_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        # Under CI a missing engine is a broken set-up, never a reason to pass.
        marker = pytest.mark.usefixtures("_fail_without_docker")
    else:
        marker = pytest.mark.skip(reason=problem)
    for item in needs_docker:
        item.add_marker(marker)


@pytest.fixture
def _fail_without_docker() -> None:
    pytest.fail(f"CI=true and {docker_problem()}")
