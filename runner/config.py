"""Settings and profiles: one file (YAML or TOML) plus environment, defaults that run on one machine.

pydantic validates the file (a trust boundary: people write it); the rest of the
runner only sees the frozen ``Settings`` and ``Profile`` records it produces.
Built-in profiles for the six shipped servers live in ``profiles/builtin.yaml``;
a user's file adds profiles or replaces built-ins by name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from pydantic import BaseModel, ValidationError

from runner.config_document import ConfigError as ConfigError  # raised here too; many callers import it from here
from runner.did_you_mean import unknown_key_message
from runner.egress.rules import Rule
from runner.guard.sanitize import SanitizeConfig
from runner.text import printable

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_MCP_LISTEN = "127.0.0.1:50052"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_UPSTREAM_NETWORK = "mcp-runner-egress"
RUNTIMES = ("runc", "runsc")


def parse_size(value: int | str) -> int:
    """Bytes from ``512m``, ``64MiB``, ``1g`` or a plain integer."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 512m, 64MiB, 1g)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: float | str) -> float:
    """Seconds from ``90d``, ``12h``, ``30m``, ``45s`` or a plain number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 90d, 12h, 30m, 45s)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def state_directory() -> Path:
    """Where the service keeps its state by default: $XDG_STATE_HOME/mcp-runner (~/.local/state/mcp-runner).

    A relative XDG_STATE_HOME is ignored, as the XDG specification asks: it would put the instance lock and
    the guard's memory wherever the service happened to be started, so two starts could miss each other's lock.
    """
    base = os.environ.get("XDG_STATE_HOME", "")
    return (Path(base) if Path(base).is_absolute() else Path.home() / ".local" / "state") / "mcp-runner"


def default_concurrent_boots() -> int:
    """Two boots per core: a boot spends part of its time waiting on the engine, so one per core leaves CPU idle."""
    return max(2, 2 * (os.cpu_count() or 1))


def local_path(text: str, base: Path) -> Path:
    """An absolute path for a path the operator wrote: ``~`` is their home (not a directory named ``~``), and a
    relative path is relative to ``base`` (the settings file's directory, or the working directory for the
    environment), fixed at load so the instance lock and the files beside it do not depend on where it is read.
    """
    return (base / Path(text).expanduser()).absolute()


def resolved_path(text: str, base: Path) -> str:
    """``text`` against ``base`` with its symlinks resolved, as the engine binds it; one that cannot be resolved
    (a symlink loop) stays as written, made absolute, so the checks that stat it name its fault at its key."""
    path = base / text
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):  # RuntimeError: Python before 3.13 reports a loop as "Symlink loop from …"
        return os.path.normpath(path.absolute())


def default_audit_path(instance: str, state_dir: Path | None = None) -> Path:
    """One audit file per instance, so two services on one machine never contend for one chain."""
    return (state_dir or state_directory()) / f"audit-{instance}.sqlite3"


@dataclass(frozen=True)
class AuditConfig:
    """The audit log: where, for how long, and where records go before retention deletes them."""

    path: Path = field(default_factory=lambda: default_audit_path("default"))
    enabled: bool = True
    """Off only for benchmarks: nothing is recorded, and the service says so when it starts."""
    retention_s: float | None = None
    """Records older than this are exported to ``export_dir``, then deleted; None keeps them forever."""
    export_dir: Path | None = None
    """None: ``<path's directory>/audit-exports``."""
    fsync_intents: bool = False
    """True: each ``request.intent`` (and each queued note: policy, findings, egress) is fsync'd on its own, the
    intent before its message is sent. False (the default): they are committed (in the WAL, so they survive the
    service's crash) without a sync of their own, and made durable on disk by the fsync of the outcome record that
    follows, before the answer leaves: one fsync per request instead of two or three."""

    @property
    def exports(self) -> Path:
        return self.export_dir or self.path.parent / "audit-exports"


