"""The settings file's ``mcp_http:`` key (the MCP front door over Streamable HTTP) and its environment override.

Apart from ``runner.settings_file`` only for size, like ``runner.settings_kubernetes``: validated by pydantic,
read into the frozen ``McpHttpConfig`` of ``runner.config``.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runner.config import DEFAULT_MCP_LISTEN, McpHttpConfig, parse_size
from runner.host_port import host_port

MIN_BODY_BYTES = 1024
MAX_BODY_BYTES = 256 * 1024**2


class McpHttpModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    listen: str = DEFAULT_MCP_LISTEN
    """``host:port``; ``""`` turns the HTTP door off."""
    session_idle_timeout_s: float = Field(default=McpHttpConfig.session_idle_timeout_s, gt=0, le=86400)
    lease_idle_timeout_s: float = Field(default=McpHttpConfig.lease_idle_timeout_s, gt=0, le=86400)
    max_body_bytes: int | str = McpHttpConfig.max_body_bytes

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value.strip():
            host_port(value.strip(), "the address")
        return value

    @field_validator("max_body_bytes")
    @classmethod
    def _body_cap(cls, value: int | str) -> int | str:
        if not MIN_BODY_BYTES <= parse_size(value) <= MAX_BODY_BYTES:
            raise ValueError("must be between 1k and 256m")
        return value

    def config(self, listen: str | None = None) -> McpHttpConfig:
        """``listen`` (``serve --mcp-listen``), else env MCP_RUNNER_MCP_LISTEN, else the file's; ``""`` is off."""
        env_listen = os.environ.get("MCP_RUNNER_MCP_LISTEN")
        for origin, chosen in (("--mcp-listen", listen), ("MCP_RUNNER_MCP_LISTEN", env_listen)):
            if chosen is not None:
                if chosen.strip():  # the file's own was checked as it loaded
                    host_port(chosen.strip(), origin)
                break
        else:
            chosen = self.listen
        return McpHttpConfig(
            listen=chosen.strip(),
            session_idle_timeout_s=self.session_idle_timeout_s,
            lease_idle_timeout_s=self.lease_idle_timeout_s,
            max_body_bytes=parse_size(self.max_body_bytes),
        )
