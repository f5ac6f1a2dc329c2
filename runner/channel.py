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

from runner.errors import MessageTooLarge, ProtocolViolation, RunnerError, SandboxCrashed, ServerError
from runner.pace import Pace
from runner.sessions.models import ProgressEvent
from runner.text import printable, whole_words

log = logging.getLogger(__name__)

JSONObject = dict[str, Any]
ProgressSink = Callable[[ProgressEvent], Awaitable[None]]
_MAX_RECENTLY_CANCELLED = 1024
_MAX_TEXT = 4096
_PREVIEW = 60
#: A ``fatal`` frame's ``reason`` when the agent met a line past the cap (docs/agent-protocol.md).
TOO_LARGE = "message_too_large"
#: The sandbox environment variable that hands the agent the host's cap (``runner/agent/frames.py`` reads it).
MAX_MESSAGE_ENV = "MCP_AGENT_MAX_MESSAGE_BYTES"
#: The most separators and containers (``,``, ``[``, ``{`` outside strings) a frame may hold, counted before it is
#: parsed. ``json.loads`` holds the GIL whatever thread runs it, so a 4 MiB line of ``[],`` stalled every session
#: for 0.3 s, and a 64 MiB one for seconds. A frame past this holds more values than the sanitizer's work budget
#: (runner/guard/results.py, the same number) walks in any result; here it is refused for a few counts at C speed.
MAX_FRAME_VALUES = 200_000
#: What a session's frames may cost the event loop (one for the whole service), in seconds of parsing per second,
#: after a burst of ``PARSE_BURST_S``: past it the reader waits before it reads on, so the sandbox's writes block.
#: Without it one sandbox repeating lines just under the caps (progress, or answers to requests the host gave up
#: on), or millions of tiny lines, kept the loop busy for as long as it liked.
PARSE_SHARE = 0.25
PARSE_BURST_S = 1.0
# What a line costs to parse and dispatch, roughly (CPython 3.11): a fixed part, per byte, per value, and the
# sanitizing of the text the reader's callbacks sanitize on the loop (a progress message: at most _MAX_TEXT
# characters, up to 6 bytes each once escaped), measured at 18 µs for a bare progress line, 290 µs with 4 KiB.
_LINE_COST_S = 20e-6
_BYTE_COST_S = 1e-9
_VALUE_COST_S = 0.2e-6
_TEXT_BYTES = 6 * _MAX_TEXT
_TEXT_COST_S = 70e-9


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
    """The line's separators and containers, counted before it was parsed (``_count_values``): at least the JSON
    values of the result, and more when its strings hold commas or brackets."""


