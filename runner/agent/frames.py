"""Host-side framing: newline-delimited JSON frames on the agent's stdin/stdout, and the host's settings.

Standard library only, and the lightest of it: every module the agent imports costs each session its
start-up CPU and memory (``dataclasses`` and ``typing`` alone cost 2 MiB), so neither is used at run time.
"""

from __future__ import annotations

import json
import os
import select
import sys

TYPE_CHECKING = False  # typing costs the agent's start-up; mypy reads the names below all the same
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: Longest host frame the agent accepts (the host is trusted; this only bounds memory).
MAX_HOST_LINE = 64 * 1024 * 1024

#: The host's ``max_message_bytes``, handed to the agent in its environment (docs/agent-protocol.md).
MAX_MESSAGE_ENV = "MCP_AGENT_MAX_MESSAGE_BYTES"
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
#: A ``fatal`` frame's ``reason`` when a message passed that cap: the host answers RESOURCE_EXHAUSTED.
TOO_LARGE = "message_too_large"
#: The code of an error frame for a request the agent could not perform itself.
INTERNAL_ERROR = -32603
#: Seconds a server has to start and complete initialize; the host sets it from the open's own deadline.
INIT_TIMEOUT_ENV = "MCP_AGENT_INIT_TIMEOUT"
DEFAULT_INIT_TIMEOUT = 30.0

METHODS = frozenset(
    {
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "ping",
    }
)


def diag(message: str) -> None:
    """A diagnostic for people reading the container's stderr (never stdout)."""
    try:
        sys.stderr.write(f"mcp-agent: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def max_message_bytes() -> int:
    """The line cap for the server's output and the agent's own frames: the host's, or the default."""
    return int(_positive_setting(MAX_MESSAGE_ENV, int, DEFAULT_MAX_MESSAGE, f"{DEFAULT_MAX_MESSAGE} bytes"))


def init_timeout() -> float:
    """How long the server may take to answer initialize: the host's budget for this open, or the default."""
    return _positive_setting(INIT_TIMEOUT_ENV, float, DEFAULT_INIT_TIMEOUT, f"{DEFAULT_INIT_TIMEOUT:g} s")


def _positive_setting(name: str, parse: Callable[[str], float], default: float, shown: str) -> float:
    """The positive number the environment variable ``name`` holds, else ``default`` (with a diagnostic when the
    variable is set but not such a number)."""
    raw = os.environ.get(name, "")
    if raw:
        try:
            value = parse(raw)
            if value > 0:
                return value
        except ValueError:
            pass
        diag(f"ignoring invalid {name}={raw!r}; using {shown}")
    return default


def describe_cap(max_bytes: int) -> str:
    """``4 MiB`` for a cap in whole MiB, else ``1000 byte`` (as the host's channel says it)."""
    return f"{max_bytes // 1024**2} MiB" if max_bytes % 1024**2 == 0 else f"{max_bytes} byte"


class RequestFrame:
    """``capabilities``: the client capabilities to declare with this request (2026-07-28 era), None for the
    agent's own."""

    __slots__ = ("capabilities", "id", "method", "params")

    def __init__(
        self, id: int, method: str, params: dict[str, Any] | None = None, capabilities: dict[str, Any] | None = None
    ) -> None:
        self.id = id
        self.method = method
        self.params = {} if params is None else params
        self.capabilities = capabilities

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RequestFrame) and (self.id, self.method, self.params, self.capabilities) == (
            other.id,
            other.method,
            other.params,
            other.capabilities,
        )

    def __repr__(self) -> str:
        return f"RequestFrame({self.id!r}, {self.method!r}, {self.params!r}, {self.capabilities!r})"


class AnswerFrame:
    """The host's answer to the server's request the agent relayed as ``id``: a result object, or an error
    (``{"code": int, "message": str}``)."""

    __slots__ = ("error", "id", "result")

    def __init__(self, id: int, result: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> None:
        self.id = id
        self.result = result
        self.error = error

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AnswerFrame) and (self.id, self.result, self.error) == (
            other.id,
            other.result,
            other.error,
        )

    def __repr__(self) -> str:
        return f"AnswerFrame({self.id!r}, result={self.result!r}, error={self.error!r})"


