"""Host side of the host ⇄ agent link (docs/agent-protocol.md): framing, request ids, caps.

Everything read here comes from inside a sandbox and is untrusted: a hostile
server can replace or impersonate the agent. So lines are cut at
``max_message_bytes`` before they are parsed (in time linear in the bytes
read, `LineFramer`), their JSON values are counted before they are parsed
(``MAX_FRAME_VALUES``), the lines a session sends are read at a bounded share of
the event loop (``PARSE_SHARE``), every frame must have a known shape, and a
frame for a request that is not pending ends the session. Request ids are random 53-bit
integers, so a forger cannot guess a pending one. A line past the cap, seen
here or reported by the agent, ends the session with MessageTooLarge.

The first terminal event (agent ``fatal``, end of stream, or a violation)
fails every pending request and wakes ``closed``; the session manager then
asks the sandbox how it ended.

The server speaks back too (``server_request`` and ``notification`` frames): the channel checks their shape,
holds at most ``MAX_SERVER_REQUESTS`` unanswered (each waits in a task of its own, since a person may be the one
to answer), names the request in flight each belongs to (``related``: its ``Exchange``, if it has one), and hands
them to the session's ``Inbound`` (runner/sessions/inbox.py validates, sanitizes, routes and records them). A
server request ends in exactly one ``answer`` frame: the ``Inbound``'s result, or the error of a
``ClientDeclined`` it raised; -32601 when nothing takes server requests, -32603 when the answer was not to be had
(the request it belonged to ended, the inbound failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import mcp_types
from pydantic import ValidationError

from runner.errors import (
    JSONRPC_INTERNAL_ERROR,
    JSONRPC_METHOD_NOT_FOUND,
    MCP_MISSING_REQUIRED_CLIENT_CAPABILITY,
    REQUIRED_CAPABILITIES,
    ClientDeclined,
    MessageTooLarge,
    ProtocolViolation,
    RunnerError,
    SandboxCrashed,
    ServerError,
)
from runner.framing import MAX_FRAME_VALUES as MAX_FRAME_VALUES  # re-exported: the cap belongs to the link
from runner.framing import MAX_TEXT, LineFramer, count_values, line_cost
from runner.guard.inbound import NOTIFICATIONS, SERVER_REQUESTS
from runner.observe import tracing
from runner.pace import Pace
from runner.sessions.models import DEFAULT_PROTOCOL, PROTOCOLS, Exchange, ProgressEvent
from runner.text import printable, whole_words

log = logging.getLogger(__name__)

JSONObject = dict[str, Any]
ProgressSink = Callable[[ProgressEvent], Awaitable[None]]
_MAX_RECENTLY_CANCELLED = 1024
_PREVIEW = 60
#: A ``fatal`` frame's ``reason`` when the agent met a line past the cap (docs/agent-protocol.md).
TOO_LARGE = "message_too_large"
#: The sandbox environment variable that hands the agent the host's cap (``runner/agent/frames.py`` reads it).
MAX_MESSAGE_ENV = "MCP_AGENT_MAX_MESSAGE_BYTES"
#: What a session's frames may cost the event loop (one for the whole service), in seconds of parsing per second,
#: after a burst of ``PARSE_BURST_S``: past it the reader waits before it reads on, so the sandbox's writes block.
#: Without it one sandbox repeating lines just under the caps (progress, or answers to requests the host gave up
#: on), or millions of tiny lines, kept the loop busy for as long as it liked.
PARSE_SHARE = 0.25
PARSE_BURST_S = 1.0


#: Server requests (sampling, elicitation, roots) the agent may hold unanswered at once, as the agent does with its
#: server (docs/agent-protocol.md): one more is a protocol violation.
MAX_SERVER_REQUESTS = 64
_MAX_FRAME_ID = 2**53
"""Ids are JSON numbers both sides read exactly: positive integers up to 2**53."""


def agent_env(max_message_bytes: int) -> dict[str, str]:
    """What the agent must know of the host: the cap, so it stops a server's line there, at once."""
    return {MAX_MESSAGE_ENV: str(max_message_bytes)}


