#!/usr/bin/env python3
"""A minimal MCP stdio server (stdlib only, 2025-11-25) whose one tool, ``meta``, answers with the ``_meta`` its
tools/call request carried, as JSON text: what the runner sent the server (tests/integration/test_tracing.py)."""

from __future__ import annotations

import json
import sys
from typing import Any

TOOL = {"name": "meta", "description": "the request's _meta", "inputSchema": {"type": "object"}}


def answer(params: dict[str, Any], method: str) -> dict[str, Any] | None:
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion", "2025-11-25"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "meta-echo", "version": "1.0.0"},
        }
    if method == "tools/list":
        return {"tools": [TOOL]}
    if method == "tools/call":
        return {"content": [{"type": "text", "text": json.dumps(params.get("_meta") or {})}], "isError": False}
    if method == "ping":
        return {}
    return None


def main() -> None:
    for line in sys.stdin:
        message = json.loads(line)
        if "id" not in message or "method" not in message:
            continue  # a notification or a response
        result = answer(message.get("params") or {}, message["method"])
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        if result is None:
            reply["error"] = {"code": -32601, "message": f"method not found: {message['method']}"}
        else:
            reply["result"] = result
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
