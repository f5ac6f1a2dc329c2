#!/usr/bin/env python3
"""A Streamable HTTP MCP server on loopback for the agent's remote-mode tests (the mcp SDK's MCPServer).

Usage: http_mcp_server.py PORT. Tools: add(a, b) and whoami() (the Authorization
header it received, so a test can see what the proxy added).
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("http-test-server")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def whoami(ctx: Context) -> str:
    """The Authorization header of this request, or "anonymous"."""
    return str((ctx.headers or {}).get("authorization", "anonymous"))


if __name__ == "__main__":
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