class ByteLink(Protocol):
    """What the channel needs of a sandbox: its stdout chunks and its stdin."""

    async def read_stdout(self) -> bytes: ...

    async def write_stdin(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """A request's result with what the reader knew of its line at no extra cost: what it weighs, so the host can
    decide whether the work on it (parsing, validation, sanitizing) is small enough for the event loop."""

    result: JSONObject
    size: int
    """Bytes of the frame's line (the result and its envelope)."""
    values: int
    """The line's separators and containers, counted before it was parsed (``count_values``): at least the JSON
    values of the result, and more when its strings hold commas or brackets."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """A server request or notification as the channel read it: shape checked, content not yet."""

    method: str
    params: JSONObject
    exchange: Exchange | None
    """The ``Exchange`` of the request in flight the agent related it to, if that request has one."""
    tag: str
    """That request's tag (``request_sized(tag=)``: the audit id of what the caller asked), "" when unrelated."""
    size: int
    values: int


class InboundHandler(Protocol):
    """The session's side of what its server sends unasked (runner/sessions/inbox.py)."""

    async def server_request(self, request: Inbound) -> JSONObject:
        """The answer's result; ClientDeclined for an error answer."""
        ...

    async def notification(self, note: Inbound) -> None: ...


@dataclass
class _Pending:
    future: asyncio.Future[Reply]
    on_progress: ProgressSink | None
    exchange: Exchange | None = None
    tag: str = ""


class AgentChannel:
    """Speaks the agent protocol over one sandbox's stdio. Create, ``start()``, then ``request()``."""

    def __init__(self, link: ByteLink, *, max_message_bytes: int) -> None:
        self._link = link
        self._max = max_message_bytes
        self._pending: dict[int, _Pending] = {}
        self._cancelled: dict[int, None] = {}
        self._ready: asyncio.Future[JSONObject] = asyncio.get_running_loop().create_future()
        self._terminal: RunnerError | None = None
        self.closed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._inbound: InboundHandler | None = None
        self._answering: dict[int, tuple[asyncio.Task[None], int | None]] = {}
        """Server requests being answered: their task and the host request they belong to."""
        self.protocol = DEFAULT_PROTOCOL
        """The era the agent speaks with its server, from its ``ready`` frame."""

    def set_inbound(self, inbound: InboundHandler | None) -> None:
        """Who takes the server's requests and notifications; without one, requests get -32601, notes are dropped."""
        self._inbound = inbound

    def start(self) -> None:
        with tracing.untraced():
            self._reader = asyncio.create_task(self._read_loop(), name="agent-channel-reader")

    @property
    def terminal_error(self) -> RunnerError | None:
        """Why the channel ended, if it has."""
        return self._terminal

    async def ready(self) -> JSONObject:
        """The agent's ``initialize`` payload, once the server is up."""
        with tracing.step("agent handshake"):
            return await asyncio.shield(self._ready)

    async def request(self, method: str, params: JSONObject, *, on_progress: ProgressSink | None = None) -> JSONObject:
        """Send one request and wait for its result; cancelling the wait tells the agent to cancel."""
        return (await self.request_sized(method, params, on_progress=on_progress)).result

    async def request_sized(
        self,
        method: str,
        params: JSONObject,
        *,
        on_progress: ProgressSink | None = None,
        capabilities: JSONObject | None = None,
        exchange: Exchange | None = None,
        tag: str = "",
    ) -> Reply:
        """``request``, its result handed back with the size of the line that carried it.

        ``capabilities`` (2026-07-28 era) go on the frame for the agent to put in the request's ``_meta``;
        what the server sends related to this request reaches ``exchange`` (with ``tag``) while it runs. In a
        traced request, the request is a span of its own whose context goes to the server in ``_meta``.
        """
        with tracing.outgoing(method, params) as params:
            if self._terminal is not None:
                raise self._terminal
            request_id = secrets.randbits(53) or 1
            future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = _Pending(future, on_progress, exchange, tag)
            frame: JSONObject = {"type": "request", "id": request_id, "method": method, "params": params}
            if capabilities is not None:
                frame["capabilities"] = capabilities
            try:
                await self._send(frame)
                return await future
            finally:
                # What the server asked for this request waits for no one now: answered with an error.
                for task, related in list(self._answering.values()):
                    if related == request_id:
                        task.cancel()
                # Cancelling this task cancels ``future`` too, so "gave up" is: not answered, or cancelled.
                gave_up = not future.done() or future.cancelled()
                if self._pending.pop(request_id, None) is not None and gave_up and self._terminal is None:
                    self._remember_cancelled(request_id)
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self._send({"type": "cancel", "id": request_id}))

    def _remember_cancelled(self, request_id: int) -> None:
        self._cancelled[request_id] = None
        while len(self._cancelled) > _MAX_RECENTLY_CANCELLED:
            del self._cancelled[next(iter(self._cancelled))]

    async def _send(self, frame: JSONObject) -> None:
        data = json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        async with self._write_lock:
            try:
                await self._link.write_stdin(data)
            except (ConnectionError, OSError) as exc:
                self._end(SandboxCrashed(f"the sandbox stopped accepting input ({exc})"))
                raise self._terminal or SandboxCrashed("the sandbox stopped") from exc

    async def _read_loop(self) -> None:
        framer = LineFramer(self._max)
        pace = Pace(PARSE_SHARE, PARSE_BURST_S)  # seconds of event loop a second
        try:
            while self._terminal is None:
                chunk = await self._link.read_stdout()
                if not chunk:
                    self._end(SandboxCrashed("the sandbox exited"))
                    return
                work = 0.0
                for line in framer.feed(chunk):
                    if self._terminal is not None:
                        break
                    values = count_values(line)
                    work += line_cost(len(line), values)
                    await self._dispatch(line, values)
                if (wait := pace.take(work)) > 0:
                    await asyncio.sleep(wait)
        except RunnerError as exc:
            self._end(exc)
        except Exception as exc:  # a bug here must still end the session, not hang its callers
            log.exception("agent channel reader failed")
            self._end(ProtocolViolation(f"unreadable output from the sandbox: {type(exc).__name__}"))

    async def _dispatch(self, line: bytes, values: int) -> None:
        frame = _decode(line)
        kind = frame["type"]
        if kind == "ready":
            if self._ready.done():
                raise ProtocolViolation("the agent announced itself twice")
            protocol = frame.get("protocol", DEFAULT_PROTOCOL)
            if protocol not in PROTOCOLS:
                raise ProtocolViolation(f"the agent announced a protocol the host does not know ({_preview(line)})")
            self.protocol = protocol
            self._ready.set_result(_object(frame, "initialize"))
            return
        if kind == "fatal":
            message = _text(frame.get("message"), "the agent gave up without a reason")
            raise MessageTooLarge(message) if frame.get("reason") == TOO_LARGE else SandboxCrashed(message)
        if kind in ("server_request", "notification"):
            await self._inbound_frame(kind, frame, len(line), values)
            return
        request_id = frame.get("id")
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            raise ProtocolViolation(f"a {kind!r} frame without an integer id")
        pending = self._pending.get(request_id)
        if pending is None:
            if request_id in self._cancelled:
                return
            raise ProtocolViolation(f"the sandbox answered request {request_id}, which is not pending")
        if kind == "progress":
            await self._progress(pending, frame)
        elif kind == "result":
            if not pending.future.done():
                pending.future.set_result(Reply(_object(frame, "result"), len(line), values))
        else:
            error = _object(frame, "error")
            code = error.get("code")
            if not isinstance(code, int) or isinstance(code, bool):
                raise ProtocolViolation("an error frame without an integer code")
            if not pending.future.done():
                data = kept_error_data(code, error.get("data"))
                pending.future.set_exception(ServerError(code, _text(error.get("message"), "(no message)"), data))

    async def _inbound_frame(self, kind: str, frame: JSONObject, size: int, values: int) -> None:
        """A server request or notification: shape checked here, then handed on (a request in a task of its own)."""
        method = frame.get("method")
        known = SERVER_REQUESTS if kind == "server_request" else NOTIFICATIONS
        if not isinstance(method, str) or method not in known:
            raise ProtocolViolation(f"a {kind!r} frame for a method the agent does not forward ({_text(method, '?')})")
        params = frame.get("params", {})
        if not isinstance(params, dict):
            raise ProtocolViolation(f"a {kind!r} frame whose 'params' is not an object")
        related = frame.get("related")
        if related is not None and not _is_id(related):
            raise ProtocolViolation(f"a {kind!r} frame whose 'related' is not a request id")
        # A request that just ended (or never was) relates to nothing any more: the session's listener takes it.
        pending = self._pending.get(related) if related is not None else None
        if pending is not None and pending.future.done():
            pending = None
        inbound = Inbound(
            method=method,
            params=params,
            exchange=pending.exchange if pending is not None else None,
            tag=pending.tag if pending is not None else "",
            size=size,
            values=values,
        )
        if kind == "notification":
            if self._inbound is not None:
                try:
                    await self._inbound.notification(inbound)
                except Exception:
                    log.exception("notification handler failed")
            return
        server_id = frame.get("id")
        if not _is_id(server_id):
            raise ProtocolViolation("a 'server_request' frame without a positive integer id")
        assert isinstance(server_id, int)
        if server_id in self._answering:
            raise ProtocolViolation(f"the agent sent server request {server_id} again while it was unanswered")
        if len(self._answering) >= MAX_SERVER_REQUESTS:
            raise ProtocolViolation(f"the agent sent more than {MAX_SERVER_REQUESTS} server requests left unanswered")
        task = asyncio.create_task(self._answer(server_id, inbound), name=f"server-request-{server_id}")
        self._answering[server_id] = (task, related if pending is not None else None)

    async def _answer(self, server_id: int, inbound: Inbound) -> None:
        """The one ``answer`` frame a server request gets."""
        answer: JSONObject
        try:
            if self._inbound is None:
                raise ClientDeclined(JSONRPC_METHOD_NOT_FOUND, f"this session's client cannot answer {inbound.method}")
            answer = {"result": await self._inbound.server_request(inbound)}
        except ClientDeclined as exc:
            answer = {"error": {"code": exc.code, "message": exc.message}}
        except asyncio.CancelledError:
            answer = {"error": {"code": JSONRPC_INTERNAL_ERROR, "message": "the request it belonged to ended"}}
        except Exception:
            log.exception("answering %s failed", inbound.method)
            answer = {"error": {"code": JSONRPC_INTERNAL_ERROR, "message": "the client's answer could not be had"}}
        finally:
            self._answering.pop(server_id, None)
        if self._terminal is None:
            with contextlib.suppress(RunnerError):
                await self._send({"type": "answer", "id": server_id, **answer})

    async def _progress(self, pending: _Pending, frame: JSONObject) -> None:
        progress, total = frame.get("progress"), frame.get("total")
        if not isinstance(progress, int | float) or isinstance(progress, bool):
            raise ProtocolViolation("a progress frame whose progress is not a number")
        if total is not None and (not isinstance(total, int | float) or isinstance(total, bool)):
            raise ProtocolViolation("a progress frame whose total is not a number")
        message = frame.get("message")
        event = ProgressEvent(
            progress=float(progress),
            total=None if total is None else float(total),
            message=None if message is None else _text(message, ""),
        )
        if pending.on_progress is not None:
            try:
                await pending.on_progress(event)
            except Exception:
                log.exception("progress callback failed")

    def _end(self, error: RunnerError) -> None:
        if self._terminal is not None:
            return
        self._terminal = error
        if not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # mark retrieved: nobody may be waiting for ready any more
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        for task, _ in self._answering.values():
            task.cancel()
        self._answering.clear()
        self.closed.set()

    async def aclose(self) -> None:
        """Stop reading; pending requests fail with SessionClosed-like errors from the caller's side."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._end(SandboxCrashed("the session was closed"))


_FRAME_TYPES = frozenset({"ready", "result", "error", "progress", "fatal", "server_request", "notification"})


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_FRAME_ID


def kept_error_data(code: int, data: object) -> JSONObject | None:
    """What of a server's error ``data`` reaches callers: only a -32021's ``requiredCapabilities``, validated as
    ``ClientCapabilities`` and kept to its standard capabilities (their shapes are closed: flags and empty objects);
    ``experimental`` and ``extensions`` settings are free-form, so they go. Every other ``data`` is dropped:
    untrusted free-form data is not passed to callers unvalidated, and no sanitizer reads it on its way there."""
    if code != MCP_MISSING_REQUIRED_CLIENT_CAPABILITY or not isinstance(data, dict):
        return None
    try:
        required = mcp_types.ClientCapabilities.model_validate(data.get(REQUIRED_CAPABILITIES), by_name=False)
    except ValidationError:
        return None
    kept = required.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"experimental", "extensions"})
    return {REQUIRED_CAPABILITIES: kept}


def _refuse_constant(name: str) -> None:
    # Python's json accepts NaN and Infinity, which JSON does not; nothing downstream could pass them on.
    raise ValueError(f"{name} is not JSON")


def _decode(line: bytes) -> JSONObject:
    """The frame on a line; the reader has counted its values (`_count_values`) before it comes here."""
    try:
        frame = json.loads(line, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolViolation(f"the sandbox sent a line that is not JSON ({_preview(line)})") from exc
    except RecursionError:
        # A line of a few thousand '[' exhausts the parser's stack: hostile, not a bug of ours.
        raise ProtocolViolation(f"the sandbox sent a line nested too deeply to parse ({_preview(line)})") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str) or frame["type"] not in _FRAME_TYPES:
        raise ProtocolViolation(f"the sandbox sent an unknown frame ({_preview(line)})")
    return frame


def _object(frame: JSONObject, key: str) -> JSONObject:
    value = frame.get(key)
    if not isinstance(value, dict):
        raise ProtocolViolation(f"a {frame['type']!r} frame whose {key!r} is not an object")
    return value


def _text(value: object, default: str) -> str:
    """A message of the sandbox's, capped in whole words: the sanitizer it passes next must see any secret whole."""
    if not isinstance(value, str):
        return default
    kept = whole_words(value, MAX_TEXT)
    return printable(kept if len(kept) == len(value) else f"{kept.rstrip()} … (cut)") or default


def _preview(line: bytes) -> str:
    """The start of a bad line, quoted for an error message: cut in whole words and with invisible characters
    removed before quoting, since ``repr`` would spell a zero-width space that splits a secret as six visible
    characters, and the sanitizer the message passes next would see two harmless halves."""
    text = line[: _PREVIEW * 4].decode("utf-8", errors="replace")
    return repr(printable(whole_words(text, _PREVIEW))) + ("…" if len(line) > _PREVIEW else "")
