"""mcp-sandbox-runner: untrusted MCP servers, one hardened container per session, behind a gRPC API.

Public names for Python callers. (Inside a sandbox image this file is replaced
by an empty one: the agent there depends on the mcp SDK and the stdlib only.)
"""

from runner.client import AsyncRunnerClient, RunnerClient
from runner.errors import RunnerError

__all__ = ["AsyncRunnerClient", "RunnerClient", "RunnerError"]
