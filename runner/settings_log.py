"""The settings file's ``log:`` and ``metrics:`` keys and the log's environment overrides.

Apart from ``runner.settings_file`` only for size, like ``runner.settings_mcp_http``: validated by pydantic, read
into the frozen ``LogConfig`` and ``MetricsConfig`` of ``runner.config``. ``serve --log-level/--log-format`` set
the environment variables, so an option wins over the environment, which wins over the file.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict

from runner.config import LOG_FORMATS, LOG_LEVELS, ConfigError, LogConfig, MetricsConfig

LEVEL_VARIABLE = "MCP_RUNNER_LOG_LEVEL"
FORMAT_VARIABLE = "MCP_RUNNER_LOG_FORMAT"


class LogModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"

    def config(self) -> LogConfig:
        """Env MCP_RUNNER_LOG_LEVEL / MCP_RUNNER_LOG_FORMAT, else the file's; an empty variable counts as unset."""
        return LogConfig(
            level=_chosen(LEVEL_VARIABLE, "level", self.level, LOG_LEVELS),
            format=_chosen(FORMAT_VARIABLE, "format", self.format, LOG_FORMATS),
        )


class MetricsModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public: bool = False
    """``/metrics`` answers without credentials even where callers must authenticate."""

    def config(self) -> MetricsConfig:
        return MetricsConfig(public=self.public)


def _chosen(variable: str, what: str, configured: str, allowed: tuple[str, ...]) -> str:
    given = os.environ.get(variable)
    if not given:
        return configured
    value = given.strip().lower()
    if value not in allowed:
        raise ConfigError(f"{variable}={given[:40]!r}: the log {what} is one of {', '.join(allowed)}")
    return value
