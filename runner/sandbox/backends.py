"""Which sandbox backend a service runs on: ``backend: docker`` (this machine's engine) or ``kubernetes`` (pods).

The Kubernetes client is imported only when chosen: it is a large import a Docker-only service never needs.
"""

from __future__ import annotations

from collections.abc import Callable

from runner.config import Settings
from runner.sandbox.base import SandboxBackend


def backend_for(
    settings: Settings, *, owner: str | None, abandoned: Callable[[str | None], bool] | None
) -> SandboxBackend:
    """The backend ``settings.backend`` names, labelling what it makes with ``owner`` (see ``InstanceLock``)."""
    if settings.backend == "kubernetes":
        from runner.sandbox.kubernetes import KubernetesBackend

        return KubernetesBackend(
            settings.kubernetes, stderr_tail_bytes=settings.stderr_tail_bytes, owner=owner, abandoned=abandoned
        )
    from runner.sandbox.docker import DockerBackend

    return DockerBackend(stderr_tail_bytes=settings.stderr_tail_bytes, owner=owner, abandoned=abandoned)


def describe(settings: Settings) -> str:
    """The backend as the start-up log names it."""
    if settings.backend == "kubernetes":
        where = settings.kubernetes.kubeconfig or "the in-cluster configuration"
        return f"Kubernetes (namespace {settings.kubernetes.namespace}, {where})"
    return "Docker (this machine's engine)"
