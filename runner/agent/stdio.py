"""The agent's life with a stdio server: spawn it, initialize it, serve host frames concurrently, report death.

Stdlib only (asyncio): the SDK is never imported on this path (see client.py
for why). Frames and their meaning are specified in ``docs/agent-protocol.md``.
A ``fatal`` frame is the last thing the agent ever writes: `StdioAgent.fatal`
closes the frame writer, kills the server's process group and unwinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import traceback
from collections.abc import Coroutine
from typing import Any

from .client import JSON, McpClient, RemoteError
from .frames import (
    INTERNAL_ERROR,
    METHODS,
    TOO_LARGE,
    CancelFrame,
    FrameWriter,
    RequestFrame,
    describe_cap,
    diag,
    init_timeout,
    max_message_bytes,
    open_stdin_lines,
    parse_host_frame,
)
from .lines import BoundedLines
from .words import describe_exception

#: How long a server may take to exit once its stdin is closed (or its stdout ended) before it is killed.
EXIT_GRACE_S = 2.0
_READ_CHUNK = 65536
#: Params each method cannot do without: a request missing one is refused here, as the SDK's models did.
_REQUIRED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


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


class StdioAgent:
    """Bridges the host to one MCP server, a ``command`` it spawns and speaks to over the server's stdio."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.max_message = max_message_bytes()
        self.out = FrameWriter(max_bytes=self.max_message, on_too_large=self._frame_too_large)
        self.process: asyncio.subprocess.Process | None = None
        self.ready = False
        self.stopping = False  # a clean shutdown is under way: the server's exit is expected
        self._fatal_sent = False
        self._main: asyncio.Task[Any] | None = None
        self._active: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- life cycle ---------------------------------------------------------------

    async def run(self) -> int:
        # The server first: it starts up while the agent sets up the rest.
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,
                start_new_session=True,
            )
        except OSError as exc:
            self.fatal(f"cannot start MCP server {shlex.join(self.command)}: {exc.strerror or exc}")
            return 1
        self._main = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            await self._session(self.process)
        except asyncio.CancelledError:
            if not (self._fatal_sent or self.stopping):
                raise
        except Exception as exc:
            traceback.print_exc()
            self.fatal(f"internal agent error: {describe_exception(exc)}")
        finally:
            self._kill_server()
        return 1 if self._fatal_sent or self.out.broken else 0

    async def _session(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        client = McpClient(process.stdin, self.fatal)
        reader = self._spawn(self._read_server(process.stdout, client))
        self._spawn(self._watch_exit(process, reader))
        timeout = init_timeout()
        try:
            initialized = await asyncio.wait_for(client.initialize(), timeout)
        except TimeoutError:
            self.fatal(f"MCP server did not complete initialize within {timeout:g} s")
            return
        except RemoteError as exc:
            self.fatal(f"MCP server rejected initialize: {exc.message} (code {exc.code})")
            return
        except (ConnectionError, OSError) as exc:
            await asyncio.sleep(EXIT_GRACE_S)  # the server is going: its exit status says more, if it comes
            self.fatal(f"MCP initialize failed: {describe_exception(exc)}")
            return
        self.ready = True
        self.out.send({"type": "ready", "initialize": initialized})
        await self._serve_host(client)
        # stdin closed: the host is done with this session. The server may go on its own, then it is killed.
        self.stopping = True
        process.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), EXIT_GRACE_S)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _serve_host(self, client: McpClient) -> None:
        readline = await open_stdin_lines()
        while line := await readline():
            if not line.strip():
                continue
            frame = parse_host_frame(line)
            if isinstance(frame, str):
                diag(frame)
            elif isinstance(frame, CancelFrame):
                task = self._active.pop(frame.id, None)
                if task is not None:
                    task.cancel()
            elif frame.id in self._active:
                diag(f"ignoring request {frame.id}: a request with that id is still running")
            else:
                self._active[frame.id] = asyncio.ensure_future(self._request(client, frame))

    # -- requests ---------------------------------------------------------------------

    async def _request(self, client: McpClient, frame: RequestFrame) -> None:
        try:
            await self._perform(client, frame)
        finally:
            if self._active.get(frame.id) is asyncio.current_task():
                del self._active[frame.id]

    async def _perform(self, client: McpClient, frame: RequestFrame) -> None:
        rid = frame.id

        def on_progress(progress: float, total: float | None, message: str | None) -> None:
            self.out.send({"type": "progress", "id": rid, "progress": progress, "total": total, "message": message})

        reply: JSON
        try:
            problem = self._refusal(frame)
            if problem is not None:
                raise ValueError(problem)
            progress = on_progress if frame.method == "tools/call" else None
            result = await client.request(frame.method, frame.params, progress)
            reply = {"type": "result", "id": rid, "result": result}
        except RemoteError as exc:
            reply = {"type": "error", "id": rid, "error": {"code": exc.code, "message": exc.message}}
        except Exception as exc:
            reply = {"type": "error", "id": rid, "error": {"code": INTERNAL_ERROR, "message": describe_exception(exc)}}
        try:
            self.out.send(reply)
        except (ValueError, RecursionError) as exc:  # a number JSON cannot hold (1e999 reads as infinity)
            error = {"code": INTERNAL_ERROR, "message": f"unserializable result: {exc}"}
            self.out.send({"type": "error", "id": rid, "error": error})

    @staticmethod
    def _refusal(frame: RequestFrame) -> str | None:
        if frame.method not in METHODS:
            return f"the agent does not support method {frame.method!r}"
        key = _REQUIRED.get(frame.method)
        if key is not None and not isinstance(frame.params.get(key), str):
            return f"invalid params for {frame.method}: {key!r} must be a string"
        return None

    # -- the server's output and end ----------------------------------------------------

    async def _read_server(self, stdout: asyncio.StreamReader, client: McpClient) -> None:
        lines = BoundedLines(self.max_message)
        while chunk := await stdout.read(_READ_CHUNK):
            complete = lines.feed(chunk)
            if complete is None:
                # At once, with the server killed: waiting for the line's end let one line take the agent's CPU
                # and memory until the caller's deadline.
                cap = describe_cap(self.max_message)
                self.fatal(f"MCP server wrote a message larger than the {cap} cap", TOO_LARGE)
                return
            for line in complete:
                client.received(line)
        # The server's stdout ended: its exit status says why, if it comes soon.
        process = self.process
        assert process is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), EXIT_GRACE_S)
        if process.returncode is None:
            phase = "" if self.ready else " before completing initialize"
            self.fatal(f"MCP server closed its stdout{phase} (the process is still running)")
        else:
            self.fatal(exit_message(process.returncode, self.ready))

    async def _watch_exit(self, process: asyncio.subprocess.Process, reader: asyncio.Task[None]) -> None:
        status = await process.wait()
        # What the server wrote before it exited is read first (its last answer); a child that keeps its stdout
        # open must not hide the exit, though.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), 0.5)
        self.fatal(exit_message(status, self.ready))

    # -- failure --------------------------------------------------------------------------

    def fatal(self, message: str, reason: str | None = None) -> None:
        """Report that the agent cannot go on, stop the server and unwind (exit status 1)."""
        if self._fatal_sent or self.stopping:
            return
        self._fatal_sent = True
        diag(f"fatal: {message}")
        self.out.send({"type": "fatal", "message": message, **({"reason": reason} if reason else {})})
        self.out.close()
        self._kill_server()
        if self._main is not None:
            self._main.cancel()

    def _frame_too_large(self) -> None:
        # The server's lines fit, but the frame that carries one (escaped, wrapped) would not fit the host's cap.
        cap = describe_cap(self.max_message)
        self.fatal(f"MCP server sent a message larger than the {cap} cap once framed for the host", TOO_LARGE)

    def _kill_server(self) -> None:
        if self.process is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def _on_signal(self, signum: int) -> None:
        diag(f"received {signal.Signals(signum).name}; shutting down")
        self.stopping = True
        if self._main is not None:
            self._main.cancel()
