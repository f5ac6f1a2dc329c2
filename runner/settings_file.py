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
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runner.config import (
    DEFAULT_LISTEN,
    AuditConfig,
    AuthConfig,
    ConfigError,
    Limits,
    Profile,
    Settings,
    TlsConfig,
    default_audit_path,
    default_concurrent_boots,
    local_path,
    parse_duration,
    parse_size,
    problem_list,
    problems,
    state_directory,
)
from runner.config_document import read_document
from runner.did_you_mean import closest
from runner.host_port import grpc_listen
from runner.settings_kubernetes import KubernetesModel, chosen_backend
from runner.settings_log import LogModel, MetricsModel
from runner.settings_mcp_http import McpHttpModel
from runner.settings_profiles import LimitsModel, ProfileModel, profiles_from
from runner.settings_tracing import TracingModel, tracing_config

_INSTANCE = re.compile(r"^[a-zA-Z0-9_.-]{1,64}$")
BUILTIN_PROFILES = Path(__file__).parent / "profiles" / "builtin.yaml"


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
    defaults: LimitsModel = LimitsModel()
    profiles: dict[str, ProfileModel] = {}


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
        profiles = profiles_from(builtin.profiles, BUILTIN_PROFILES.parent, defaults) if user.builtin_profiles else {}
        profiles.update(profiles_from(user.profiles, user_path.resolve().parent, defaults))
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
