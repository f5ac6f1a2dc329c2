"""``mcp-runner mcp PROFILE``: MCP over this process's stdin/stdout, relayed to the service's HTTP door.

Hosts that launch a command (Claude Desktop, Cursor, VS Code) speak the MCP stdio transport: one JSON-RPC message
per line. The bridge is a transparent relay onto the door's Streamable HTTP endpoint (``<door>/<profile>``), built
on the SDK's client transport: the host's ``initialize`` goes through as written and opens one stateful session
(one sandbox) for the bridge's lifetime; the transport keeps its ``Mcp-Session-Id``, POSTs each message, turns JSON
and SSE answers into messages and opens the GET stream after ``notifications/initialized`` for what the server
sends on its own (its requests go to the host, whose answers are POSTed back). The session ends with a DELETE, so
the sandbox closes with the host: at stdin EOF once the requests already sent are answered (``echo … | mcp-runner
mcp time`` gets its answer), at once on SIGTERM or SIGINT. A client that probes ``server/discover`` first (the
SDK's do) is answered "method not found" and falls back to ``initialize``: the 2026-07-28 stateless era is the HTTP
door's own.

Nothing here guards: the door already validated and sanitized everything it answers. The bridge only bounds what it
reads (a host line, a door answer, an SSE event) and never prints a traceback: a door that is not there is one
line on stderr naming what to start, exit code 69 (EX_UNAVAILABLE), and a JSON-RPC error for each request the host
still waits on.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import anyio
import httpx2
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import (
    CONNECTION_CLOSED,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError

from runner.text import control_free

EXIT_DOOR_UNAVAILABLE = 69
"""sysexits.h EX_UNAVAILABLE: the door is not running or went away."""

MAX_HOST_MESSAGE_BYTES = 4 * 1024**2
"""One line from the host: the SDK server's own request body cap, which the door's default keeps."""

MAX_DOOR_MESSAGE_BYTES = 16 * 1024**2
"""One answer or SSE event from the door. Its results are already capped by the runner's ``max_message_bytes``
(4 MiB from the sandbox); JSON escaping on the way out can grow them, never by four times in practice."""

DOOR_HEADER = ("x-mcp-runner-door", "mcp-stdio")
"""Sent on every request: the door may name the stdio door in the session's audit records (``door="mcp-stdio"``)
instead of ``mcp-http``. A caller's own claim, so a record of where the session came from, never a permission."""

CLOSE_GRACE_S = 5.0
"""How long the DELETE that ends the session may take once the host has gone; a door that hangs is left behind."""

_CONNECT_TIMEOUT_S = 10.0
_NO_DISCOVER = (
    "server/discover: this stdio bridge serves one stateful session (initialize); a 2026-07-28 client can use the "
    "door over HTTP directly"
)


@dataclass(frozen=True)
class Door:
    """Where the bridge relays to and as whom."""

    url: str  # the profile's endpoint: <door>/<profile>
    token: str | None = None
    tls: ssl.SSLContext | None = None  # an https door's CA and client certificate (else the system's CAs)


class DoorAnswerTooLarge(httpx2.StreamError):
    """A JSON answer from the door past ``MAX_DOOR_MESSAGE_BYTES``.

    A ``StreamError`` because that is what the SDK's transport turns into a JSON-RPC error for the request the answer
    was for (instead of failing the whole session).
    """


class _CappedBody(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, cap: int) -> None:
        self._inner = inner
        self._cap = cap

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = 0
        async for chunk in self._inner:
            read += len(chunk)
            if read > self._cap:
                raise DoorAnswerTooLarge(f"the door's answer is larger than {self._cap} bytes, the bridge's cap")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _DoorTransport(httpx2.AsyncBaseTransport):
    """HTTP to the door with the bridge's caps, and HTTP refusals worded as JSON-RPC errors.

    The SDK's transport answers a refused POST with the JSON-RPC error in its body when there is one, else with
    "Server returned an error response"; a 401 or an unknown profile that a proxy or an older door answered in plain
    text gets a body here that says what to do instead.
    """

    def __init__(self, inner: httpx2.AsyncBaseTransport, cap: int) -> None:
        self._inner = inner
        self._cap = cap

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        is_json = response.headers.get("content-type", "").lower().startswith("application/json")
        if response.status_code >= 400 and not is_json:
            await response.aclose()
            message = _refusal(response.status_code, str(request.url), "mcp-session-id" in request.headers)
            body = {"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": message}}
            return httpx2.Response(response.status_code, json=body, request=request)
        if is_json and isinstance(response.stream, httpx2.AsyncByteStream):
            return httpx2.Response(
                response.status_code,
                headers=response.headers,
                stream=_CappedBody(response.stream, self._cap),
                request=request,
                extensions=response.extensions,
            )
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _refusal(status: int, url: str, in_session: bool) -> str:
    if status == 401:
        return f"the door at {url} refused the caller (HTTP 401): give a valid token (--token-file / MCP_RUNNER_TOKEN)"
    if status == 403:
        return f"the door at {url} refused this caller or request (HTTP 403)"
    if status == 404 and in_session:
        return (
            "the door no longer knows this session (HTTP 404: the service restarted or the session was idle too "
            "long): restart this MCP server in the host"
        )
    if status == 404:
        return f"the door has no endpoint {url} (HTTP 404): check the profile's name and the door's URL"
    if status == 413:
        return "the door refused the message as too large (HTTP 413)"
    return f"the door at {url} answered HTTP {status}"


