"""The agent ⇄ server stream pair, with a checkpoint that catches protocol violations.

``ClientSession`` runs unchanged over a pair of memory streams; two pump tasks
copy messages between those and ``stdio_client``'s streams. On the way out
they record which request ids the session issued (and which it cancelled); on
the way in they check every response against that record.

Why: the SDK (2.3) drops a response whose id matches no pending request with a
debug log (``JSONRPCDispatcher._resolve_pending``), because a late answer to a
cancelled or timed-out request is legitimate. A response to an id that was
never issued, or a second answer to one, is not: it is a server that broke the
protocol, and a request it should have answered would otherwise hang. Lines
that are not JSON-RPC reach the session as ``Exception`` items; they are
caught here too, and so is the end of the server's stdout.

Requests the server sends the client (roots, sampling, elicitation) are bounded
too: the SDK answers each in a task of its own, and a server that sends them
without reading the answers left those tasks piling up (70 MiB a second, until
the call's deadline). Past ``MAX_SERVER_REQUESTS`` unanswered, or one reusing the
id of another still unanswered, is a protocol violation.

`BoundedProcess` bounds what the SDK reads: ``stdio_client`` joins a line's
chunks with ``buffer + chunk`` (quadratic, and unbounded), so a server printing
a gigabyte without a newline would cost minutes of CPU and the memory of the
whole line. Its stdout hands the SDK only whole lines, each at most the cap.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

if TYPE_CHECKING:
    from mcp.client._transport import ReadStream, WriteStream
    from mcp.shared.message import SessionMessage

    InItem = SessionMessage | Exception

#: Requests from the server the agent may be answering at once; honest servers send a few (they wait for each).
MAX_SERVER_REQUESTS = 64
_BETWEEN_WORDS = ' \n\t\r"\''
"""What ends a word for ``whole_words``: white space and quotes (no credential format holds them)."""


def _key(request_id: object) -> object:
    """Correlate "7" and 7 the way the SDK's dispatcher does."""
    if isinstance(request_id, str):
        try:
            return int(request_id)
        except ValueError:
            return request_id
    return request_id


class BoundedLines(anyio.abc.ByteReceiveStream):
    """A server's stdout, handed on in whole lines only; a line past ``max_bytes`` calls ``on_too_large``.

    Each byte is searched for a newline once and the partial line is kept in
    one growing buffer, so reading is linear in what the server writes. Once
    the cap is passed the stream ends (and stays ended): the agent reports the
    cap and kills the server, so nothing after it matters.
    """

    def __init__(self, inner: anyio.abc.ByteReceiveStream, max_bytes: int, on_too_large: Callable[[], None]) -> None:
        self._inner = inner
        self._max = max_bytes
        self._on_too_large = on_too_large
        self._partial = bytearray()
        self._over = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._over:
            try:
                chunk = await self._inner.receive(max_bytes)
            except anyio.EndOfStream:
                if not self._partial:
                    raise
                rest, self._partial = bytes(self._partial), bytearray()
                return rest  # the server's last words without a newline: the SDK drops them, as it would
            line_start = -len(self._partial)  # where the current line began, relative to ``chunk``
            newline = chunk.find(b"\n")
            while newline >= 0:
                if newline - line_start > self._max:
                    break
                line_start = newline + 1
                newline = chunk.find(b"\n", line_start)
            if newline >= 0 or len(chunk) - line_start > self._max:
                self._over = True
                self._partial = bytearray()
                self._on_too_large()
                break
            if line_start <= 0:
                self._partial += chunk
                continue
            whole = bytes(self._partial) + chunk[:line_start]
            self._partial = bytearray(chunk[line_start:])
            return whole
        raise anyio.EndOfStream

    async def aclose(self) -> None:
        await self._inner.aclose()


class BoundedProcess(anyio.abc.Process):
    """``process`` for ``stdio_client``, with its stdout read through `BoundedLines`."""

    def __init__(self, process: anyio.abc.Process, max_bytes: int, on_too_large: Callable[[], None]) -> None:
        assert process.stdout is not None, "the server is spawned with a stdout pipe"
        self._process = process
        self._stdout = BoundedLines(process.stdout, max_bytes, on_too_large)

    async def aclose(self) -> None:
        await self._process.aclose()

    async def wait(self) -> int:
        return await self._process.wait()

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()

    def send_signal(self, sig: signal.Signals) -> None:
        self._process.send_signal(sig)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    @property
    def stdin(self) -> anyio.abc.ByteSendStream | None:
        return self._process.stdin

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream:
        return self._stdout

    @property
    def stderr(self) -> anyio.abc.ByteReceiveStream | None:
        return self._process.stderr