@dataclass(frozen=True)
class Limits:
    """Resource and time limits of one sandbox. Profile values are also the ceilings a caller may not exceed."""

    memory_bytes: int = 512 * 1024**2
    cpus: float = 1.0
    pids: int = 128
    tmpfs_bytes: int = 64 * 1024**2
    call_timeout_s: float = 60.0
    idle_timeout_s: float = 600.0
    max_lifetime_s: float = 3600.0
    workspace_bytes: int = 0
    """A writable, sized, per-session ``/workspace`` (tmpfs / memory ``emptyDir``), counted toward the memory limit;
    0: none. Set by the profile's ``workspace:``; a caller cannot change it."""


WORKSPACE_PATH = "/workspace"
WORKSPACE_ENV = "WORKSPACE"
"""Set to ``WORKSPACE_PATH`` in a sandbox that has a workspace; its working directory stays the image's."""
MAX_WORKSPACE_BYTES = 1024**3


@dataclass(frozen=True)
class Mount:
    """A host file or directory bound into the sandbox: read-only unless the profile says ``writable: true``."""

    source: str
    target: str
    writable: bool = False


SANDBOX_OWNED_PATHS = MappingProxyType({
    "/tmp": "the sandbox's own tmpfs", "/opt/agent": "the runner's agent", "/usr/bin/tini": "the sandbox's init",
    "/proc": "the container runtime's", "/sys": "the container runtime's", "/dev": "the container runtime's",
})  # fmt: skip
"""Paths in every sandbox that a mount may neither replace nor hide (by mounting over a directory above them)."""
_OWNED_WITH_ALL_BELOW = ("/opt/agent", "/proc", "/sys")
"""Of those, the ones nothing may be mounted inside either (a bind inside /tmp or /dev is fine)."""


def mount_target(value: str) -> str:
    """``value`` as a mount target, normalized (``/data/./x/`` is ``/data/x``); ValueError saying why a sandbox
    cannot have it: relative, '..', a ':' (Docker reads binds as SOURCE:TARGET:MODE), or a path it owns."""
    if not value.startswith("/") or ".." in value.split("/"):
        raise ValueError("target must be an absolute path without '..'")
    target = "/" + "/".join(part for part in value.split("/") if part not in ("", "."))
    if ":" in target:
        raise ValueError(f"target {printable(target, 200)!r} holds a ':', which Docker cannot bind; choose a path "
                         "without one")
    for owned, what in SANDBOX_OWNED_PATHS.items():
        if owned == target or owned.startswith(target.rstrip("/") + "/") or (
            owned in _OWNED_WITH_ALL_BELOW and target.startswith(owned + "/")
        ):
            raise ValueError(f"target {printable(target, 200)} would cover {owned}, {what}; mount it elsewhere "
                             "(e.g. under /srv or /data)")
    return target


@dataclass(frozen=True)
class SecretSource:
    """Where the service reads a secret when a session starts: an environment variable or a file."""

    env: str | None = None
    file: str | None = None

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"


@dataclass(frozen=True)
class Credential:
    """A header the egress proxy adds to a host's requests; the sandbox never holds the value."""

    header: str
    source: SecretSource
    template: str = "{}"
    """The header value, with ``{}`` standing for the secret (e.g. ``Bearer {}``)."""


@dataclass(frozen=True)
class EgressRule:
    """One allowed ``host:port`` (a name, ``*.``-wildcard or IP literal) for a session's egress proxy."""

    host: str
    port: int
    private: bool = False
    """May resolve to loopback, private, link-local or metadata addresses (refused otherwise)."""
    credentials: tuple[Credential, ...] = ()

    def proxy_rule(self, headers: tuple[tuple[str, str], ...] = ()) -> Rule:
        return Rule(host=self.host, port=self.port, private=self.private, headers=headers)


@dataclass(frozen=True)
class NetworkPolicy:
    """A session with network: an internal Docker network whose only way out is an egress proxy."""

    egress: tuple[EgressRule, ...]
    upstream: str = DEFAULT_UPSTREAM_NETWORK
    """The Docker network the proxy reaches out through (created on demand if it is the default)."""

    def allows(self, host: str, port: int) -> EgressRule | None:
        return next((rule for rule in self.egress if rule.proxy_rule().matches(host, port)), None)


