"""The settings file's ``tracing:`` key (OpenTelemetry traces over OTLP/gRPC) and the standard OTEL_* environment.

Apart from ``runner.settings_file`` only for size, like ``runner.settings_mcp_http``: validated by pydantic, read
into the frozen ``TracingConfig`` of ``runner.config``, or None: off.

Off unless configured: tracing is on when the file has a ``tracing:`` key or the environment names a collector
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else ``OTEL_EXPORTER_OTLP_ENDPOINT``), as every OpenTelemetry SDK reads
it; the environment's endpoint and ``OTEL_SERVICE_NAME`` win over the file's, as the runner's own variables do.
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off whatever the file says.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runner.config import ConfigError, TracingConfig

DEFAULT_ENDPOINT = "http://127.0.0.1:4317"
MAX_HEADERS = 32
_HEADER_KEY = re.compile(r"[0-9a-z_.\-]{1,64}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{0,4096}")
_SERVICE_NAME = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,127}")
ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class TracingModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    otlp_endpoint: str = DEFAULT_ENDPOINT
    """The OTLP/gRPC collector: ``http://host:port`` (plaintext) or ``https://host:port`` (TLS)."""
    service_name: str = "mcp-runner"
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    insecure: bool | None = None
    """None: as the endpoint's scheme says (http plaintext, https TLS)."""
    headers: dict[str, str] = {}

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return checked_endpoint(value)

    @field_validator("service_name")
    @classmethod
    def _service_name(cls, value: str) -> str:
        if not _SERVICE_NAME.fullmatch(value):
            raise ValueError("must be 1-128 printable ASCII characters")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_HEADERS:
            raise ValueError(f"at most {MAX_HEADERS} headers")
        for key, text in value.items():
            if not _HEADER_KEY.fullmatch(key) or key.startswith("grpc-"):
                raise ValueError(
                    f"header {key!r}: gRPC metadata keys are lowercase letters, digits, '_', '.' or '-' (at most "
                    "64), not starting with 'grpc-'"
                )
            if not _HEADER_VALUE.fullmatch(text):
                raise ValueError(f"header {key!r}: the value must be printable ASCII, at most 4096 characters")
        return value


def checked_endpoint(value: str) -> str:
    """``scheme://host:port`` with scheme http or https and nothing else; ValueError saying what is wrong."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise ValueError(f"{value!r}: use http://HOST:PORT (plaintext) or https://HOST:PORT (TLS), e.g. "
                         f"{DEFAULT_ENDPOINT}")  # fmt: skip
    if parts.username or parts.password or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{value!r}: an OTLP/gRPC endpoint is only scheme://HOST:PORT (no credentials, path or query)")
    return value.strip()


def tracing_config(model: TracingModel | None, environ: Mapping[str, str] | None = None) -> TracingConfig | None:
    """The file's ``tracing:`` (None: absent) under the OTEL_* environment; None: tracing is off.

    ConfigError names the variable when the environment is wrong; ValueError (the file's mistake) names the key."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    named = [(name, env[name]) for name in ENDPOINT_ENVS if env.get(name, "").strip()]
    if model is None and not named:
        return None
    chosen = model or TracingModel()
    endpoint = chosen.otlp_endpoint
    if named:
        name, text = named[0]
        try:
            endpoint = checked_endpoint(text)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    service_name = env.get("OTEL_SERVICE_NAME", "").strip() or chosen.service_name
    if not _SERVICE_NAME.fullmatch(service_name):
        raise ConfigError(f"OTEL_SERVICE_NAME={service_name[:40]!r}: must be 1-128 printable ASCII characters")
    plaintext = endpoint.startswith("http://")
    if chosen.insecure is not None and chosen.insecure != plaintext:
        raise ValueError(
            f"tracing.insecure: {str(chosen.insecure).lower()} contradicts the endpoint {endpoint!r}: plaintext "
            "needs http://, TLS needs https:// (or leave insecure out)"
        )
    return TracingConfig(
        endpoint=endpoint,
        service_name=service_name,
        sample_ratio=chosen.sample_ratio,
        insecure=plaintext,
        headers=MappingProxyType(dict(chosen.headers)),
    )
