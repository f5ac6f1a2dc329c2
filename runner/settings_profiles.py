"""A settings file's ``profiles:`` (and ``defaults:``): the pydantic models of a profile, its limits, mounts,
secrets, sanitizing, network and remote server, and ``profiles_from``, which makes them ``runner.config.Profile``
records. Split from ``runner.settings_file``, which reads the whole file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runner.config import (
    DEFAULT_UPSTREAM_NETWORK,
    MAX_WORKSPACE_BYTES,
    Credential,
    EgressRule,
    Limits,
    Mount,
    NetworkPolicy,
    Profile,
    SecretSource,
    mount_target,
    parse_size,
    resolved_path,
)
from runner.egress.rules import check_header_name, header_value_problem, parse_host_pattern, parse_target
from runner.guard.sanitize import DEFAULT_REDACTIONS, DETECTORS, SanitizeConfig
from runner.package_spec import injected_image, is_package, parse_package, uninjected
from runner.roots import profile_roots

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_PIN = re.compile(r"^sha256:[0-9a-f]{64}$")
_DOCKER_NETWORK = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


class LimitsModel(BaseModel):
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


class ProfileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str | None = None
    command: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    remote: _RemoteModel | None = None
    network: _NetworkModel | None = None
    runtime: Literal["runc", "runsc"] = "runc"
    env: dict[str, str] = {}
    mounts: list[_MountModel] = []
    limits: LimitsModel = LimitsModel()
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
    def _one_server(self) -> ProfileModel:
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


def profiles_from(models: Mapping[str, ProfileModel], base: Path, defaults: Limits) -> dict[str, Profile]:
    """The ``Profile`` records of a file's ``profiles:`` (``base``: its directory, which relative paths are to)."""
    out: dict[str, Profile] = {}
    for name, model in models.items():
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