def http_client(door: Door) -> httpx2.AsyncClient:
    """The bridge's HTTP client: no read timeout (the door's own call timeouts decide how long an answer takes, and
    the GET stream waits for as long as the session lives), no proxy from the environment (the door is loopback)."""
    headers = dict([DOOR_HEADER])
    if door.token:
        headers["Authorization"] = f"Bearer {door.token}"
    inner = httpx2.AsyncHTTPTransport(verify=door.tls or True)
    return httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(_CONNECT_TIMEOUT_S, read=None),
        transport=_DoorTransport(inner, MAX_DOOR_MESSAGE_BYTES),
        trust_env=False,
    )


def encode(message: JSONRPCMessage | dict[str, Any]) -> bytes:
    """One message as one line of the stdio transport: compact JSON (no raw newline inside), control-free."""
    data = message if isinstance(message, dict) else message.model_dump(by_alias=True, mode="json", exclude_unset=True)
    return (control_free(json.dumps(data, ensure_ascii=False, separators=(",", ":"))) + "\n").encode()


def error_line(request_id: RequestId | None, code: int, message: str) -> bytes:
    return encode({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})


class Oversized(Enum):
    """What a host line source yields for a line past ``MAX_HOST_MESSAGE_BYTES`` (its bytes are dropped)."""

    LINE = "line"


HostLines = AsyncIterator[bytes | Oversized]


class DoorUnavailable(Exception):
    """The connection to the door failed or ended before the host did; carries the line for stderr."""


class _Relay:
    def __init__(self, door: Door, write: Callable[[bytes], Awaitable[None]]) -> None:
        self._door = door
        self._write = write
        self.pending: dict[RequestId, None] = {}  # the host's requests not answered yet, oldest first
        self._initialize_id: RequestId | None = None
        self._protocol_version: str | None = None
        self.host_done = False
        self.answered = anyio.Event()  # set while no request of the host waits for its answer
        self.answered.set()
        self._handshake = anyio.Event()  # set once initialize is answered

    async def host_to_door(self, lines: HostLines, to_door: Any) -> None:
        async for line in lines:
            if isinstance(line, Oversized):
                await self._write(error_line(None, INVALID_REQUEST, f"message larger than {MAX_HOST_MESSAGE_BYTES} "
                                                                     "bytes, the bridge's cap"))
                continue
            if not line.strip():
                continue
            try:
                message = jsonrpc_message_adapter.validate_json(line, by_name=False)
            except ValidationError as exc:
                await self._write(error_line(None, PARSE_ERROR, f"not a JSON-RPC message: {_first_error(exc)}"))
                continue
            if isinstance(message, JSONRPCRequest) and message.method == "server/discover":
                # The bridge is one stateful session: a client that probes for the 2026-07-28 era first (the SDK's
                # do) falls back to initialize on this answer, as with any stdio server of the handshake era.
                await self._write(error_line(message.id, METHOD_NOT_FOUND, _NO_DISCOVER))
                continue
            if isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
                # No answer follows a cancelled request: the end of stdin must not wait for one.
                self._answered((message.params or {}).get("requestId"))
            if isinstance(message, JSONRPCRequest):
                self.pending[message.id] = None
                if self.answered.is_set():
                    self.answered = anyio.Event()
                if message.method == "initialize":
                    self._initialize_id = message.id
            metadata = None
            if self._protocol_version is not None:
                # What the SDK's client session stamps on every message after the handshake (the spec's
                # MCP-Protocol-Version header); a raw relay has no session to do it.
                metadata = ClientMessageMetadata(headers={MCP_PROTOCOL_VERSION_HEADER: self._protocol_version})
            await to_door.send(SessionMessage(message, metadata=metadata))
            if isinstance(message, JSONRPCRequest) and message.method == "initialize":
                # Nothing else goes out before the session exists: the transport POSTs requests side by side, and
                # one sent before the answer would carry no session id (a host that writes ahead, e.g. a pipe).
                await self._handshake.wait()
        self.host_done = True

    async def door_to_host(self, from_door: Any) -> None:
        async for item in from_door:
            if isinstance(item, Exception):
                print(f"mcp-runner mcp: a message from the door was dropped: {item}", file=sys.stderr)
                continue
            message = item.message
            await self._write(encode(message))  # before the bookkeeping: the last answer is out before the end
            if isinstance(message, JSONRPCResponse | JSONRPCError) and message.id in self.pending:
                self._answered(message.id)
                if message.id == self._initialize_id:
                    version = message.result.get("protocolVersion") if isinstance(message, JSONRPCResponse) else None
                    self._protocol_version = version if isinstance(version, str) else None
                    self._handshake.set()
        if not self.host_done:
            raise DoorUnavailable(f"the connection to the door at {self._door.url} ended")

    def _answered(self, request_id: Any) -> None:
        if request_id in self.pending:
            del self.pending[request_id]
            if not self.pending:
                self.answered.set()

    async def answer_pending(self, why: str) -> None:
        for request_id in list(self.pending):
            await self._write(error_line(request_id, CONNECTION_CLOSED, why))
        self.pending.clear()


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    return str(errors[0]["msg"]) if errors else "invalid"


