"""The SandboxBackend Protocol: start one isolated process tree, give back its stdio, destroy it.

A backend knows containers, never MCP: it moves bytes. ``DockerBackend`` is the
real one on this machine, ``KubernetesBackend`` places sandboxes as pods on a
cluster; ``FakeBackend`` runs a handler in-process for unit tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from runner.config import Limits, Mount
from runner.egress.rules import Rule

SESSION_LABEL = "mcp-runner.session"
INSTANCE_LABEL = "mcp-runner.instance"
OWNER_LABEL = "mcp-runner.owner"
"""The service (its instance lock) that made a sandbox: the orphan sweep leaves a running service's alone."""
SANDBOX_USER = "10001:10001"


@dataclass(frozen=True)
class SandboxNetwork:
    """A sandbox that may reach out: only through an egress proxy enforcing ``rules``."""

    rules: tuple[Rule, ...]
    """With credential header values filled in: the proxy adds them, the sandbox never sees them."""
    upstream: str
    """The network the proxy reaches out through."""


@dataclass(frozen=True)
class EgressDecision:
    """One request the egress proxy allowed or refused."""

    time: float
    method: str
    host: str
    port: int
    address: str
    """The address connected to or refused; empty when none was reached (e.g. a name not allowed)."""
    rule: str
    """The ``host:port`` rule that matched; empty when none did."""
    allowed: bool
    code: str
    """allowed, not_allowed, refused_address, bad_request, resolve_failed, connect_failed, ..."""
    reason: str


EgressCallback = Callable[[EgressDecision], None]


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a backend needs to start one session's sandbox."""

    session_id: str
    instance: str
    image: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    mounts: tuple[Mount, ...] = ()
    limits: Limits = Limits()
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    network: SandboxNetwork | None = None
    """None: no network at all (a loopback interface only)."""
    runtime: str = "runc"
    lifetime_s: float | None = None
    """The session's maximum lifetime, for backends that can enforce a backstop deadline of their own (a pod's
    ``activeDeadlineSeconds``); None: the sandbox lives until destroyed (a warm one waiting in the pool)."""


@dataclass(frozen=True)
class SandboxExit:
    """How a sandbox ended: ``exit_code`` is None while it still runs (or when nobody could tell)."""

    exit_code: int | None
    oom_killed: bool = False
    reason: str = ""
    """Why it ended, when the backend knows more than the exit status (e.g. its pod was deleted from outside)."""


@dataclass(frozen=True)
class SandboxStats:
    cpu_seconds: float = 0.0
    peak_memory_bytes: int = 0


class SandboxHandle(Protocol):
    """One running sandbox. Reads return b"" at end of stream; every method is safe after destroy()."""

    @property
    def id(self) -> str: ...

    @property
    def image_id(self) -> str:
        """The digest of the image the sandbox runs (``sha256:…``): what a replay starts again."""
        ...

    async def read_stdout(self) -> bytes:
        """The next chunk of the sandbox's stdout (any size up to the backend's buffer), b"" at EOF."""
        ...

    async def write_stdin(self, data: bytes) -> None: ...

    def stderr_tail(self) -> str:
        """The last few KiB the sandbox wrote to stderr, decoded leniently."""
        ...

    async def wait_exit(self, timeout: float) -> SandboxExit: ...

    async def stats(self) -> SandboxStats: ...

    async def destroy(self) -> None: ...


class SandboxBackend(Protocol):
    async def start(self, spec: SandboxSpec, on_egress: EgressCallback | None = None) -> SandboxHandle:
        """Start the sandbox; with ``spec.network``, its egress decisions are reported to ``on_egress``."""
        ...

    async def sweep_orphans(self, instance: str) -> int:
        """Remove every sandbox left behind by an earlier run of this instance; return how many."""
        ...

    async def check(self) -> None:
        """Raise ``Unavailable`` if the backend cannot start sandboxes now."""
        ...

    async def settle(self) -> None:
        """Wait for every clean-up still running (what a start given up midway made is removed by then)."""
        ...

    def close(self) -> None:
        """Release the backend's threads and connections; clean-ups not yet run are dropped (``settle`` first)."""
        ...
