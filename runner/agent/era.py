"""Which protocol era the agent speaks with its server, and what the 2026-07-28 era asks of each request. Stdlib only.

The 2025-11-25 era is the initialize handshake: client capabilities are declared once. The 2026-07-28 era is
stateless: no handshake, ``server/discover`` tells the server's capabilities, and every request carries the
protocol version and the client's capabilities in its ``_meta`` (keys as ``mcp_types`` names them:
``PROTOCOL_VERSION_META_KEY``, ``CLIENT_INFO_META_KEY``, ``CLIENT_CAPABILITIES_META_KEY``). The host asks for
an era through ``MCP_AGENT_PROTOCOL``: the era of the caller's own client (docs/agent-protocol.md).
"""

from __future__ import annotations

import os

from .frames import diag

TYPE_CHECKING = False  # typing costs the agent's start-up; mypy reads the names below all the same
if TYPE_CHECKING:
    from typing import Any

    JSON = dict[str, Any]

HANDSHAKE = "2025-11-25"
MODERN = "2026-07-28"
PROTOCOL_ENV = "MCP_AGENT_PROTOCOL"
ERAS = (HANDSHAKE, MODERN)

CLIENT_INFO = {"name": "mcp-sandbox-runner-agent", "version": "1.0.0"}
#: What the agent can relay to the host's caller (which may still decline each request: the host answers then).
CLIENT_CAPABILITIES: JSON = {"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {"listChanged": True}}

PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
#: The server's identity when its discover result does not state it (the stamp is optional; serverInfo is not).
UNNAMED_SERVER = {"name": "", "version": ""}


def wanted_era() -> str:
    """The era the host asked for (``MCP_AGENT_PROTOCOL``), else the handshake era."""
    raw = os.environ.get(PROTOCOL_ENV, "")
    if raw and raw not in ERAS:
        diag(f"ignoring invalid {PROTOCOL_ENV}={raw!r}; speaking {HANDSHAKE}")
    return raw if raw in ERAS else HANDSHAKE


def stamped(params: JSON, capabilities: JSON | None) -> JSON:
    """``params`` with the 2026-07-28 envelope in its ``_meta`` (other ``_meta`` keys kept): the agent's version
    and identity, and ``capabilities`` (the agent's own set when None)."""
    meta = params.get("_meta")
    envelope = {
        **(meta if isinstance(meta, dict) else {}),
        PROTOCOL_VERSION_KEY: MODERN,
        CLIENT_INFO_KEY: CLIENT_INFO,
        CLIENT_CAPABILITIES_KEY: CLIENT_CAPABILITIES if capabilities is None else capabilities,
    }
    return {**params, "_meta": envelope}


def as_initialize_result(discovered: JSON) -> JSON | None:
    """The InitializeResult-shaped object the ``ready`` frame carries for a ``server/discover`` result, or None when
    the result is no evidence of a 2026-07-28 server (then the agent initializes, as the SDK's client does)."""
    versions, capabilities = discovered.get("supportedVersions"), discovered.get("capabilities")
    if not (isinstance(versions, list) and MODERN in versions and isinstance(capabilities, dict)):
        return None
    meta = discovered.get("_meta")
    server_info = meta.get(SERVER_INFO_KEY) if isinstance(meta, dict) else None
    result: JSON = {
        "protocolVersion": MODERN,
        "capabilities": capabilities,
        "serverInfo": server_info if isinstance(server_info, dict) else UNNAMED_SERVER,
    }
    if isinstance(discovered.get("instructions"), str):
        result["instructions"] = discovered["instructions"]
    return result
