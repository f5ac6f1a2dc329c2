"""The MCP front door: any MCP host reaches sandboxed servers through the SessionManager.

``http.py`` serves Streamable HTTP at ``/mcp/<profile>`` beside gRPC (both protocol eras: stateful sessions and
stateless 2026-07-28 leases); ``handlers.py`` is the low-level MCP server whose handlers call the manager, so
policy, tool rules, approvals, rates, validation, sanitizing, pinning and audit apply exactly as on gRPC.
"""
