"""The agent's life with a stdio server: spawn it, initialize it, serve host frames, report its death.

One thread, one ``selectors`` loop, the lightest of the standard library: the
agent's imports are part of every session's start-up CPU and memory, and
asyncio alone (which loads ssl, inspect, logging…) cost more than everything
else the agent does. The loop watches the server's stdout and its exit (a
pidfd), the server's stdin while anything waits to be written, the host's
stdin once the server is ready, and a signal wake-up pipe. Frames and their
meaning are specified in ``docs/agent-protocol.md``. A ``fatal`` frame is the
last thing the agent ever writes: `StdioAgent.fatal` closes the frame writer,
ends the loop, and the server's process group is killed.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import time

from .client import INVALID_PARAMS, McpClient, RemoteError, error_object
from .era import wanted_era
from .frames import (
    INTERNAL_ERROR,
    METHODS,
    TOO_LARGE,
    AnswerFrame,
    CancelFrame,
    FrameWriter,
    HostLines,
    describe_cap,
    diag,
    init_timeout,
    max_message_bytes,
    parse_host_frame,
)
from .lines import BoundedLines
from .words import describe_exception

TYPE_CHECKING = False  # typing costs the agent's start-up; mypy reads the names below all the same
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .frames import RequestFrame

    #: (when, callback): a list, so that one is told from another by identity.
    Timer = list[Any]

#: How long a server may take to exit once its stdin is closed (or its stdout ended) before it is killed.
EXIT_GRACE_S = 2.0
#: How often the server's exit is polled where a pidfd is not to be had.
EXIT_POLL_S = 0.1
#: Messages of the cap's size that may wait for the server to read them before it counts as not reading.
UNREAD_MESSAGES = 4
_READ_CHUNK = 65536
#: Reads of what a server left in its stdout pipe when it exited (a pipe holds 16 chunks): its last answer.
_LAST_READS = 64
#: Params each method cannot do without: a request missing one is refused here, as the SDK's models did.
_REQUIRED: dict[str, tuple[tuple[str, type, str], ...]] = {
    "tools/call": (("name", str, "a string"),),
    "prompts/get": (("name", str, "a string"),),
    "resources/read": (("uri", str, "a string"),),
    "resources/subscribe": (("uri", str, "a string"),),
    "resources/unsubscribe": (("uri", str, "a string"),),
    "logging/setLevel": (("level", str, "a string"),),
    "completion/complete": (("ref", dict, "an object"), ("argument", dict, "an object")),
}
STDIN, STDOUT = 0, 1


def exit_message(status: int, ready: bool) -> str:
    phase = "" if ready else " before completing initialize"
    if status >= 0:
        return f"MCP server exited with status {status}{phase} (its stderr may say why)"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    hint = " (out of memory, or killed from outside)" if -status == signal.SIGKILL else ""
    return f"MCP server was killed by {name}{phase}{hint}"


def spawn(command: list[str]) -> tuple[int, int, int]:
    """Start ``command`` in a session (process group) of its own: (pid, its stdin, its stdout) as our pipe ends."""
    child_in, to_child = os.pipe()
    from_child, child_out = os.pipe()
    try:
        pid = os.posix_spawnp(
            command[0],
            command,
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, child_in, STDIN), (os.POSIX_SPAWN_DUP2, child_out, STDOUT)],
            setsid=True,
            # Python ignores these two; a server expects them at their defaults, as subprocess restores them.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            setsigmask=(),
        )
    except BaseException:
        for fd in (to_child, from_child):
            os.close(fd)
        raise
    finally:
        os.close(child_in)
        os.close(child_out)
    os.set_blocking(to_child, False)
    os.set_blocking(from_child, False)
    return pid, to_child, from_child


class StdioAgent:
    """Bridges the host to one MCP server, a ``command`` it spawns and speaks to over the server's stdio."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.max_message = max_message_bytes()
        self.out = FrameWriter(max_bytes=self.max_message, on_too_large=self._frame_too_large)
        self.ready = False
        self.stopping = False  # a clean shutdown is under way: the server's exit is expected
        self.running = True
        self._fatal_sent = False
        self._pid: int | None = None
        self._status: int | None = None  # the server's exit status, once reaped
        self._selector = selectors.DefaultSelector()
        self._timers: list[Timer] = []
        self._init_timer: Timer | None = None
        self._pidfd: int | None = None
        self._to_server: int | None = None
        self._from_server: int | None = None
        self._pending_out = bytearray()  # what waits to be written to the server's stdin
        self._queued = self._written = 0  # bytes ever queued for it, and written to it
        self._marks: list[tuple[int, Callable[[], None]]] = []  # (offset, run once written past it)
        self._server_lines = BoundedLines(self.max_message)
        self._host_lines = HostLines()
        self._host_file = False  # the host's stdin is a regular file: always readable, epoll refuses it
        self._active: dict[int, tuple[int, str]] = {}  # host request id -> (the client's request id, method)
        self._signalled: int | None = None
        self.client = McpClient(self._send, self.fatal, self._server_request, self._server_notification)

    # -- life cycle ---------------------------------------------------------------

    def run(self) -> int:
        try:
            # The server first: it starts up while the agent sets up the rest.
            self._pid, self._to_server, self._from_server = spawn(self.command)
        except OSError as exc:
            import shlex

            self.fatal(f"cannot start MCP server {shlex.join(self.command)}: {exc.strerror or exc}")
            return 1
        try:
            self._start()
            self._loop()
        except Exception as exc:
            import traceback

            traceback.print_exc()
            self.fatal(f"internal agent error: {describe_exception(exc)}")
        finally:
            self._kill_server()
        return 1 if self._fatal_sent or self.out.broken else 0

    def _start(self) -> None:
        assert self._pid is not None and self._from_server is not None
        self._selector.register(self._from_server, selectors.EVENT_READ, self._server_readable)
        try:
            self._pidfd = os.pidfd_open(self._pid)
        except (AttributeError, OSError):  # an old kernel, or a seccomp profile without pidfd_open
            self._after(EXIT_POLL_S, self._poll_exit)
        else:
            self._selector.register(self._pidfd, selectors.EVENT_READ, self._exited)
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        self._selector.register(wake_read, selectors.EVENT_READ, lambda: self._woken(wake_read))
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        timeout = init_timeout()
        message = f"MCP server did not complete initialize within {timeout:g} s"
        self._init_timer = self._after(timeout, lambda: self.fatal(message))
        self.client.connect(wanted_era(), self._initialized)

    def _loop(self) -> None:
        while self.running:
            now = time.monotonic()
            wait = None if not self._timers else max(0.0, min(when for when, _ in self._timers) - now)
            for key, _ in self._selector.select(0 if self._host_file else wait):
                if not self.running:
                    return
                key.data()
            if self._host_file and self.running:
                self._host_readable()
            now = time.monotonic()
            for timer in [timer for timer in self._timers if timer[0] <= now]:
                self._cancel(timer)
                if self.running:
                    timer[1]()

    def _after(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = [time.monotonic() + delay, callback]
        self._timers.append(timer)
        return timer

    def _cancel(self, timer: Timer | None) -> None:
        self._timers = [t for t in self._timers if t is not timer]

    def _initialized(self, protocol: str, outcome: dict[str, Any] | RemoteError) -> None:
        if isinstance(outcome, RemoteError):
            self.fatal(f"MCP server rejected initialize: {outcome.message} (code {outcome.code})")
            return
        self._cancel(self._init_timer)
        self.ready = True
        self.out.send({"type": "ready", "protocol": protocol, "initialize": outcome})
        try:
            self._selector.register(STDIN, selectors.EVENT_READ, self._host_readable)
        except PermissionError:
            self._host_file = True

    # -- the host's frames ------------------------------------------------------------

    def _host_readable(self) -> None:
        try:
            chunk = os.read(STDIN, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._host_done()
            return
        for line in self._host_lines.feed(chunk):
            if not self.running:
                return
            if line.strip():
                self._host_frame(line)

    def _host_frame(self, line: bytes) -> None:
        frame = parse_host_frame(line)
        if isinstance(frame, str):
            diag(frame)
        elif isinstance(frame, CancelFrame):
            active = self._active.pop(frame.id, None)
            if active is not None:
                self.client.cancel(active[0])
        elif isinstance(frame, AnswerFrame):
            if not self.client.answer(frame.id, frame.result, frame.error):
                diag(f"ignoring answer {frame.id}: no request of the server's is waiting for it")
        elif frame.id in self._active:
            diag(f"ignoring request {frame.id}: a request with that id is still running")
        else:
            problem = self._refusal(frame)
            if problem is not None:
                error = {"code": INTERNAL_ERROR, "message": problem}
                self.out.send({"type": "error", "id": frame.id, "error": error})
                return
            rid = frame.id

            def done(outcome: dict[str, Any] | RemoteError) -> None:
                del self._active[rid]
                self._reply(rid, outcome)

            def progress(progress: float, total: float | None, message: str | None) -> None:
                self.out.send({"type": "progress", "id": rid, "progress": progress, "total": total, "message": message})

            on_progress = progress if frame.method == "tools/call" else None
            request_id = self.client.request(frame.method, frame.params, done, on_progress, frame.capabilities)
            self._active[rid] = (request_id, frame.method)

    @staticmethod
    def _refusal(frame: RequestFrame) -> str | None:
        if frame.method not in METHODS:
            return f"the agent does not support method {frame.method!r}"
        for key, kind, shown in _REQUIRED.get(frame.method, ()):
            if not isinstance(frame.params.get(key), kind):
                return f"invalid params for {frame.method}: {key!r} must be {shown}"
        return None

    def _reply(self, rid: int, outcome: dict[str, Any] | RemoteError) -> None:
        if isinstance(outcome, RemoteError):
            error = error_object(outcome.code, outcome.message, outcome.data)
            self.out.send({"type": "error", "id": rid, "error": error})
            return
        try:
            self.out.send({"type": "result", "id": rid, "result": outcome})
        except (ValueError, RecursionError) as exc:  # a number JSON cannot hold (1e999 reads as infinity)
            what = "nesting too deep" if isinstance(exc, RecursionError) else "a number JSON cannot carry (inf, NaN)"
            error = {"code": INTERNAL_ERROR, "message": f"the MCP server's result holds {what}; it was not passed on"}
            self.out.send({"type": "error", "id": rid, "error": error})

    # -- what the server asks and tells the client ------------------------------------------

    def _related(self) -> int | None:
        """The host request the server's words belong to: the only one (other than ping) in flight, else None."""
        working = [rid for rid, (_, method) in self._active.items() if method != "ping"]
        return working[0] if len(working) == 1 else None

    def _server_request(self, relay_id: int, method: str, params: dict[str, Any]) -> None:
        frame = {"type": "server_request", "id": relay_id, "method": method, "params": params}
        try:
            self.out.send({**frame, "related": self._related()})
        except (ValueError, RecursionError) as exc:
            what = "nesting too deep" if isinstance(exc, RecursionError) else "a number JSON cannot carry (inf, NaN)"
            self.client.answer(relay_id, error={"code": INVALID_PARAMS, "message": f"Invalid params: {what}"})

    def _server_notification(self, method: str, params: dict[str, Any]) -> None:
        related = self._related() if method == "notifications/message" else None
        try:
            self.out.send({"type": "notification", "method": method, "params": params, "related": related})
        except (ValueError, RecursionError):
            diag(f"dropped the server's {method}: it holds what JSON cannot carry")

    def _host_done(self) -> None:
        """stdin closed: the host is done with this session. The server may go on its own, then it is killed."""
        self.stopping = True
        if self._host_file:
            self._host_file = False
        else:
            self._selector.unregister(STDIN)
        self._close_server_stdin()
        if self._status is not None:
            self.running = False
        else:
            self._after(EXIT_GRACE_S, self._stop)

    def _stop(self) -> None:
        self.running = False

    # -- the server's stdin -------------------------------------------------------------

    def _send(self, data: bytes, on_written: Callable[[], None] | None) -> None:
        if self._to_server is None:
            return  # the server's stdin is closed: it reads nothing more
        self._pending_out += data
        if len(self._pending_out) > self._max_unread():
            # A server that stopped reading: what the host sends would pile up here until the sandbox's memory
            # cap killed everything, with no word of why.
            self.fatal(f"MCP server stopped reading its stdin ({len(self._pending_out)} bytes waiting for it)")
            return
        self._queued += len(data)
        if on_written is not None:
            self._marks.append((self._queued, on_written))
        if len(self._pending_out) == len(data):
            self._flush()

    def _max_unread(self) -> int:
        """What may wait for the server to read: a few of the largest messages, whatever it is busy with."""
        return UNREAD_MESSAGES * self.max_message

    def _flush(self) -> None:
        fd = self._to_server
        if fd is None:
            return
        try:
            written = os.write(fd, self._pending_out)
        except BlockingIOError:
            written = 0
        except OSError:  # the server closed its stdin: its exit, if it comes soon, is reported as such
            self._close_server_stdin()
            if not (self.stopping or self._fatal_sent) and self._status is None:
                # Else it lives on reading nothing: every request, this one and the next, would wait for the caller's
                # deadline, unanswered.
                self._after(EXIT_GRACE_S, self._stdin_gone)
            return
        del self._pending_out[:written]
        self._written += written
        while self._marks and self._marks[0][0] <= self._written:
            self._marks.pop(0)[1]()
        waiting = fd in self._selector.get_map()
        if self._pending_out and not waiting:
            self._selector.register(fd, selectors.EVENT_WRITE, self._flush)
        elif not self._pending_out and waiting:
            self._selector.unregister(fd)

    def _close_server_stdin(self) -> None:
        fd, self._to_server = self._to_server, None
        if fd is not None:
            if fd in self._selector.get_map():
                self._selector.unregister(fd)
            os.close(fd)
        self._pending_out.clear()

    # -- the server's stdout and exit ---------------------------------------------------

    def _server_readable(self) -> bool:
        """Read and dispatch what the server wrote; False when nothing was there to read."""
        fd = self._from_server
        assert fd is not None
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self._server_eof()
            return False
        lines = self._server_lines.feed(chunk)
        if lines is None:
            # At once, with the server killed: waiting for the line's end let one line take the agent's CPU and
            # memory until the caller's deadline.
            self.fatal(f"MCP server wrote a message larger than the {describe_cap(self.max_message)} cap", TOO_LARGE)
            return False
        for line in lines:
            if not self.running:
                break
            self.client.received(line)
        return True

    def _server_eof(self) -> None:
        fd, self._from_server = self._from_server, None
        if fd is not None:
            self._selector.unregister(fd)
            os.close(fd)
        if self.stopping or self._fatal_sent:
            return
        if self._status is not None:
            self.fatal(exit_message(self._status, self.ready))
        else:  # its exit status says why, if it comes soon
            self._after(EXIT_GRACE_S, self._stdout_gone)

    def _stdout_gone(self) -> None:
        if self._status is None:
            phase = "" if self.ready else " before completing initialize"
            self.fatal(f"MCP server closed its stdout{phase} (the process is still running)")

    def _stdin_gone(self) -> None:
        if self._status is None:
            phase = "" if self.ready else " before completing initialize"
            self.fatal(f"MCP server closed its stdin{phase} (the process is still running)")

    def _poll_exit(self) -> None:
        pid, status = os.waitpid(self._pid or 0, os.WNOHANG)
        if pid:
            self._reaped(status)
        else:
            self._after(EXIT_POLL_S, self._poll_exit)

    def _exited(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            self._selector.unregister(fd)
            os.close(fd)
        self._reaped(os.waitpid(self._pid or 0, 0)[1])

    def _reaped(self, wait_status: int) -> None:
        self._status = os.waitstatus_to_exitcode(wait_status)
        if self.stopping:
            self.running = False
            return
        # What the server wrote before it exited is read first (its last answer); a child that keeps its stdout
        # open and writing must not hide the exit, though.
        for _ in range(_LAST_READS):
            if self._from_server is None or not self.running or not self._server_readable():
                break
        self.fatal(exit_message(self._status, self.ready))

    # -- failure --------------------------------------------------------------------------

    def fatal(self, message: str, reason: str | None = None) -> None:
        """Report that the agent cannot go on, stop the server and unwind (exit status 1)."""
        if self._fatal_sent or self.stopping:
            return
        self._fatal_sent = True
        self.running = False
        diag(f"fatal: {message}")
        self.out.send({"type": "fatal", "message": message, **({"reason": reason} if reason else {})})
        self.out.close()
        self._kill_server()

    def _frame_too_large(self) -> None:
        # The server's lines fit, but the frame that carries one (escaped, wrapped) would not fit the host's cap.
        cap = describe_cap(self.max_message)
        self.fatal(f"MCP server sent a message larger than the {cap} cap once framed for the host", TOO_LARGE)

    def _kill_server(self) -> None:
        if self._pid is not None:
            with contextlib.suppress(OSError):
                os.killpg(self._pid, signal.SIGKILL)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signalled = signum

    def _woken(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            os.read(fd, 512)
        if self._signalled is not None:
            diag(f"received {signal.Signals(self._signalled).name}; shutting down")
            self.stopping = True
            self.running = False