@dataclass(frozen=True)
class Profile:
    name: str
    image: str
    """A runner image name (``python-servers``, ``node-servers``) or a full image reference."""
    command: tuple[str, ...]
    """The stdio MCP server to run; empty for a remote server (``remote_url``)."""
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    mounts: tuple[Mount, ...] = ()
    limits: Limits = Limits()
    description: str = ""
    secrets: Mapping[str, SecretSource] = field(default_factory=lambda: MappingProxyType({}))
    """Container environment variable -> where the service holds its value."""
    sanitize: SanitizeConfig = SanitizeConfig()
    pins: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Tool name -> ``sha256:`` fingerprint its definition must keep."""
    network: NetworkPolicy | None = None
    """None: the sandbox has only a loopback interface."""
    remote_url: str | None = None
    """A Streamable HTTP MCP server the in-sandbox client reaches through the egress proxy."""
    runtime: str = "runc"
    """The OCI runtime: ``runc`` or ``runsc`` (gVisor)."""
    roots: tuple[str, ...] | None = None
    """``file://`` URIs the runner answers the server's ``roots/list`` with itself (runner/roots.py); None: the
    caller's client is asked."""
    package: str | None = None
    """``package:`` normalized (``pypi:NAME==VERSION``, ``npm:NAME@VERSION``, or without a version: the newest built
    here); ``image`` then holds the same spec, which the backends resolve to the image built from it."""
    inject_agent: bool = False
    """``image`` then holds ``with-agent:REF``: the user's REF with the agent added in a derived image."""


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    """Server certificate chain (PEM)."""
    key: Path
    """Server private key (PEM)."""
    client_ca: Path | None = None
    """Set: mutual TLS; clients must present a certificate signed by this CA."""


@dataclass(frozen=True)
class AuthConfig:
    """How callers prove who they are; neither means everyone is ``anonymous`` (loopback only)."""

    mtls: bool = False
    """Identity from the verified client certificate."""
    tokens: bool = False
    """Identity from ``authorization: Bearer <token>``, checked against hashes in the policy file."""

    @property
    def anonymous(self) -> bool:
        return not (self.mtls or self.tokens)


BACKENDS = ("docker", "kubernetes")
DEFAULT_KUBECONFIG = Path("~/.kube/mcp-runner-test.yaml")
"""Where `make kubernetes` writes the test cluster's kubeconfig: the Kubernetes backend's default."""


@dataclass(frozen=True)
class KubernetesConfig:
    """Where the Kubernetes backend places sessions: a cluster (kubeconfig or in-cluster) and a namespace."""

    kubeconfig: Path | None = None
    """None: the in-cluster configuration (the service's own ServiceAccount)."""
    context: str | None = None
    namespace: str = "mcp-runner"
    runtime_classes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({"runsc": "gvisor"}))
    """A profile's ``runtime`` -> the RuntimeClass its pods run with; ``runc`` is the node's default runtime."""
    registry: str | None = None
    """Images are pulled as ``REGISTRY/NAME:TAG`` (pushed by `mcp-runner images push`); None: they were loaded into
    the nodes' runtime (`mcp-runner images load --kubernetes`) and are never pulled."""
    api_timeout_s: float = 10.0
    """The longest one call to the API server may take before the backend reports it unavailable."""


