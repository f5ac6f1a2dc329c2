"""The agent ⇄ remote server stream pair (SDK path), with a checkpoint that catches protocol violations.

``ClientSession`` runs unchanged over a pair of memory streams; two pump tasks
copy messages between those and ``streamable_http_client``'s streams. On the way out
they record which request ids the session issued (and which it cancelled); on
the way in they check every response against that record.

Why: the SDK (2.3) drops a response whose id matches no pending request with a
debug log (``JSONRPCDispatcher._resolve_pending``), because a late answer to a
cancelled or timed-out request is legitimate. A response to an id that was
never issued, or a second answer to one, is not: it is a server that broke the
protocol, and a request it should have answered would otherwise hang. Lines
that are not JSON-RPC reach the session as ``Exception`` items; they are
caught here too, and so is the end of the server's stream.

Requests the server sends the client (roots, sampling, elicitation) are bounded
too: the SDK answers each in a task of its own, and a server that sends them
without reading the answers left those tasks piling up (70 MiB a second, until
the call's deadline). Past ``MAX_SERVER_REQUESTS`` unanswered, or one reusing the
id of another still unanswered, is a protocol violation.

Stdio servers do not come here: client.py keeps the same books without the SDK.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .client import MAX_SERVER_REQUESTS, id_key
from .words import describe_exception, whole_words

if TYPE_CHECKING:
    from mcp.client._transport import ReadStream, WriteStream
    from mcp.shared.message import SessionMessage

    InItem = SessionMessage | Exception


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
                    self._outstanding.add(id_key(msg.id))
                elif isinstance(msg, JSONRPCNotification) and msg.method == "notifications/cancelled":
                    params: dict[str, Any] = msg.params or {}
                    rid = id_key(params.get("requestId"))
                    if rid in self._outstanding:
                        self._outstanding.discard(rid)
                        self._cancelled.add(rid)
                try:
                    await self._raw_write.send(item)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                if isinstance(msg, JSONRPCResponse | JSONRPCError):
                    self._answering.discard(id_key(msg.id))

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
                        self._answering.discard(id_key((msg.params or {}).get("requestId")))
                    elif isinstance(msg, JSONRPCRequest) and not self._admit(msg.id):
                        return
                    if isinstance(msg, JSONRPCResponse | JSONRPCError) and msg.id is not None:
                        rid = id_key(msg.id)
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
        rid = id_key(request_id)
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
