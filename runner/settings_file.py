"""The settings file (YAML or TOML) and the environment, read into ``Settings``: the trust boundary of config.

pydantic validates what people wrote (unknown keys refused, sizes and durations parsed, paths made absolute
against the file's directory); the rest of the runner only sees the frozen records of ``runner.config`` that
``load_settings`` produces. Built-in profiles for the six shipped servers live in ``profiles/builtin.yaml``;
a user's file adds profiles or replaces built-ins by name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runner.config import (
    DEFAULT_LISTEN,
    DEFAULT_UPSTREAM_NETWORK,
    MAX_WORKSPACE_BYTES,
    AuditConfig,
    AuthConfig,
    ConfigError,
    Credential,
    EgressRule,
    Limits,
    Mount,
    NetworkPolicy,
    Profile,
    SecretSource,
    Settings,
    TlsConfig,
    default_audit_path,
    default_concurrent_boots,
    local_path,
    mount_target,
    parse_duration,
    parse_size,
    problem_list,
    problems,
    resolved_path,
    state_directory,
)
from runner.config_document import read_document
from runner.did_you_mean import closest
from runner.egress.rules import check_header_name, header_value_problem, parse_host_pattern, parse_target
from runner.guard.sanitize import DEFAULT_REDACTIONS, DETECTORS, SanitizeConfig
from runner.host_port import grpc_listen
from runner.package_spec import injected_image, is_package, parse_package, uninjected
from runner.roots import profile_roots
from runner.settings_kubernetes import KubernetesModel, chosen_backend
from runner.settings_log import LogModel, MetricsModel
from runner.settings_mcp_http import McpHttpModel
from runner.settings_tracing import TracingModel, tracing_config

_INSTANCE = re.compile(r"^[a-zA-Z0-9_.-]{1,64}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_PIN = re.compile(r"^sha256:[0-9a-f]{64}$")
_DOCKER_NETWORK = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
BUILTIN_PROFILES = Path(__file__).parent / "profiles" / "builtin.yaml"

class _LimitsModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    memory: int | str | None = None
    cpus: float | None = Field(default=None, gt=0, le=64)
    pids: int | None = Field(default=None, ge=8, le=65536)
    tmpfs: int | str | None = None
    call_timeout_s: float | None = Field(default=None, gt=0)
    idle_timeout_s: float | None = Field(default=None, gt=0)
    max_lifetime_s: float | None = Field(default=None, gt=0)

    @field_validator("memory", "tmpfs")
    @classmethod
    def _size(cls, value: int | str | None) -> int | str | None:
        if value is not None and parse_size(value) < 4 * 1024**2:
            raise ValueError("must be at least 4m")
        return value

    def apply(self, base: Limits) -> Limits:
        return Limits(
            memory_bytes=parse_size(self.memory) if self.memory is not None else base.memory_bytes,
            cpus=self.cpus if self.cpus is not None else base.cpus,
            pids=self.pids if self.pids is not None else base.pids,
            tmpfs_bytes=parse_size(self.tmpfs) if self.tmpfs is not None else base.tmpfs_bytes,
            call_timeout_s=self.call_timeout_s if self.call_timeout_s is not None else base.call_timeout_s,
            idle_timeout_s=self.idle_timeout_s if self.idle_timeout_s is not None else base.idle_timeout_s,
            max_lifetime_s=self.max_lifetime_s if self.max_lifetime_s is not None else base.max_lifetime_s,
        )


class _MountModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1)
    target: str
    writable: bool = False

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        return mount_target(value)


class _SecretModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env: str | None = Field(default=None, pattern=_ENV_NAME.pattern)
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> _SecretModel:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret names exactly one of `env` or `file`")
        return self

    def source(self, base: Path) -> SecretSource:
        return SecretSource(env=self.env, file=resolved_path(self.file, base) if self.file else None)


class _SanitizeModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    redact: list[str] = ["default"]
    """Detector names; ``default`` stands for every detector on by default."""
    injection: str = Field(default="flag", pattern="^(flag|block)$")

    @field_validator("redact")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - DETECTORS - {"default"})
        if unknown:
            raise ValueError(f"unknown detector(s) {unknown}; known: default, {', '.join(sorted(DETECTORS))}")
        return names

    def config(self) -> SanitizeConfig:
        names = set(self.redact)
        if "default" in names:
            names = (names - {"default"}) | DEFAULT_REDACTIONS
        return SanitizeConfig(enabled=self.enabled, redact=frozenset(names), injection_action=self.injection)


class _CredentialModel(_SecretModel):
    template: str = "{}"

    @field_validator("template")
    @classmethod
    def _one_slot(cls, value: str) -> str:
        if value.count("{}") != 1:
            raise ValueError("must contain `{}` (where the secret goes) exactly once")
        problem = header_value_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def credential(self, header: str, base: Path) -> Credential:
        return Credential(header=header, source=self.source(base), template=self.template)


class _EgressRuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str
    port: int = Field(ge=1, le=65535)
    private: bool = False
    headers: dict[str, _CredentialModel] = {}

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return parse_host_pattern(value)

    @field_validator("headers")
    @classmethod
    def _names_the_proxy_accepts(cls, headers: dict[str, _CredentialModel]) -> dict[str, _CredentialModel]:
        for name in headers:
            check_header_name(name)
        return headers

    def rule(self, base: Path) -> EgressRule:
        credentials = tuple(model.credential(name, base) for name, model in self.headers.items())
        return EgressRule(host=self.host, port=self.port, private=self.private, credentials=credentials)


class _NetworkModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    egress: list[_EgressRuleModel] = Field(min_length=1)
    """Entries are ``host:port`` strings or mappings with ``private`` and ``headers``."""
    upstream: str = Field(default=DEFAULT_UPSTREAM_NETWORK, pattern=_DOCKER_NETWORK.pattern)

    @field_validator("egress", mode="before")
    @classmethod
    def _strings(cls, entries: Any) -> Any:
        if not isinstance(entries, list):
            return entries
        out = []
        for entry in entries:
            if isinstance(entry, str):
                host, port = parse_target(entry)
                entry = {"host": host, "port": port}
            out.append(entry)
        return out

    def policy(self, base: Path) -> NetworkPolicy:
        return NetworkPolicy(egress=tuple(model.rule(base) for model in self.egress), upstream=self.upstream)


class _RemoteModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2048)


class _ProfileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str | None = None
    command: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    remote: _RemoteModel | None = None
    network: _NetworkModel | None = None
    runtime: Literal["runc", "runsc"] = "runc"
    env: dict[str, str] = {}
    mounts: list[_MountModel] = []
    limits: _LimitsModel = _LimitsModel()
    description: str = ""
    secrets: dict[Annotated[str, Field(pattern=_ENV_NAME.pattern)], _SecretModel] = {}
    sanitize: _SanitizeModel = _SanitizeModel()
    pins: dict[str, Annotated[str, Field(pattern=_PIN.pattern)]] = {}
    roots: list[str] | None = None
    package: str | None = None
    """``pypi:NAME[==VERSION]`` / ``npm:NAME[@VERSION]``: the server's image is built from it (image_packages)."""
    inject_agent: bool = False
    """The agent is added to ``image`` in a derived image (runner/image_inject)."""
    workspace: int | str | None = None
    """A writable per-session ``/workspace`` of this size (``64m``), removed with the session."""

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, value: int | str | None) -> int | str | None:
        if value is not None and not 1024**2 <= parse_size(value) <= MAX_WORKSPACE_BYTES:
            raise ValueError(f"must be between 1m and {MAX_WORKSPACE_BYTES // 1024**3}g")
        return value

    @field_validator("mounts")
    @classmethod
    def _distinct_targets(cls, mounts: list[_MountModel]) -> list[_MountModel]:
        targets = [m.target for m in mounts]
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise ValueError(f"two mounts have the target {twice[0]}: a sandbox can bind only one thing there")
        return mounts

    @field_validator("roots")
    @classmethod
    def _roots(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else list(profile_roots(value))

    @field_validator("package")
    @classmethod
    def _package(cls, value: str | None) -> str | None:
        return None if value is None else str(parse_package(value))

    @model_validator(mode="after")
    def _one_server(self) -> _ProfileModel:
        if self.package is not None:
            if self.image is not None or self.remote is not None or self.inject_agent:
                raise ValueError("a `package` server names no `image`, `remote` or `inject_agent`: its image is built "
                                 "from the package, with the agent")
            return self
        if self.image is not None and (is_package(self.image) or uninjected(self.image) is not None):
            raise ValueError(f"`image: {self.image}` is not an image reference; a registry package goes in `package:`, "
                             "and an image gets the agent with `inject_agent: true`")
        if self.inject_agent and self.image is None:
            raise ValueError("`inject_agent: true` adds the agent to an `image`: name the image")
        if self.inject_agent:
            if self.remote is not None:
                raise ValueError("`inject_agent` is for a stdio server in `image`, not a `remote` one")
            return self  # no `command`: the image's own ENTRYPOINT and CMD
        if (self.command is None) == (self.remote is None):
            raise ValueError("name exactly one of `command` (a stdio server) or `remote` (a Streamable HTTP URL)")
        if self.command is not None and self.image is None:
            raise ValueError("`image` is required with `command`")
        if self.remote is not None and self.network is None:
            raise ValueError("a `remote` server needs `network.egress` allowing its host:port")
        return self


def _remote_url(url: str, network: NetworkPolicy) -> str:
    """The URL, checked: http(s), no user info, and its host:port allowed by the profile's egress rules."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"remote.url {url!r}: use an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("remote.url: no credentials in the URL; attach them to its egress rule as `headers`")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ValueError(f"remote.url {url!r}: {exc}") from None
    try:
        host = parse_host_pattern(parts.hostname)
    except ValueError as exc:
        raise ValueError(f"remote.url: {exc}") from None
    rule = network.allows(host, port)
    if rule is None:
        raise ValueError(f"remote.url: {host}:{port} is not allowed by network.egress; add it there")
    if rule.credentials and parts.scheme == "https":
        raise ValueError(
            "remote.url: the egress proxy can add credentials only to http:// requests (it cannot see inside TLS)"
        )
    return url


class _TlsModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cert: str
    key: str
    client_ca: str | None = None


class _AuthModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: bool = False


class _AuditModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    path: str | None = Field(default=None, min_length=1)
    retention: float | str | None = None
    export_dir: str | None = Field(default=None, min_length=1)
    fsync_intents: bool = False

    @field_validator("retention")
    @classmethod
    def _positive(cls, value: float | str | None) -> float | str | None:
        if value is not None and parse_duration(value) <= 0:
            raise ValueError("must be longer than 0 s")
        return value

    def config(self, base: Path, instance: str, state_dir: Path) -> AuditConfig:
        env_path = os.environ.get("MCP_RUNNER_AUDIT_DB")
        if env_path:
            path = local_path(env_path, Path.cwd())
        elif self.path is not None:
            path = local_path(self.path, base)
        else:
            path = default_audit_path(instance, state_dir)
        return AuditConfig(
            path=path,
            enabled=self.enabled,
            retention_s=parse_duration(self.retention) if self.retention is not None else None,
            export_dir=local_path(self.export_dir, base) if self.export_dir is not None else None,
            fsync_intents=self.fsync_intents,
        )


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    listen: str | None = None
    instance: str | None = Field(default=None, pattern=_INSTANCE.pattern)
    state_dir: str | None = Field(default=None, min_length=1)
    max_sessions: int | None = Field(default=None, ge=1, le=10000)
    max_message_bytes: int | str | None = None
    open_timeout_s: float | None = Field(default=None, gt=0)
    max_concurrent_boots: int | None = Field(default=None, ge=1, le=1000)
    open_queue_timeout_s: float | None = Field(default=None, gt=0)
    pool: dict[str, int] | None = None
    reap_interval_s: float | None = Field(default=None, gt=0)
    builtin_profiles: bool = True
    tls: _TlsModel | None = None
    auth: _AuthModel = _AuthModel()
    policy: str | None = None
    audit: _AuditModel = _AuditModel()
    backend: str | None = None
    kubernetes: KubernetesModel = KubernetesModel()
    mcp_http: McpHttpModel = McpHttpModel()
    tracing: TracingModel | None = None
    log: LogModel = LogModel()
    metrics: MetricsModel = MetricsModel()

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return None if value is None else grpc_listen(value, "the address")

    @field_validator("max_message_bytes")
    @classmethod
    def _message_cap(cls, value: int | str | None) -> int | str | None:
        if value is not None and not 1024 <= parse_size(value) <= 256 * 1024**2:
            raise ValueError("must be between 1k and 256m")
        return value
    defaults: _LimitsModel = _LimitsModel()
    profiles: dict[str, _ProfileModel] = {}


SETTINGS_KEYS = frozenset(_FileModel.model_fields)
"""The keys a settings file may have at its top level."""


def _parse(path: Path, data: dict[str, Any]) -> _FileModel:
    try:
        return _FileModel.model_validate(data)
    except ValidationError as exc:
        found = problem_list(exc, _FileModel)
        if len(found) == 1:
            raise ConfigError(f"{path}: {problems(exc, _FileModel)}") from exc
        lines = "\n".join(f"  {path}: {where}: {message}" for where, message in found)
        raise ConfigError(f"{len(found)} problems in the settings file:\n{lines}") from exc


def file_problems(path: Path) -> list[tuple[str, str]]:
    """Every ``(key path, message)`` the settings file's schema finds, for ``mcp-runner config check`` to list one
    a line (``load_settings`` stops at the first stage that fails); ConfigError if it cannot be read at all."""
    try:
        _FileModel.model_validate(read_document(path, "settings file"))
    except ValidationError as exc:
        return problem_list(exc, _FileModel)
    return []


def _profiles(parsed: _FileModel, base: Path, defaults: Limits) -> dict[str, Profile]:
    out: dict[str, Profile] = {}
    for name, model in parsed.profiles.items():
        overlap = sorted(set(model.secrets) & set(model.env))
        if overlap:
            raise ValueError(f"profiles.{name}: {overlap} named both in env and in secrets")
        network = model.network.policy(base) if model.network is not None else None
        remote = None
        if model.remote is not None:
            assert network is not None
            try:
                remote = _remote_url(model.remote.url, network)
            except ValueError as exc:
                raise ValueError(f"profiles.{name}.{exc}") from None
        out[name] = Profile(
            name=name,
            image=model.package or (injected_image(model.image) if model.inject_agent and model.image else None)
            or model.image or "python-servers",
            package=model.package,
            inject_agent=model.inject_agent,
            command=tuple(model.command or ()),
            network=network,
            remote_url=remote,
            runtime=model.runtime,
            env=MappingProxyType(dict(model.env)),
            mounts=tuple(Mount(resolved_path(m.source, base), m.target, m.writable) for m in model.mounts),
            limits=replace(model.limits.apply(defaults), workspace_bytes=parse_size(model.workspace or 0)),
            description=model.description,
            secrets=MappingProxyType({key: secret.source(base) for key, secret in model.secrets.items()}),
            sanitize=model.sanitize.config(),
            pins=MappingProxyType(dict(model.pins)),
            roots=None if model.roots is None else tuple(model.roots),
        )
    return out


MAX_POOL_SIZE = 64


def _pool(builtin: _FileModel, user: _FileModel, profiles: Mapping[str, Profile]) -> dict[str, int]:
    """Warm sandboxes per profile: the user's ``pool`` replaces the built-in one whole (``pool: {}`` turns it off);
    the built-in one covers only the built-in profiles still in use."""
    if user.pool is not None:
        chosen = user.pool
        unknown = sorted(set(chosen) - set(profiles))
        if unknown:
            known = ", ".join(sorted(profiles)) or "none"
            meant = closest(unknown[0], sorted(profiles))
            hint = f"; did you mean `{meant}`?" if meant is not None else ""
            raise ValueError(f"pool: no profile named {', '.join(map(repr, unknown))} (known profiles: {known}){hint}")
    else:
        # A built-in profile the user's file replaced is the user's own: no warm sandboxes unless it asks.
        builtin_pool = builtin.pool if user.builtin_profiles and builtin.pool else {}
        chosen = {name: size for name, size in builtin_pool.items() if name in profiles and name not in user.profiles}
    bad = {name: size for name, size in chosen.items() if not 0 <= size <= MAX_POOL_SIZE}
    if bad:
        raise ValueError(f"pool: sizes must be 0 to {MAX_POOL_SIZE} ({bad})")
    return {name: size for name, size in chosen.items() if size > 0}


def _state_dir(user: _FileModel, base: Path) -> Path:
    """Env MCP_RUNNER_STATE_DIR, else the file's ``state_dir`` (relative to the file), else the XDG default.

    An empty MCP_RUNNER_STATE_DIR counts as unset (as an unset one would in a shell's ``${VAR:-...}``).
    """
    env_state = os.environ.get("MCP_RUNNER_STATE_DIR")
    if env_state:
        return local_path(env_state, Path.cwd())
    return local_path(user.state_dir, base) if user.state_dir else state_directory()


def load_settings(
    config_path: Path | str | None = None,
    *,
    listen: str | None = None,
    backend: str | None = None,
    mcp_listen: str | None = None,
) -> Settings:
    """Built-in profiles, then the user's file (``config_path`` or env MCP_RUNNER_CONFIG), then overrides.

    Relative mount sources resolve against the directory of the file that names them.
    """
    builtin = _parse(BUILTIN_PROFILES, read_document(BUILTIN_PROFILES, "settings file"))
    path_text = config_path or os.environ.get("MCP_RUNNER_CONFIG")
    user = _FileModel()
    user_path = Path(".")
    if path_text:
        user_path = Path(path_text)
        user = _parse(user_path, read_document(user_path, "settings file"))
    try:
        defaults = user.defaults.apply(Limits())
        profiles = _profiles(builtin, BUILTIN_PROFILES.parent, defaults) if user.builtin_profiles else {}
        profiles.update(_profiles(user, user_path.resolve().parent, defaults))
        max_message = user.max_message_bytes
        env_instance = os.environ.get("MCP_RUNNER_INSTANCE")
        if env_instance is not None and not _INSTANCE.fullmatch(env_instance):
            raise ConfigError(f"MCP_RUNNER_INSTANCE={env_instance!r}: use 1-64 letters, digits, '_', '.' or '-'")
        instance = env_instance or user.instance or "default"
        base = user_path.resolve().parent
        state_dir = _state_dir(user, base)
        env_listen = os.environ.get("MCP_RUNNER_LISTEN")
        origin, override = ("--listen", listen) if listen else ("MCP_RUNNER_LISTEN", env_listen)
        if override:  # the file's own `listen:` was checked as it loaded
            grpc_listen(override, origin)
        tls = None
        if user.tls is not None:
            tls = TlsConfig(
                cert=local_path(user.tls.cert, base),
                key=local_path(user.tls.key, base),
                client_ca=local_path(user.tls.client_ca, base) if user.tls.client_ca else None,
            )
        return Settings(
            tls=tls,
            auth=AuthConfig(mtls=tls is not None and tls.client_ca is not None, tokens=user.auth.tokens),
            policy=local_path(user.policy, base) if user.policy else None,
            listen=override or user.listen or DEFAULT_LISTEN,
            instance=instance,
            audit=user.audit.config(base, instance, state_dir),
            state_dir=state_dir,
            max_sessions=user.max_sessions or Settings.max_sessions,
            max_message_bytes=parse_size(max_message) if max_message else Settings.max_message_bytes,
            open_timeout_s=user.open_timeout_s or Settings.open_timeout_s,
            max_concurrent_boots=user.max_concurrent_boots or default_concurrent_boots(),
            open_queue_timeout_s=user.open_queue_timeout_s or Settings.open_queue_timeout_s,
            pool=MappingProxyType(_pool(builtin, user, profiles)),
            reap_interval_s=user.reap_interval_s or Settings.reap_interval_s,
            profiles=MappingProxyType(profiles),
            backend=chosen_backend(user.backend, backend),
            kubernetes=user.kubernetes.config(base),
            mcp_http=user.mcp_http.config(mcp_listen),
            tracing=tracing_config(user.tracing),
            config_file=user_path.resolve() if path_text else None,
            log=user.log.config(),
            metrics=user.metrics.config(),
        )
    except ValueError as exc:
        raise ConfigError(f"{user_path}: {exc}" if path_text else str(exc)) from exc