@dataclass(frozen=True)
class McpHttpConfig:
    """The MCP front door over Streamable HTTP (``runner.door``), served beside gRPC at ``/mcp/<profile>``."""

    listen: str = DEFAULT_MCP_LISTEN
    """``host:port``; empty: no HTTP door."""
    session_idle_timeout_s: float = 600.0
    """A stateful MCP session (and its sandbox) with no request in flight for this long is closed."""
    lease_idle_timeout_s: float = 300.0
    """A stateless (2026-07-28) caller's sandbox lease unused for this long is closed."""
    max_body_bytes: int = 4 * 1024**2
    """Larger request bodies are refused with 413 before they are parsed."""


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class LogConfig:
    """The service's own log (``runner.observe.logs``): on stderr, one line per record."""

    level: str = "info"
    """One of ``LOG_LEVELS``."""
    format: str = "text"
    """``text`` (for people) or ``json`` (one JSON object per line, for collectors)."""


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics at ``/metrics`` on the MCP door's listener (``runner.observe``)."""

    public: bool = False
    """Scrapes need no credentials even where callers must authenticate (tokens); mTLS still needs a certificate."""


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry traces exported over OTLP/gRPC (``runner.observe.tracing``); ``Settings.tracing`` None: off."""

    endpoint: str
    """The collector, ``http://host:port`` (plaintext) or ``https://host:port``."""
    service_name: str = "mcp-runner"
    sample_ratio: float = 1.0
    """The share of traces kept, 0 to 1 (by trace id, so a trace is kept or dropped whole)."""
    insecure: bool = True
    """Plaintext gRPC to the collector; False: TLS, trusting the system's CAs."""
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """gRPC metadata sent with every export (a collector's API key, say)."""


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    instance: str = "default"
    """Names this service's containers; the orphan sweep at start-up only touches its own instance."""
    max_sessions: int = 256
    """Sessions open at once (starting or ready); warm sandboxes not counted. A ``time`` session holds about 52 MiB:
    256 of them about 13 GiB, and 200 opened at once boot in turn (``max_concurrent_boots``) within a minute or two
    on two cores. Lower it on a small machine."""
    max_message_bytes: int = 4 * 1024**2
    stderr_tail_bytes: int = 8 * 1024
    open_timeout_s: float = 60.0
    """How long a sandbox may take from the start of its boot to ready (a wait for a boot slot is not counted)."""
    max_concurrent_boots: int = field(default_factory=default_concurrent_boots)
    """Sandboxes booting at once (cold opens and pool refills); further opens wait their turn, within their
    caller's deadline (or ``open_queue_timeout_s`` without one)."""
    open_queue_timeout_s: float = 300.0
    """The longest an open without a deadline of its own waits for a boot slot."""
    pool: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Profile name -> warm sandboxes kept ready for it (booted, initialized, tools listed, never used)."""
    reap_interval_s: float = 5.0
    shutdown_grace_s: float = 5.0
    profiles: Mapping[str, Profile] = field(default_factory=lambda: MappingProxyType({}))
    tls: TlsConfig | None = None
    auth: AuthConfig = AuthConfig()
    policy: Path | None = None
    """The policy file (callers, tool rules, rates); None: the embedded single-developer default."""
    audit: AuditConfig = AuditConfig()
    backend: str = "docker"
    """Where sandboxes run: ``docker`` (this machine's engine) or ``kubernetes`` (pods, see ``kubernetes``)."""
    kubernetes: KubernetesConfig = KubernetesConfig(kubeconfig=DEFAULT_KUBECONFIG.expanduser())
    mcp_http: McpHttpConfig = McpHttpConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig | None = None
    """OpenTelemetry traces; None: none (no exporter, no thread, no network)."""
    state_dir: Path = field(default_factory=state_directory)
    """This machine's per-instance state (the instance lock; the guard's store), shared by every instance here."""
    config_file: Path | None = None
    """The settings file read (None: the built-in settings alone), named by start-up's configuration checks."""


def problems(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """pydantic's errors as ``field.path: message; …`` for a person fixing the file; with the ``model`` that was
    validated, an unknown key also names the closest known one (``runner.did_you_mean``)."""
    return "; ".join(f"{where}: {message}" for where, message in problem_list(exc, model))


def problem_list(exc: ValidationError, model: type[BaseModel] | None = None) -> list[tuple[str, str]]:
    """pydantic's errors as ``(field.path, message)`` pairs, in its order."""
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden" and model is not None:
            message = unknown_key_message(model, err["loc"], message)
        out.append((where, message))
    return out
