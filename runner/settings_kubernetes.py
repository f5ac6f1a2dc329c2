"""The settings file's ``backend:`` and ``kubernetes:`` keys, and the environment that overrides them.

Apart from ``runner.settings_file`` only for size: validated by pydantic like the rest of the file, read into the
frozen ``KubernetesConfig`` of ``runner.config``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runner.config import BACKENDS, DEFAULT_KUBECONFIG, RUNTIMES, KubernetesConfig, local_path

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_REGISTRY = re.compile(r"^[a-zA-Z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._/-]+)?$")


class KubernetesModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kubeconfig: str | None = Field(default=None, min_length=1)
    in_cluster: bool = False
    context: str | None = Field(default=None, min_length=1)
    namespace: str = Field(default=KubernetesConfig.namespace, pattern=_DNS_LABEL.pattern)
    runtime_classes: dict[str, str] | None = None
    registry: str | None = Field(default=None, pattern=_REGISTRY.pattern)
    api_timeout_s: float = Field(default=KubernetesConfig.api_timeout_s, gt=0, le=300)

    @model_validator(mode="after")
    def _one_cluster(self) -> KubernetesModel:
        if self.in_cluster and self.kubeconfig is not None:
            raise ValueError("kubernetes: give either `kubeconfig` or `in_cluster: true`, not both")
        for runtime, name in (self.runtime_classes or {}).items():
            if runtime not in RUNTIMES or not _DNS_LABEL.fullmatch(name):
                raise ValueError(
                    f"kubernetes.runtime_classes: {runtime!r}: {name!r} must map one of {list(RUNTIMES)} to a "
                    "RuntimeClass name (lower-case letters, digits and '-')"
                )
        return self

    def config(self, base: Path) -> KubernetesConfig:
        env_kubeconfig = os.environ.get("MCP_RUNNER_KUBECONFIG")
        if self.in_cluster and not env_kubeconfig:
            kubeconfig = None
        elif env_kubeconfig:
            kubeconfig = local_path(env_kubeconfig, Path.cwd())
        elif self.kubeconfig is not None:
            kubeconfig = local_path(self.kubeconfig, base)
        else:
            kubeconfig = DEFAULT_KUBECONFIG.expanduser()
        namespace = os.environ.get("MCP_RUNNER_NAMESPACE") or self.namespace
        if not _DNS_LABEL.fullmatch(namespace):
            raise ValueError(f"MCP_RUNNER_NAMESPACE={namespace!r}: not a Kubernetes namespace name")
        runtime_classes = KubernetesConfig().runtime_classes if self.runtime_classes is None else self.runtime_classes
        return KubernetesConfig(
            kubeconfig=kubeconfig,
            context=self.context,
            namespace=namespace,
            runtime_classes=MappingProxyType(dict(runtime_classes)),
            registry=self.registry.rstrip("/") if self.registry else None,
            api_timeout_s=self.api_timeout_s,
        )


def chosen_backend(in_file: str | None, given: str | None) -> str:
    """``--backend`` (``given``), else env MCP_RUNNER_BACKEND, else the file's ``backend``, else docker."""
    chosen = given or os.environ.get("MCP_RUNNER_BACKEND") or in_file or "docker"
    if chosen not in BACKENDS:
        raise ValueError(f"backend {chosen!r}: use one of {', '.join(BACKENDS)}")
    return chosen
