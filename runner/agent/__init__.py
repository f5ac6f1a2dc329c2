"""The in-container agent: an MCP client bridging the host to one MCP server.

Runs INSIDE the sandbox as ``python -m runner.agent -- CMD ARGS...`` (a stdio
server it spawns) or ``-- --url URL`` (a remote Streamable HTTP server). It is
copied into the image without the rest of ``runner``. The stdio path uses the
standard library only; the remote path alone imports the ``mcp`` SDK (and
anyio, httpx2), lazily. The wire contract with the host is
``docs/agent-protocol.md``.

Nothing is imported here on purpose: start-up latency counts towards every
session's open time.
"""
