"""The agent's life with a remote (Streamable HTTP) server, over the ``mcp`` SDK: initialize, serve, report.

Only ``--url`` profiles come here, and only they load the SDK and anyio (the
stdio path, stdio.py, is stdlib only). Frames and their meaning are specified
in ``docs/agent-protocol.md``. A ``fatal`` frame is the last thing the agent
ever writes: `RemoteAgent.fatal` closes the frame writer and unwinds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from . import _sdk
from .client import error_object
from .frames import (
    INTERNAL_ERROR,
    MAX_HOST_LINE,
    METHODS,
    TOO_LARGE,
    AnswerFrame,
    CancelFrame,
    FrameWriter,
    RequestFrame,
    describe_cap,
    diag,
    init_timeout,
    max_message_bytes,
    parse_host_frame,
)
from .link import ServerLink
from .words import describe_exception

if TYPE_CHECKING:
    from mcp.client.session import ClientSession, IncomingMessage
    from mcp_types import Result

REMOTE_TIMEOUT_S = 30.0
REMOTE_READ_TIMEOUT_S = 300.0

#: host method -> (mcp_types request class, plain result class). Plain result
#: types on purpose: the host, not the agent, validates tool output.
REQUESTS: dict[str, tuple[str, str]] = {
    "tools/list": ("ListToolsRequest", "ListToolsResult"),
    "tools/call": ("CallToolRequest", "CallToolResult"),
    "resources/list": ("ListResourcesRequest", "ListResourcesResult"),
    "resources/read": ("ReadResourceRequest", "ReadResourceResult"),
    "prompts/list": ("ListPromptsRequest", "ListPromptsResult"),
    "prompts/get": ("GetPromptRequest", "GetPromptResult"),
    "resources/templates/list": ("ListResourceTemplatesRequest", "ListResourceTemplatesResult"),
    "resources/subscribe": ("SubscribeRequest", "EmptyResult"),
    "resources/unsubscribe": ("UnsubscribeRequest", "EmptyResult"),
    "completion/complete": ("CompleteRequest", "CompleteResult"),
    "logging/setLevel": ("SetLevelRequest", "EmptyResult"),
    "ping": ("PingRequest", "EmptyResult"),
}
assert set(REQUESTS) == METHODS, "every method the host may ask for is mapped"


class AgentError(Exception):
    """The agent could not perform a request (reported with code -32603)."""


def dump(model: Result) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


class RemoteAgent:
    """Bridges the host to one Streamable HTTP MCP server at ``url``."""

    def __init__(self, url: str, *, fast_import: bool = True) -> None:
        self.url = url
        self.fast_import = fast_import
        self.max_message = max_message_bytes()
        self.out = FrameWriter(max_bytes=self.max_message, on_too_large=self._frame_too_large)
        self.ready = False
        self.stopping = False  # a clean shutdown is under way: the server's exit is expected
        self._fatal_sent = False
        self._scope: anyio.CancelScope | None = None
        self._active: dict[int, anyio.CancelScope] = {}

    # -- life cycle ---------------------------------------------------------------

    async def run(self) -> int:
        self._scope = anyio.CancelScope()
        with self._scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_signals)
                try:
                    await self._main()
                except Exception as exc:
                    traceback.print_exc()
                    self.fatal(f"internal agent error: {describe_exception(exc)}")
                finally:
                    tg.cancel_scope.cancel()
        return 1 if self._fatal_sent or self.out.broken else 0

    async def _main(self) -> None:
        """A Streamable HTTP server, reached only through the proxy the sandbox's environment names."""
        url = self.url
        _sdk.load(self.fast_import)
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        from .remote import ACCEPT_IDENTITY, CappedTransport

        proxy = os.environ.get("HTTPS_PROXY" if url.startswith("https:") else "HTTP_PROXY") or None
        # trust_env off: the proxy above is the only way out, and no .netrc or CA override from the server's side.
        # The proxy goes to the inner transport: a client's own proxy setting would route around the capped one.
        inner = httpx2.AsyncHTTPTransport(proxy=proxy, trust_env=False)
        capped = CappedTransport(inner, self.max_message, self._server_line_too_large, self.fatal)
        timeout = httpx2.Timeout(REMOTE_TIMEOUT_S, read=REMOTE_READ_TIMEOUT_S)
        async with (
            httpx2.AsyncClient(transport=capped, trust_env=False, timeout=timeout, headers=ACCEPT_IDENTITY) as client,
            # The SDK's own event cap (a backstop) no lower than ours, so ours is the one a server meets.
            streamable_http_client(url, http_client=client, max_sse_event_size=self.max_message + 1) as (
                raw_read,
                raw_write,
            ),
        ):
            await self._run_session(raw_read, raw_write)

    async def _run_session(self, raw_read: Any, raw_write: Any) -> None:
        from mcp.client.session import ClientSession

        link = ServerLink(raw_read, raw_write, self.fatal, self._server_eof)
        async with anyio.create_task_group() as tg:
            link.start(tg)
            try:
                async with ClientSession(link.read, link.write, message_handler=self._on_message) as session:
                    if await self._initialize(session):
                        await self._serve_host(session)
            finally:
                tg.cancel_scope.cancel()

    async def _initialize(self, session: ClientSession) -> bool:
        from mcp.shared.exceptions import MCPError

        timeout = init_timeout()
        try:
            with anyio.fail_after(timeout):
                result = await session.initialize()
        except TimeoutError:
            self.fatal(f"MCP server did not complete initialize within {timeout:g} s")
            return False
        except MCPError as exc:
            self.fatal(f"MCP server rejected initialize: {exc.message} (code {exc.code})")
            return False
        except Exception as exc:
            self.fatal(f"MCP initialize failed: {describe_exception(exc)}")
            return False
        self.ready = True
        self.out.send({"type": "ready", "protocol": "2025-11-25", "initialize": dump(result)})
        return True

    async def _serve_host(self, session: ClientSession) -> None:
        readline = await open_stdin_lines()
        async with anyio.create_task_group() as tg:
            while line := await readline():
                if not line.strip():
                    continue
                frame = parse_host_frame(line)
                if isinstance(frame, str):
                    diag(frame)
                elif isinstance(frame, CancelFrame):
                    scope = self._active.pop(frame.id, None)
                    if scope is not None:
                        scope.cancel()
                elif isinstance(frame, AnswerFrame):  # it relays no server requests: there is nothing to answer
                    diag(f"ignoring answer {frame.id}: no request of the server's is waiting for it")
                elif frame.id in self._active:
                    diag(f"ignoring request {frame.id}: a request with that id is still running")
                else:
                    scope = anyio.CancelScope()
                    self._active[frame.id] = scope
                    tg.start_soon(self._request, session, frame, scope)
            # stdin closed: the host is done with this session.
            self.stopping = True
            tg.cancel_scope.cancel()

    # -- requests ---------------------------------------------------------------------

    async def _request(self, session: ClientSession, frame: RequestFrame, scope: anyio.CancelScope) -> None:
        from mcp.shared.exceptions import MCPError

        rid = frame.id

        def live() -> bool:
            return self._active.get(rid) is scope and not scope.cancel_called

        try:
            with scope:
                reply: dict[str, Any]
                try:
                    result = await self._perform(session, frame, live)
                    reply = {"type": "result", "id": rid, "result": result}
                except MCPError as exc:
                    reply = {"type": "error", "id": rid, "error": error_object(exc.code, exc.message, exc.data)}
                except Exception as exc:
                    message = str(exc) if isinstance(exc, AgentError) else describe_exception(exc)
                    reply = {"type": "error", "id": rid, "error": {"code": INTERNAL_ERROR, "message": message}}
                if live():
                    try:
                        self.out.send(reply)
                    except ValueError as exc:  # not representable as JSON
                        error = {"code": INTERNAL_ERROR, "message": f"unserializable result: {exc}"}
                        self.out.send({"type": "error", "id": rid, "error": error})
        finally:
            if self._active.get(rid) is scope:
                del self._active[rid]

    async def _perform(self, session: ClientSession, frame: RequestFrame, live: Callable[[], bool]) -> Any:
        import mcp_types

        names = REQUESTS.get(frame.method)
        if names is None:
            raise AgentError(f"the agent does not support method {frame.method!r}")
        request_type, result_type = (getattr(mcp_types, name) for name in names)
        try:
            request = request_type.model_validate({"method": frame.method, "params": frame.params}, by_name=False)
        except ValueError as exc:
            raise AgentError(f"invalid params for {frame.method}: {describe_exception(exc)}") from None

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if live():
                update = {"type": "progress", "id": frame.id, "progress": progress, "total": total, "message": message}
                self.out.send(update)

        callback = on_progress if frame.method == "tools/call" else None
        try:
            result = await session.send_request(request, result_type, progress_callback=callback)
        except ValueError as exc:  # pydantic's ValidationError: the result does not fit the MCP types
            raise AgentError(
                f"MCP server returned an invalid {frame.method} result: {describe_exception(exc)}"
            ) from None
        return dump(result)

    # -- failure --------------------------------------------------------------------------

    def fatal(self, message: str, reason: str | None = None) -> None:
        """Report that the agent cannot go on and unwind (exit status 1)."""
        if self._fatal_sent or self.stopping:
            return
        self._fatal_sent = True
        diag(f"fatal: {message}")
        self.out.send({"type": "fatal", "message": message, **({"reason": reason} if reason else {})})
        self.out.close()
        if self._scope is not None:
            self._scope.cancel()

    def _server_line_too_large(self) -> None:
        # At once: reading the answer to its end is what would let one answer take the agent's memory.
        cap = describe_cap(self.max_message)
        self.fatal(f"MCP server wrote a message larger than the {cap} cap", TOO_LARGE)

    def _frame_too_large(self) -> None:
        # The server's lines fit, but the frame that carries one (escaped, wrapped) would not fit the host's cap.
        cap = describe_cap(self.max_message)
        self.fatal(f"MCP server sent a message larger than the {cap} cap once framed for the host", TOO_LARGE)

    async def _server_eof(self) -> None:
        if not (self.stopping or self._fatal_sent):
            phase = "" if self.ready else " before completing initialize"
            self.fatal(f"the remote MCP server's stream ended{phase}")

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            self.fatal(f"MCP server broke the protocol: {describe_exception(message)}")

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                diag(f"received {signal.Signals(signum).name}; shutting down")
                self.stopping = True
                if self._scope is not None:
                    self._scope.cancel()
                return


async def open_stdin_lines() -> Callable[[], Awaitable[bytes]]:
    """Return an async ``readline`` over stdin (``b""`` at EOF) that never blocks the event loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_HOST_LINE, loop=loop)
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), sys.stdin.buffer)
    except (ValueError, OSError):
        # A regular file (or anything epoll refuses): read it on a thread of its own, a daemon, so one stuck
        # reading never holds the agent's exit.
        return _thread_lines(loop)

    async def readline() -> bytes:
        while True:
            try:
                return await reader.readline()
            except ValueError:
                diag(f"ignoring a host line longer than {MAX_HOST_LINE} bytes")

    return readline


def _thread_lines(loop: asyncio.AbstractEventLoop) -> Callable[[], Awaitable[bytes]]:
    lines: asyncio.Queue[bytes] = asyncio.Queue()
    stdin = sys.stdin.buffer

    def pump() -> None:
        while True:
            line = stdin.readline(MAX_HOST_LINE)
            loop.call_soon_threadsafe(lines.put_nowait, line)
            if not line:
                return

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    return lines.get