async def relay(
    door: Door, lines: HostLines, write: Callable[[bytes], Awaitable[None]], *, stop: anyio.Event | None = None
) -> None:
    """Relay between the host (``lines`` in, ``write`` out) and the door until the host is done.

    Returns once ``lines`` ended and the requests already sent are answered, or at once when ``stop`` is set (a
    signal), after ending the session with a DELETE.
    Raises ``DoorUnavailable`` when the door cannot be reached or goes away, after answering every request the host
    still waits on.
    """
    state = _Relay(door, write)
    try:
        with anyio.CancelScope() as closing:
            async with (
                http_client(door) as client,
                streamable_http_client(
                    door.url, http_client=client, max_sse_event_size=MAX_DOOR_MESSAGE_BYTES
                ) as (from_door, to_door),
                anyio.create_task_group() as tasks,
            ):
                tasks.start_soon(state.door_to_host, from_door)
                with anyio.CancelScope() as reading:
                    if stop is not None:
                        tasks.start_soon(_cancel_when_set, stop, reading)
                    await state.host_to_door(lines, to_door)
                    # A host that closes its stdin right after its last request (a pipe) still gets the answers.
                    await state.answered.wait()
                tasks.cancel_scope.cancel()
                closing.deadline = anyio.current_time() + CLOSE_GRACE_S
    except Exception as exc:
        why = _door_failure(exc, door.url)
        if why is None:
            raise
        await state.answer_pending(why)
        raise DoorUnavailable(why) from None


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _door_failure(exc: BaseException, url: str) -> str | None:
    """What to tell the host when ``exc`` (or one inside its groups) says the door is not there; else None."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (why := _door_failure(inner, url)) is not None:
                return why
        return None
    if isinstance(exc, httpx2.ConnectError):
        return (
            f"the mcp-runner service's MCP door at {url} is not answering: start the service (`mcp-runner serve`, "
            "or `make run` in a checkout) or point this command at its door (--url / MCP_RUNNER_MCP_URL)"
        )
    if isinstance(exc, httpx2.TransportError):
        return f"the connection to the door at {url} failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, DoorUnavailable):
        return str(exc)
    return None


# ------------------------------------------------------------------ the process's own stdin and stdout


async def _stdin_lines() -> HostLines:
    """This process's stdin, line by line, read by a daemon thread: a blocked read never holds up the exit after
    SIGTERM (a host may signal before it closes the pipe), and stdin may be a pipe, a terminal or a file."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | Oversized | None] = asyncio.Queue(maxsize=1)

    def hand_over(item: bytes | Oversized | None) -> None:
        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    def read() -> None:
        stdin = sys.stdin.buffer
        while line := stdin.readline(MAX_HOST_MESSAGE_BYTES + 1):
            if len(line) > MAX_HOST_MESSAGE_BYTES and not line.endswith(b"\n"):
                while (rest := stdin.readline(MAX_HOST_MESSAGE_BYTES)) and not rest.endswith(b"\n"):
                    pass
                hand_over(Oversized.LINE)
            else:
                hand_over(line)
        hand_over(None)

    threading.Thread(target=read, name="mcp-runner-stdin", daemon=True).start()
    while (item := await queue.get()) is not None:
        yield item


async def _write_stdout(data: bytes) -> None:
    stdout = sys.stdout.buffer
    stdout.write(data)
    stdout.flush()


async def _set_on_signal(stop: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return


async def _serve_stdio(door: Door) -> None:
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_set_on_signal, stop)
        await relay(door, _stdin_lines(), _write_stdout, stop=stop)
        tasks.cancel_scope.cancel()


def run_bridge(door: Door) -> int:
    """``mcp-runner mcp``: relay this process's stdin/stdout to ``door``; the exit code."""
    try:
        asyncio.run(_serve_stdio(door))
    except Exception as exc:
        why = _door_failure(exc, door.url)
        if why is None:
            raise
        print(f"mcp-runner mcp: {why}", file=sys.stderr)
        return EXIT_DOOR_UNAVAILABLE
    return 0