class CancelFrame:
    __slots__ = ("id",)

    def __init__(self, id: int) -> None:
        self.id = id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CancelFrame) and self.id == other.id

    def __repr__(self) -> str:
        return f"CancelFrame({self.id!r})"


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def parse_host_frame(line: bytes) -> RequestFrame | CancelFrame | AnswerFrame | str:
    """Parse one host line; a `str` result is a diagnostic explaining why it was rejected."""
    try:
        frame = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"ignoring host frame that is not JSON ({exc})"
    if not isinstance(frame, dict):
        return "ignoring host frame that is not a JSON object"
    kind, rid = frame.get("type"), frame.get("id")
    if kind not in ("request", "cancel", "answer"):
        return f"ignoring host frame of unknown type {kind!r}"
    if not _is_id(rid):
        return f"ignoring {kind} frame without a positive integer id ({rid!r})"
    assert isinstance(rid, int)
    if kind == "cancel":
        return CancelFrame(rid)
    if kind == "answer":
        return _answer_frame(rid, frame)
    method, params, capabilities = frame.get("method"), frame.get("params", {}), frame.get("capabilities")
    if not isinstance(method, str):
        return f"ignoring request {rid}: 'method' is not a string"
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return f"ignoring request {rid}: 'params' is not an object"
    if not (capabilities is None or isinstance(capabilities, dict)):
        return f"ignoring request {rid}: 'capabilities' is not an object"
    return RequestFrame(rid, method, params, capabilities)


def _answer_frame(rid: int, frame: dict[str, Any]) -> AnswerFrame | str:
    result, error = frame.get("result"), frame.get("error")
    if (result is None) == (error is None):
        return f"ignoring answer {rid}: it needs a 'result' or an 'error', not both"
    if result is not None and not isinstance(result, dict):
        return f"ignoring answer {rid}: 'result' is not an object"
    if error is not None and not (
        isinstance(error, dict)
        and isinstance(error.get("code"), int)
        and not isinstance(error["code"], bool)
        and isinstance(error.get("message"), str)
    ):
        return f"ignoring answer {rid}: 'error' needs an integer 'code' and a string 'message'"
    return AnswerFrame(rid, result, error)


class FrameWriter:
    """Writes whole frames to fd 1, one ``os.write`` loop per frame, with no await inside.

    The agent is single-threaded on one event loop, so a synchronous write can
    never interleave with another frame. Once `close()`d (after ``fatal``),
    every later frame is dropped, so nothing follows the fatal frame. A frame
    longer than ``max_bytes`` is not written (the host would refuse it, as a
    violation): ``on_too_large`` hears of it instead.
    """

    def __init__(
        self, fd: int = 1, *, max_bytes: int | None = None, on_too_large: Callable[[], None] | None = None
    ) -> None:
        self._fd = fd
        self._max = max_bytes
        self._on_too_large = on_too_large
        self.closed = False
        self.broken = False

    def send(self, frame: dict[str, Any]) -> bool:
        if self.closed:
            return False
        data = json.dumps(frame, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"
        if self._max is not None and len(data) - 1 > self._max:
            if self._on_too_large is not None:
                self._on_too_large()
            return False
        view = memoryview(data)
        try:
            while view:
                try:
                    written = os.write(self._fd, view)
                except BlockingIOError:
                    select.select([], [self._fd], [])
                    continue
                view = view[written:]
        except OSError as exc:
            # The host is gone (broken pipe): nobody can read anything we write.
            diag(f"cannot write to the host ({exc}); giving up")
            self.closed = self.broken = True
            return False
        return True

    def close(self) -> None:
        self.closed = True


class HostLines:
    """The host's stdin cut into lines; one longer than ``MAX_HOST_LINE`` is dropped (the host is trusted: this
    only bounds memory). Each byte is searched for a newline once."""

    def __init__(self, max_bytes: int = MAX_HOST_LINE) -> None:
        self._max = max_bytes
        self._buffer = bytearray()
        self._scanned = 0
        self._skipping = False  # inside a line that passed the cap: dropped up to its newline

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += chunk
        lines: list[bytes] = []
        start = 0
        while (newline := buffer.find(b"\n", self._scanned)) >= 0:
            if self._skipping or newline - start > self._max:
                self._skipped()
            else:
                lines.append(bytes(buffer[start:newline]))
            self._skipping = False
            start = self._scanned = newline + 1
        if len(buffer) - start > self._max:
            self._skipped()
            self._skipping = True
            start = len(buffer)
        del buffer[:start]
        self._scanned = len(buffer)
        return lines

    def _skipped(self) -> None:
        if not self._skipping:  # said once per line, however many chunks it spans
            diag(f"ignoring a host line longer than {self._max} bytes")
