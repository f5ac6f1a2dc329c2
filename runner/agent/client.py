"""A lean MCP client over newline-delimited JSON-RPC: stdlib only, results relayed raw.

The host parses, validates and sanitizes every result itself (runner/guard/), so
the agent does not build models of them: it checks each line is a JSON-RPC
message, keeps the protocol's bookkeeping, and hands results on as the JSON
objects the server sent. That is what makes the agent cheap (the SDK's import
and its pydantic round trip cost more CPU and memory than many servers do).

It is still a client in its own right, and holds the server to the protocol:

* a line that is not a JSON-RPC message, an answer to an id it never sent (or
  already had answered), a request from the server reusing the id of one still
  being answered, or more than ``MAX_SERVER_REQUESTS`` of them unanswered, is a
  violation: ``on_violation`` hears of it and nothing more is read;
* requests the server sends the client: ``ping`` is answered, every other
  (roots, sampling, elicitation: capabilities the agent never declares) is
  refused with "method not found";
* a late answer to a request it cancelled is dropped quietly, as the spec allows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .words import whole_words

JSON = dict[str, Any]
ProgressSink = Callable[[float, float | None, str | None], None]

PROTOCOL_VERSION = "2025-11-25"
CLIENT_INFO = {"name": "mcp-sandbox-runner-agent", "version": "1.0.0"}
METHOD_NOT_FOUND = -32601
#: Requests from the server the agent may be answering at once; honest servers send a few (they wait for each).
MAX_SERVER_REQUESTS = 64
_BROKE = "MCP server broke the protocol: "


class RemoteError(Exception):
    """The server answered a request with a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Sink(Protocol):
    """The server's stdin: an asyncio ``StreamWriter`` in the agent."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


@dataclass
class _Pending:
    future: asyncio.Future[JSON]
    on_progress: ProgressSink | None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def id_key(request_id: object) -> object:
    """Correlate "7" and 7, as the SDK's dispatcher did: servers that echo ids as strings keep working."""
    if isinstance(request_id, str):
        try:
            return int(request_id)
        except ValueError:
            return request_id
    return request_id