@dataclass
class _Pending:
    future: asyncio.Future[Reply]
    on_progress: ProgressSink | None


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

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read_loop(), name="agent-channel-reader")

    @property
    def terminal_error(self) -> RunnerError | None:
        """Why the channel ended, if it has."""
        return self._terminal

    async def ready(self) -> JSONObject:
        """The agent's ``initialize`` payload, once the server is up."""
        return await asyncio.shield(self._ready)

    async def request(
        self, method: str, params: JSONObject, *, on_progress: ProgressSink | None = None
    ) -> JSONObject:
        """Send one request and wait for its result; cancelling the wait tells the agent to cancel."""
        return (await self.request_sized(method, params, on_progress=on_progress)).result

    async def request_sized(
        self, method: str, params: JSONObject, *, on_progress: ProgressSink | None = None
    ) -> Reply:
        """``request``, its result handed back with the size of the line that carried it."""
        if self._terminal is not None:
            raise self._terminal
        request_id = secrets.randbits(53) or 1
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(future, on_progress)
        try:
            await self._send({"type": "request", "id": request_id, "method": method, "params": params})
            return await future
        finally:
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
                    values = _count_values(line)
                    work += _line_cost(len(line), values)
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
            self._ready.set_result(_object(frame, "initialize"))
            return
        if kind == "fatal":
            message = _text(frame.get("message"), "the agent gave up without a reason")
            raise MessageTooLarge(message) if frame.get("reason") == TOO_LARGE else SandboxCrashed(message)
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
                pending.future.set_exception(ServerError(code, _text(error.get("message"), "(no message)")))

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
        self.closed.set()

    async def aclose(self) -> None:
        """Stop reading; pending requests fail with SessionClosed-like errors from the caller's side."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._end(SandboxCrashed("the session was closed"))


def describe_cap(max_bytes: int) -> str:
    """``4 MiB`` for a cap in whole MiB, else ``1000 byte``: what a person reads in the error."""
    return f"{max_bytes // 1024**2} MiB" if max_bytes % 1024**2 == 0 else f"{max_bytes} byte"


class LineFramer:
    """Cuts a byte stream into lines of at most ``max_bytes``, in time linear in the bytes fed.

    Each byte is searched for a newline once: the search resumes where the last
    one stopped, so a long line that arrives in tiny pieces (a hostile sandbox's
    choice) costs no more than one that arrives whole. Consumed lines are dropped
    from the buffer once per chunk, and a partial line past the cap is refused
    before it is kept, so the buffer never holds more than the cap plus one chunk.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already known to hold no newline

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` completes, without their newlines; MessageTooLarge for a line past the cap."""
        buffer = self._buffer
        buffer += chunk
        lines: list[bytes] = []
        start = 0
        while (newline := buffer.find(b"\n", self._scanned)) >= 0:
            if newline - start > self._max:
                raise self._too_large()
            lines.append(bytes(buffer[start:newline]))
            start = self._scanned = newline + 1
        if len(buffer) - start > self._max:
            raise self._too_large()
        del buffer[:start]
        self._scanned = len(buffer)
        return lines

    def _too_large(self) -> MessageTooLarge:
        return MessageTooLarge(f"the sandbox sent a message larger than the {describe_cap(self._max)} cap")


_FRAME_TYPES = frozenset({"ready", "result", "error", "progress", "fatal"})


def _refuse_constant(name: str) -> None:
    # Python's json accepts NaN and Infinity, which JSON does not; nothing downstream could pass them on.
    raise ValueError(f"{name} is not JSON")


def _line_cost(size: int, values: int) -> float:
    """Seconds of event loop a line of ``size`` bytes and ``values`` values costs, by the estimate above."""
    return _LINE_COST_S + size * _BYTE_COST_S + min(size, _TEXT_BYTES) * _TEXT_COST_S + values * _VALUE_COST_S


def _count_values(line: bytes) -> int:
    """The separators and containers outside the line's strings (at most, when few); MessageTooLarge past the cap.

    Linear in the line and cheap: the counts run at C speed, and the text is split only when at most
    MAX_FRAME_VALUES strings are in it. A line that is not JSON may be miscounted past the point where it
    stops being JSON, but the parser stops there too.
    """
    upper = _structure(line)  # some may sit inside strings; when few, that is close enough
    if upper <= MAX_FRAME_VALUES:
        return upper
    plain = line.replace(b"\\\\", b"").replace(b'\\"', b"")  # escapes gone, every quote left opens or closes
    if plain.count(b'"') // 2 <= MAX_FRAME_VALUES:
        outside = _structure(b"".join(plain.split(b'"')[::2]))
        if outside <= MAX_FRAME_VALUES:
            return outside
    raise MessageTooLarge(f"the sandbox sent a message of more than {MAX_FRAME_VALUES} JSON values, the cap")


def _structure(text: bytes) -> int:
    return text.count(b",") + text.count(b"[") + text.count(b"{")


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
    kept = whole_words(value, _MAX_TEXT)
    return printable(kept if len(kept) == len(value) else f"{kept.rstrip()} … (cut)") or default


def _preview(line: bytes) -> str:
    """The start of a bad line, quoted for an error message: cut in whole words and with invisible characters
    removed before quoting, since ``repr`` would spell a zero-width space that splits a secret as six visible
    characters, and the sanitizer the message passes next would see two harmless halves."""
    text = line[: _PREVIEW * 4].decode("utf-8", errors="replace")
    return repr(printable(whole_words(text, _PREVIEW))) + ("…" if len(line) > _PREVIEW else "")
