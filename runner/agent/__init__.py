"""The in-container agent: an MCP client (over the ``mcp`` SDK) bridging the host to one stdio server.

Runs INSIDE the sandbox as ``python -m runner.agent -- CMD ARGS...``. It may
import only the ``mcp``/``mcp_types`` packages, anyio and the standard library:
it is copied into the image without the rest of ``runner``. The wire contract
with the host is ``docs/agent-protocol.md``.

Nothing is imported here on purpose: start-up latency counts towards every
session's open time, so the SDK is loaded lazily (see ``_sdk.py``).
"""
