"""The door's own answers at the HTTP level, before (or instead of) the SDK's: each a JSON-RPC error body.

Every refusal here has the shape of the door's other errors (``runner.door.errors``): code -32600 (-32700 for a body
that is not JSON), a message saying what to do, and ``data.status``, the gRPC status name a gRPC caller would have
seen. The SDK answers some of these itself, in plain text (Host, Origin, Content-Type) or naming a session it made
for the request and discarded (a request without a session id); these say the same as JSON-RPC errors and name no
session. In order of the checks:

* DNS rebinding, on a loopback listener: ``Host`` must be 127.0.0.1, localhost or [::1] with at most a numeric port
  (421), an ``Origin`` an http(s) origin of those (403); a POST's ``Content-Type`` application/json (400).
* the body: one JSON-RPC message (no batches), its ``id`` a string or an integer (MCP: never an object, an array, a
  fraction or a boolean; null only on an error answer): 400.
* ``MCP-Protocol-Version``: a version the door speaks (else the 2026-07-28 era's -32022 naming them), and not the
  2026-07-28 era (which has no sessions) beside an ``Mcp-Session-Id``: 400.
* a request without a session id that is not an ``initialize`` request: 400 (405 for a method the door has not).

The door's own refusals (these, the profile's 404, the body's 413, a scrape's) are counted by their status
(``counting_refusals``); one the SessionManager answers for (``MANAGED``) is counted by its records instead.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import mcp_types as types
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS, SUPPORTED_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Scope, Send

from runner.door.errors import error_code, error_data, http_status
from runner.errors import RateLimited, RunnerError, SessionClosed, Status

ECHOED_CHARS = 100
"""How much of a refused header value a refusal quotes back."""
_LOCAL_HOST = r"(?:127\.0\.0\.1|localhost|\[::1\])(?::[0-9]{1,5})?"
LOCAL_HOST = re.compile(_LOCAL_HOST, re.IGNORECASE | re.ASCII)
LOCAL_ORIGIN = re.compile(rf"https?://{_LOCAL_HOST}", re.IGNORECASE | re.ASCII)
SESSION_NOT_FOUND = "Session not found: initialize a new session"
NO_SESSION = (
    "this request names no session (no Mcp-Session-Id header): send initialize first, then the Mcp-Session-Id of its "
    "answer with every request of the session; or send the request in the 2026-07-28 era (MCP-Protocol-Version: "
    "2026-07-28), which needs no session"
)


MANAGED = "mcp_runner.managed"
"""Scope key: the SessionManager answers for this request (a refusal of it is counted with its records)."""


def counting_refusals(scope: Scope, send: Send, count: Callable[[int], None]) -> Send:
    """``send``, telling ``count`` the status of a 4xx answer the door gave without the SessionManager."""

    async def counted(message: Message) -> None:
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500 and not scope.get(MANAGED):
            count(message["status"])
        await send(message)

    return counted


def rpc_error(status: int, code: int, message: str, request_id: Any = None, data: Any = None,
              headers: dict[str, str] | None = None) -> Response:  # fmt: skip
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def runner_error(exc: RunnerError, request_id: Any = None, headers: dict[str, str] | None = None) -> Response:
    """``exc`` with its HTTP status; a rate limit also says when to come back in ``Retry-After``."""
    return rpc_error(http_status(exc), error_code(exc), exc.message, request_id, error_data(exc),
                     {**(headers or {}), **retry_after(exc)})  # fmt: skip


def retry_after(exc: RunnerError) -> dict[str, str]:
    if not isinstance(exc, RateLimited):
        return {}
    return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}


def refusal(status: int, message: str, request_id: Any = None, *, grpc: Status = Status.INVALID_ARGUMENT,
            code: int = types.INVALID_REQUEST, headers: dict[str, str] | None = None) -> Response:  # fmt: skip
    return rpc_error(status, code, message, request_id, {"status": grpc.value}, headers)


def _echo(value: str) -> str:
    return repr(value[:ECHOED_CHARS])


def transport_refusal(request: Request, *, loopback: bool) -> Response | None:
    """Content-Type of a POST; on a loopback listener (where DNS rebinding reaches) Host and Origin."""
    if request.method == "POST":
        content_type = request.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            return refusal(400, f"the Content-Type {_echo(content_type)} is not JSON: send application/json")
    if not loopback:
        return None
    host = request.headers.get("host", "")
    if not LOCAL_HOST.fullmatch(host):
        return refusal(421, f"the Host {_echo(host)} is not this machine: a loopback door answers only requests for "
                       "127.0.0.1, localhost or [::1] (with a port), which keeps out pages that rebind a name of "
                       "theirs to this address", grpc=Status.PERMISSION_DENIED)  # fmt: skip
    origin = request.headers.get("origin")
    if origin is not None and not LOCAL_ORIGIN.fullmatch(origin):
        return refusal(403, f"the Origin {_echo(origin)} is not a page of this machine: a loopback door answers "
                       "browsers only for http(s)://127.0.0.1, localhost or [::1]",
                       grpc=Status.PERMISSION_DENIED)  # fmt: skip
    return None


def _id_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", bool: "a boolean", float: "a number with a point or an exponent"}
    return kinds.get(type(value), "null")


def message_refusal(message: Any) -> Response | None:
    """A batch, or an id that is neither a string nor an integer (the SDK would take it for a notification)."""
    if isinstance(message, list):
        return refusal(400, "batches are not supported: send one JSON-RPC message per POST (MCP removed JSON-RPC "
                       "batching in 2025-06-18)")  # fmt: skip
    if not isinstance(message, dict) or "id" not in message:
        return None
    value = message["id"]
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return None
    if value is None and "error" in message and "method" not in message:
        return None  # an error answer to a request whose id could not be read
    return refusal(400, f"the message's id is {_id_kind(value)}: MCP ids are strings or integers")


def era_refusal(era: str | None, session_id: str | None, request_id: Any) -> Response | None:
    if era is None:
        return None
    if era not in SUPPORTED_PROTOCOL_VERSIONS:
        # The 2026-07-28 era's UnsupportedProtocolVersionError: data names the versions a request without a session
        # may use (those server/discover lists); the message names the handshake ones too.
        data = {"supported": list(MODERN_PROTOCOL_VERSIONS), "requested": era[:ECHOED_CHARS],
                "status": Status.INVALID_ARGUMENT.value}  # fmt: skip
        message = (f"unsupported protocol version {_echo(era)} in MCP-Protocol-Version: this door supports "
                   f"{', '.join(MODERN_PROTOCOL_VERSIONS)} without a session and "
                   f"{', '.join(HANDSHAKE_PROTOCOL_VERSIONS)} in a session (negotiated by initialize)")  # fmt: skip
        return rpc_error(400, types.UNSUPPORTED_PROTOCOL_VERSION, message, request_id, data)
    if era in MODERN_PROTOCOL_VERSIONS and session_id is not None:
        return refusal(400, f"MCP-Protocol-Version {era} and Mcp-Session-Id cannot go together: that era has no "
                       "sessions. Send the session's own version (the one its initialize negotiated) with its "
                       f"Mcp-Session-Id, or a {era} request without one", request_id)  # fmt: skip
    return None


def no_session_refusal(method: str, request_id: Any, *, parsed: bool) -> Response:
    """A request without a session id that cannot open one: said by the door, with no Mcp-Session-Id."""
    if method not in ("GET", "POST", "DELETE"):
        return refusal(405, f"the MCP door has no {method[:ECHOED_CHARS]} method: use POST, GET or DELETE",
                       grpc=Status.UNIMPLEMENTED, headers={"Allow": "GET, POST, DELETE"})  # fmt: skip
    if not parsed:
        return refusal(400, "Parse error: the body is not JSON", code=types.PARSE_ERROR)
    return refusal(400, NO_SESSION, request_id)


def session_not_found(request_id: Any) -> Response:
    """Unknown, ended and another caller's session ids alike: it never says a session exists."""
    return refusal(404, SESSION_NOT_FOUND, request_id, grpc=Status.NOT_FOUND)