def _is_id(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _encode(message: JSON) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class McpClient:
    """One MCP session with one server: `received` takes its lines, ``sink`` carries what the client sends."""

    def __init__(self, sink: Sink, on_violation: Callable[[str], None]) -> None:
        self._sink = sink
        self._on_violation = on_violation
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._cancelled: set[int] = set()  # sent, then cancelled: a late answer is fine
        self._answering: set[object] = set()  # the server's requests whose answers are not yet written
        self._tasks: set[asyncio.Task[None]] = set()
        self.broken = False

    # -- what the client sends --------------------------------------------------------

    async def initialize(self) -> JSON:
        """The handshake: the server's InitializeResult, raw (the host validates it), once it is acknowledged."""
        params = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}
        result = await self.request("initialize", params)
        await self.notify("notifications/initialized")
        return result

    async def request(self, method: str, params: JSON, on_progress: ProgressSink | None = None) -> JSON:
        """Send one request and wait for its result object; RemoteError for an error answer.

        With ``on_progress``, the request asks for progress (``_meta.progressToken``, the request's own id).
        Cancelling the wait cancels the request: the server is told, and its answer, if it comes, is dropped.
        """
        request_id, self._next_id = self._next_id, self._next_id + 1
        if on_progress is not None:
            meta = params.get("_meta")
            params = {**params, "_meta": {**(meta if isinstance(meta, dict) else {}), "progressToken": request_id}}
        future: asyncio.Future[JSON] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(future, on_progress)
        try:
            self._sink.write(_encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}))
            await self._sink.drain()
            return await future
        finally:
            # Cancelling the waiting task cancels ``future`` too: "gave up" is not answered, or cancelled.
            if self._pending.pop(request_id, None) is not None and (not future.done() or future.cancelled()):
                future.cancel()
                self._cancelled.add(request_id)
                # Written at once, not drained: the cancelled task must not wait for a server that stopped reading.
                cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
                self._sink.write(_encode(cancel))

    async def notify(self, method: str, params: JSON | None = None) -> None:
        message: JSON = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self._sink.write(_encode(message))
        await self._sink.drain()

    # -- what the server sends ------------------------------------------------------------

    def received(self, line: bytes) -> None:
        """Dispatch one line of the server's stdout (without its newline)."""
        if self.broken or not line.strip():
            return
        try:
            message = json.loads(line, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            self._violation(f"it wrote a line to stdout that is not a JSON-RPC message ({whole_words(str(exc), 200)})")
            return
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            self._violation("it wrote a line to stdout that is not a JSON-RPC message (not a JSON-RPC 2.0 object)")
            return
        method = message.get("method")
        if method is not None:
            if not isinstance(method, str):
                self._violation("it wrote a line to stdout that is not a JSON-RPC message (its method is no string)")
            elif "id" in message:
                self._server_request(message["id"], method)
            else:
                self._notification(method, message.get("params"))
        elif "result" in message or "error" in message:
            self._response(message)
        else:
            self._violation("it wrote a line to stdout that is not a JSON-RPC message (no method, result or error)")

    def _response(self, message: JSON) -> None:
        result, error, rid = message.get("result"), message.get("error"), message.get("id")
        if "result" in message and "error" in message:
            self._violation(f"its answer to request id {self._show(rid)} holds both a result and an error")
            return
        if error is not None and not (
            isinstance(error, dict)
            and isinstance(error.get("code"), int)
            and not isinstance(error["code"], bool)
            and isinstance(error.get("message"), str)
        ):
            self._violation(f"its error answer to request id {self._show(rid)} has no integer code and text message")
            return
        if "result" in message and not isinstance(result, dict):
            self._violation(f"its answer to request id {self._show(rid)} is not a result object")
            return
        if rid is None and error is not None:
            # An error about a request it could not read (a parse error): none of ours, since ours are JSON.
            return
        key = id_key(rid) if _is_id(rid) else None
        pending = self._pending.pop(key, None) if isinstance(key, int) else None
        if pending is None:
            if isinstance(key, int) and key in self._cancelled:
                self._cancelled.discard(key)  # a late answer to a cancelled request: fine
                return
            self._violation(
                f"it answered request id {self._show(rid)}, which the agent never sent (or which was already answered)"
            )
            return
        if isinstance(error, dict):
            pending.future.set_exception(RemoteError(error["code"], error["message"]))
        else:
            assert isinstance(result, dict)
            pending.future.set_result(result)

    def _notification(self, method: str, params: object) -> None:
        if not isinstance(params, dict):
            return
        if method == "notifications/progress":
            self._progress(params)
        elif method == "notifications/cancelled":
            # The server gave up on one of its requests: it no longer counts as one being answered.
            self._answering.discard(id_key(params.get("requestId")))

    def _progress(self, params: JSON) -> None:
        token, progress, total, message = (params.get(k) for k in ("progressToken", "progress", "total", "message"))
        pending = self._pending.get(token) if isinstance(token, int) and not isinstance(token, bool) else None
        if pending is None or pending.on_progress is None:
            return  # progress for a request that is over, or never asked for it: nothing to relay
        if not _is_number(progress) or not (total is None or _is_number(total)):
            return  # not a progress notification the host could relay
        assert isinstance(progress, int | float)
        assert total is None or isinstance(total, int | float)
        text = message if isinstance(message, str) else None
        pending.on_progress(float(progress), None if total is None else float(total), text)

    def _server_request(self, request_id: object, method: str) -> None:
        if not _is_id(request_id):
            self._violation(f"it sent a request with id {self._show(request_id)}, which is no string or integer")
            return
        key = id_key(request_id)
        if key in self._answering:
            self._violation(f"it sent request id {self._show(request_id)} again while the agent was still answering it")
            return
        if len(self._answering) >= MAX_SERVER_REQUESTS:
            self._violation(f"it sent more than {MAX_SERVER_REQUESTS} requests without reading the answers")
            return
        self._answering.add(key)
        answer: JSON = {"jsonrpc": "2.0", "id": request_id}
        if method == "ping":
            answer["result"] = {}
        else:
            # No roots, sampling or elicitation: the agent declares none of them, and the sandbox has nothing to give.
            answer["error"] = {"code": METHOD_NOT_FOUND, "message": "Method not found"}
        task = asyncio.ensure_future(self._answer(key, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, key: object, answer: JSON) -> None:
        try:
            self._sink.write(_encode(answer))
            await self._sink.drain()
        except (ConnectionError, OSError):
            pass  # the server is gone: its exit is reported elsewhere
        finally:
            self._answering.discard(key)

    # -- violations ---------------------------------------------------------------------

    @staticmethod
    def _show(value: object) -> str:
        return whole_words(repr(value), 80)

    def _violation(self, problem: str) -> None:
        if not self.broken:
            self.broken = True
            self._on_violation(_BROKE + problem)
