"""The runner's one error tree, and the one table that maps it to gRPC status codes.

Every failure a caller can see is a ``RunnerError``; foreign errors (docker-py,
JSON, pydantic, jsonschema) are converted where they are caught, once each, so
the servicer only ever translates this tree::

    RunnerError
    ├── InvalidArgument ............ INVALID_ARGUMENT   caller's input is wrong
    │   └── SchemaViolation ........ INVALID_ARGUMENT   arguments break the tool's inputSchema
    ├── NotFound ................... NOT_FOUND
    │   ├── ProfileNotFound
    │   ├── SessionNotFound
    │   ├── ToolNotFound
    │   └── ResourceNotFound
    ├── PermissionDenied ........... PERMISSION_DENIED  policy said no; the message names the rule
    │   └── ResultBlocked .......................... the sanitizer's policy blocked a result
    ├── ResourceExhausted .......... RESOURCE_EXHAUSTED
    │   ├── QuotaExceeded .......................... too many sessions
    │   ├── RateLimited ............................ a token bucket is empty; carries retry_after_s
    │   ├── OutOfMemory ............................ the sandbox was killed for memory
    │   └── MessageTooLarge ........................ the server (or agent) wrote past max_message_bytes
    ├── DeadlineExceeded ........... DEADLINE_EXCEEDED  call or open ran past its deadline
    ├── FailedPrecondition ......... FAILED_PRECONDITION
    │   ├── SessionClosed .......................... closed, reaped or failed earlier
    │   ├── SandboxCrashed ......................... server/agent exited; carries stderr tail
    │   ├── ProtocolViolation ...................... container broke the wire rules; session ended
    │   └── ResultRejected ......................... a result failed host validation; not passed on
    ├── ServerError ................ per MCP code      the MCP server answered with a JSON-RPC error
    ├── ClientDeclined ............. FAILED_PRECONDITION a session's caller would not answer a server's request
    ├── Unimplemented .............. UNIMPLEMENTED      the server lacks the capability
    ├── Unavailable ................ UNAVAILABLE        backend (Docker) unreachable
    │   └── AuditError ............................. the audit log cannot be written or read
    └── Unauthenticated ............ UNAUTHENTICATED

``ClientDeclined`` travels the other way: a caller's handler raises it to answer the sandboxed server's own
request (sampling, elicitation, roots) with that JSON-RPC error; it reaches a caller only if a handler's own
failure is reported.

``ServerError`` picks its status from the JSON-RPC code: invalid params map to
INVALID_ARGUMENT, "resource not found" to NOT_FOUND, "method not found" to
UNIMPLEMENTED, and every other code to FAILED_PRECONDITION: a server-side fault
(the agent reports a result that does not fit MCP, or any failure of its own,
as "internal error"; a server's own codes say its state does not allow the
request). The runner never answers UNKNOWN: a caller can act on every status.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class Status(Enum):
    """gRPC status names, kept here so the domain never imports grpc."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    INTERNAL = "INTERNAL"


class RunnerError(Exception):
    """Base of every error the runner reports to a caller."""

    status: Status = Status.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(RunnerError):
    status = Status.INVALID_ARGUMENT


class SchemaViolation(InvalidArgument):
    """Arguments do not satisfy the tool's inputSchema; ``path`` names the failing spot."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class NotFound(RunnerError):
    status = Status.NOT_FOUND


class ProfileNotFound(NotFound):
    pass


class SessionNotFound(NotFound):
    pass


class ToolNotFound(NotFound):
    pass


class ResourceNotFound(NotFound):
    pass


class PermissionDenied(RunnerError):
    status = Status.PERMISSION_DENIED


class ResultBlocked(PermissionDenied):
    pass


class ResourceExhausted(RunnerError):
    status = Status.RESOURCE_EXHAUSTED


class QuotaExceeded(ResourceExhausted):
    pass


class RateLimited(ResourceExhausted):
    """A rate or concurrency limit is reached; ``retry_after_s`` says when trying again can succeed."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(f"{message}; retry in {retry_after_s:.2f} s")
        self.retry_after_s = retry_after_s


class OutOfMemory(ResourceExhausted):
    pass


class MessageTooLarge(ResourceExhausted):
    """A line from the sandbox passed ``max_message_bytes``: the session ends, whoever in it wrote the line."""


class DeadlineExceeded(RunnerError):
    status = Status.DEADLINE_EXCEEDED


class FailedPrecondition(RunnerError):
    status = Status.FAILED_PRECONDITION


class SessionClosed(FailedPrecondition):
    pass


class SandboxCrashed(FailedPrecondition):
    """The sandbox stopped; ``stderr_tail`` is the last of what it wrote (sanitized for display)."""

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        full = f"{message}; stderr tail:\n{stderr_tail}" if stderr_tail else message
        super().__init__(full)
        self.stderr_tail = stderr_tail


class ProtocolViolation(FailedPrecondition):
    pass


class ResultRejected(FailedPrecondition):
    pass


class Unimplemented(RunnerError):
    status = Status.UNIMPLEMENTED


class Unavailable(RunnerError):
    status = Status.UNAVAILABLE


class AuditError(Unavailable):
    """The audit log could not record or read; a response whose record failed is withheld."""


class Unauthenticated(RunnerError):
    status = Status.UNAUTHENTICATED


# JSON-RPC / MCP error codes a server may answer with.
JSONRPC_METHOD_NOT_FOUND = -32601
JSONRPC_INVALID_PARAMS = -32602
JSONRPC_INTERNAL_ERROR = -32603
MCP_RESOURCE_NOT_FOUND = -32002
MCP_MISSING_REQUIRED_CLIENT_CAPABILITY = -32021
"""2026-07-28: the request needs a client capability the client did not declare; ``data.requiredCapabilities``."""
REQUIRED_CAPABILITIES = "requiredCapabilities"

_SERVER_CODE_STATUS = {
    JSONRPC_INVALID_PARAMS: Status.INVALID_ARGUMENT,
    MCP_RESOURCE_NOT_FOUND: Status.NOT_FOUND,
    JSONRPC_METHOD_NOT_FOUND: Status.UNIMPLEMENTED,
}


class ServerError(RunnerError):
    """The MCP server answered a request with a JSON-RPC error.

    ``data``: what the host kept of the error's ``data`` (runner/channel.py keeps only data of a known meaning,
    validated: a -32021's ``requiredCapabilities``), None otherwise. The message names the required capabilities,
    so a caller that sees only the message (gRPC) learns them too.
    """

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        required = (data or {}).get(REQUIRED_CAPABILITIES)
        shown = f" (required client capabilities: {', '.join(sorted(required))})" if required else ""
        super().__init__(f"MCP server error {code}: {message}{shown}")
        self.code = code
        self.data = data
        self.status = _SERVER_CODE_STATUS.get(code, Status.FAILED_PRECONDITION)


class ClientDeclined(RunnerError):
    """The client will not (or cannot) answer a server's request: the server gets JSON-RPC error ``code``.

    Raised by an ``InputHandler`` (runner/sessions/models.py); -32601 when the client cannot, -1 when its user
    rejected the request, -32602 when its answer did not fit what the server asked for.
    """

    status = Status.FAILED_PRECONDITION

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