def whole_words(text: str, limit: int) -> str:
    """At most the first ``limit`` characters of ``text``, never part of a word (what ``runner.text.whole_words``
    does on the host, which this image does not hold). What the agent quotes of the server goes through the host's
    sanitizer, and part of a secret left at a cut (``ghp_`` and some of its characters) is one it does not know."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    if text[limit] not in _BETWEEN_WORDS:
        head = head[: max(head.rfind(ch) for ch in _BETWEEN_WORDS) + 1]
    return head + "…"


def describe_exception(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            return whole_words(str(first.get("msg", exc)), 200)
        except Exception:
            pass
    return whole_words((str(exc).splitlines() or [type(exc).__name__])[0], 200)


class ServerLink:
    """Owns the two pumps; reports violations and EOF through the callbacks."""

    def __init__(
        self,
        raw_read: ReadStream[InItem],
        raw_write: WriteStream[SessionMessage],
        on_violation: Callable[[str], None],
        on_eof: Callable[[], Awaitable[None]],
    ) -> None:
        self._raw_read = raw_read
        self._raw_write = raw_write
        self._on_violation = on_violation
        self._on_eof = on_eof
        self._outstanding: set[object] = set()
        self._cancelled: set[object] = set()
        self._answering: set[object] = set()  # the server's requests whose answers are not yet written
        self.read_send: MemoryObjectSendStream[InItem]
        self.read: MemoryObjectReceiveStream[InItem]
        self.read_send, self.read = anyio.create_memory_object_stream["InItem"](0)
        self.write: MemoryObjectSendStream[SessionMessage]
        self._write_recv: MemoryObjectReceiveStream[SessionMessage]
        self.write, self._write_recv = anyio.create_memory_object_stream["SessionMessage"](0)

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(self._pump_in)
        tg.start_soon(self._pump_out)

    async def _pump_out(self) -> None:
        from mcp_types import JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse

        async with self._raw_write, self._write_recv:
            async for item in self._write_recv:
                msg = item.message
                if isinstance(msg, JSONRPCRequest):
                    self._outstanding.add(_key(msg.id))
                elif isinstance(msg, JSONRPCNotification) and msg.method == "notifications/cancelled":
                    params: dict[str, Any] = msg.params or {}
                    rid = _key(params.get("requestId"))
                    if rid in self._outstanding:
                        self._outstanding.discard(rid)
                        self._cancelled.add(rid)
                try:
                    await self._raw_write.send(item)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                if isinstance(msg, JSONRPCResponse | JSONRPCError):
                    self._answering.discard(_key(msg.id))

    async def _pump_in(self) -> None:
        from mcp_types import JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse

        async with self.read_send:
            try:
                async for item in self._raw_read:
                    if isinstance(item, Exception):
                        self._on_violation(
                            "MCP server broke the protocol: it wrote a line to stdout that is not a "
                            f"JSON-RPC message ({describe_exception(item)})"
                        )
                        return
                    msg = item.message
                    if isinstance(msg, JSONRPCNotification) and msg.method == "notifications/cancelled":
                        # The server gave up on one of its requests: the SDK may never answer it.
                        self._answering.discard(_key((msg.params or {}).get("requestId")))
                    elif isinstance(msg, JSONRPCRequest) and not self._admit(msg.id):
                        return
                    if isinstance(msg, JSONRPCResponse | JSONRPCError) and msg.id is not None:
                        rid = _key(msg.id)
                        if rid in self._outstanding:
                            self._outstanding.discard(rid)
                        elif rid in self._cancelled:
                            self._cancelled.discard(rid)  # a late answer to a cancelled request: fine
                        else:
                            self._on_violation(
                                f"MCP server broke the protocol: it answered request id {msg.id!r}, "
                                "which the agent never sent (or which was already answered)"
                            )
                            return
                    await self.read_send.send(item)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass
            # The server's stdout ended. Report it before closing the session's
            # stream, so pending requests fail after (not before) the fatal frame.
            await self._on_eof()

    def _admit(self, request_id: object) -> bool:
        """Note a request from the server (False, with the violation reported, past the bound or for a reused id)."""
        rid = _key(request_id)
        if rid in self._answering:
            shown = whole_words(repr(request_id), 80)
            problem = f"it sent request id {shown} again while the agent was still answering it"
        elif len(self._answering) >= MAX_SERVER_REQUESTS:
            problem = f"it sent more than {MAX_SERVER_REQUESTS} requests without reading the answers"
        else:
            self._answering.add(rid)
            return True
        self._on_violation(f"MCP server broke the protocol: {problem}")
        return False