def content_type(message: Message) -> bytes:
    """The Content-Type of an ASGI ``http.response.start``."""
    value: bytes = dict(message.get("headers", ())).get(b"content-type", b"")
    return value


_DATA = b"data: "
_ANSWER_HEAD = b'{"jsonrpc":"2.0","id":'
"""How the SDK's compact JSON of an answer begins (pydantic keeps the fields' order: jsonrpc, id, result|error)."""
_ANSWER_TAILS = (',"result":', ',"error":')
ID_BYTES = 1024
"""Where an answer's id is looked for: past it, an id is not the door's client's (the body cap allows it, the SDK's
own ids are short) and the event is parsed whole if small."""
PARSED_EVENT_BYTES = 64 * 1024
_DECODER = json.JSONDecoder()


def answers(chunk: bytes, request_id: Any) -> bool:
    """Whether an SSE event of the SDK (one per chunk, one ``data:`` line) is the answer to ``request_id``.

    Called on the event loop for every event of a session's stream, whole tool results included: only the head of
    the data (its id and the key after it) is read; an event in another layout is parsed only when small."""
    start = chunk.find(_DATA)
    if start < 0:
        return False
    start += len(_DATA)
    if chunk.startswith(_ANSWER_HEAD, start):
        head = chunk[start + len(_ANSWER_HEAD) : start + len(_ANSWER_HEAD) + ID_BYTES].decode("utf-8", "replace")
        try:
            value, end = _DECODER.raw_decode(head)
        except ValueError:
            value, end = None, -1
        if end >= 0:
            return value == request_id and head.startswith(_ANSWER_TAILS, end)
    line_end = chunk.find(b"\n", start)
    line = chunk[start:] if line_end < 0 else chunk[start:line_end]
    if len(line) > PARSED_EVENT_BYTES:
        return False
    try:
        message = json.loads(line)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("id") == request_id and bool(message.keys() & {"result", "error"})


def unanswered_event(request_id: Any, why: str) -> bytes:
    """The last SSE event of a request its session's end left unanswered (the SDK just ends the stream)."""
    exc = SessionClosed(f"{why or 'the session ended'} before this request was answered; the request was cancelled")
    error = {"code": error_code(exc), "message": exc.message, "data": error_data(exc)}
    data = json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":"))
    return f"event: message\r\ndata: {data}\r\n\r\n".encode()
