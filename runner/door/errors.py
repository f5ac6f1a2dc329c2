"""The one place runner errors become JSON-RPC errors (and HTTP statuses, where the transport decides).

A JSON-RPC error carries the runner's message (it says what to do) and ``data.status``, the gRPC status name a
gRPC caller would have seen, so an MCP host can tell a policy refusal from a quota from a crash. Codes: the
JSON-RPC ones where MCP defines a meaning (-32602 bad params and unknown tool, -32601 not offered, -32002 resource
not found), the server's own code for a server's error (with the part of its ``data`` the host validated and
kept), and one runner code per status in the -32000 range.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from mcp.shared.exceptions import MCPError

from runner.errors import (
    JSONRPC_INTERNAL_ERROR,
    JSONRPC_INVALID_PARAMS,
    JSONRPC_METHOD_NOT_FOUND,
    MCP_RESOURCE_NOT_FOUND,
    RateLimited,
    ResourceNotFound,
    RunnerError,
    ServerError,
    Status,
)

RUNNER_CODES: dict[Status, int] = {
    Status.INVALID_ARGUMENT: JSONRPC_INVALID_PARAMS,
    Status.NOT_FOUND: JSONRPC_INVALID_PARAMS,  # MCP: an unknown tool or prompt is invalid params
    Status.UNIMPLEMENTED: JSONRPC_METHOD_NOT_FOUND,
    Status.PERMISSION_DENIED: -32003,
    Status.RESOURCE_EXHAUSTED: -32004,
    Status.DEADLINE_EXCEEDED: -32005,
    Status.FAILED_PRECONDITION: -32006,
    Status.UNAVAILABLE: -32007,
    Status.UNAUTHENTICATED: -32008,
    Status.INTERNAL: JSONRPC_INTERNAL_ERROR,
}

HTTP_STATUS: dict[Status, HTTPStatus] = {
    Status.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    Status.NOT_FOUND: HTTPStatus.NOT_FOUND,
    Status.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    Status.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    Status.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    Status.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    Status.FAILED_PRECONDITION: HTTPStatus.CONFLICT,
    Status.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    Status.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    Status.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
}
"""Where the door answers before any MCP session exists (an ``initialize`` whose sandbox could not open)."""


#: The codes the runner gives its own refusals (beside JSON-RPC's standard ones): a server's error with one of them
#: would pass for the runner's refusal (a caller acting on -32004 waits and retries), so it goes out as an internal
#: error instead; its message still says "MCP server error <code>: …".
RUNNER_OWN_CODES = frozenset(RUNNER_CODES.values()) - {
    JSONRPC_INVALID_PARAMS, JSONRPC_METHOD_NOT_FOUND, JSONRPC_INTERNAL_ERROR,
}  # fmt: skip


def error_code(exc: RunnerError) -> int:
    if isinstance(exc, ServerError):
        return JSONRPC_INTERNAL_ERROR if exc.code in RUNNER_OWN_CODES else exc.code
    if isinstance(exc, ResourceNotFound):
        return MCP_RESOURCE_NOT_FOUND
    return RUNNER_CODES.get(exc.status, JSONRPC_INTERNAL_ERROR)


def error_data(exc: RunnerError) -> dict[str, Any] | None:
    """``status`` (and a rate limit's wait); for a server's own error, what the host kept of the server's data (a
    -32021's ``requiredCapabilities``, validated in runner/channel.py), since that code's data is the server's."""
    if isinstance(exc, ServerError):
        return exc.data
    data: dict[str, Any] = {"status": exc.status.value}
    if isinstance(exc, RateLimited):
        data["retryAfterMs"] = max(1, round(exc.retry_after_s * 1000))
    return data


def to_mcp_error(exc: RunnerError) -> MCPError:
    """What an MCP host sees for ``exc``: its message, a code it can act on, the status name in ``data``."""
    return MCPError(code=error_code(exc), message=exc.message, data=error_data(exc))


def http_status(exc: RunnerError) -> int:
    return int(HTTP_STATUS.get(exc.status, HTTPStatus.INTERNAL_SERVER_ERROR))
