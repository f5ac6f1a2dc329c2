"""The settings file's ``log:`` and ``metrics:`` keys and the log's environment overrides.

Apart from ``runner.settings_file`` only for size, like ``runner.settings_mcp_http``: validated by pydantic, read
into the frozen ``LogConfig`` and ``MetricsConfig`` of ``runner.config``. ``serve --log-level/--log-format`` set
the environment variables, so an option wins over the environment, which wins over the file. Whichever gives them,
a level or format is read by ``log_word``: case and surrounding blanks do not matter (``INFO`` is ``info``).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from runner.config import LOG_FORMATS, LOG_LEVELS, ConfigError, LogConfig, MetricsConfig

LEVEL_VARIABLE = "MCP_RUNNER_LOG_LEVEL"
FORMAT_VARIABLE = "MCP_RUNNER_LOG_FORMAT"


class LogModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _word(cls, value: object) -> object:
        return log_word(value) if isinstance(value, str) else value

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


def log_word(value: str) -> str:
    """A log level or format as the file, the environment and ``serve``'s options give it, in the form checked."""
    return value.strip().lower()


def _chosen(variable: str, what: str, configured: str, allowed: tuple[str, ...]) -> str:
    given = os.environ.get(variable)
    if not given:
        return configured
    value = log_word(given)
    if value not in allowed:
        raise ConfigError(f"{variable}={given[:40]!r}: the log {what} is one of {', '.join(allowed)}")
    return value
