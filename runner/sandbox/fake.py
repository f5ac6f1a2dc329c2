"""FakeBackend: an in-process sandbox driven by a handler, for unit tests of everything above the backend.

The handler plays the container: it reads the bytes the host writes to stdin
and writes whatever bytes it likes to stdout and stderr, so tests can speak the
agent protocol correctly, or break it on purpose. When the handler returns,
the fake sandbox "exits" with that status.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from runner.sandbox.base import EgressCallback, EgressDecision, SandboxExit, SandboxSpec, SandboxStats


@dataclass
class FakeIO:
    """The handler's side of one fake sandbox."""

    spec: SandboxSpec
    stdin: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    stdout: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    stderr: bytearray = field(default_factory=bytearray)
    oom_killed: bool = False
    on_egress: EgressCallback | None = None

    def egress(self, decision: EgressDecision) -> None:
        """Report a decision as the session's egress proxy would (only when the spec has a network)."""
        if self.spec.network is not None and self.on_egress is not None:
            self.on_egress(decision)

    async def readline(self) -> bytes:
        """One line the host wrote, b"" once the host closed stdin."""
        return await self.stdin.get()

    async def write(self, data: bytes) -> None:
        await self.stdout.put(data)


Handler = Callable[[FakeIO], Awaitable[int]]


class FakeSandbox:
    def __init__(self, io: FakeIO, handler: Handler, name: str, image_id: str) -> None:
        self._io = io
        self._name = name
        self._image_id = image_id
        self._pending_line = bytearray()
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(handler))
        self.destroyed = False

    async def _run(self, handler: Handler) -> None:
        try:
            code = await handler(self._io)
        except asyncio.CancelledError:
            code = 137
        if not self._exit.done():
            self._exit.set_result(code)
        await self._io.stdout.put(b"")

    @property
    def id(self) -> str:
        return self._name

    @property
    def image_id(self) -> str:
        return self._image_id

    async def read_stdout(self) -> bytes:
        return await self._io.stdout.get() if not self.destroyed else b""

    async def write_stdin(self, data: bytes) -> None:
        if self.destroyed or self._exit.done():
            raise ConnectionError("fake sandbox is gone")
        self._pending_line += data
        while b"\n" in self._pending_line:
            line, _, rest = bytes(self._pending_line).partition(b"\n")
            self._pending_line = bytearray(rest)
            await self._io.stdin.put(line + b"\n")

    def stderr_tail(self) -> str:
        return self._io.stderr.decode(errors="replace")[-4096:]

    async def wait_exit(self, timeout: float) -> SandboxExit:
        try:
            code = await asyncio.wait_for(asyncio.shield(self._exit), timeout)
        except TimeoutError:
            return SandboxExit(exit_code=None)
        return SandboxExit(exit_code=code, oom_killed=self._io.oom_killed)

    async def stats(self) -> SandboxStats:
        return SandboxStats(cpu_seconds=0.01, peak_memory_bytes=1024)

    async def destroy(self) -> None:
        if self.destroyed:
            return
        self.destroyed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._io.stdin.put(b"")
        await self._io.stdout.put(b"")


class FakeBackend:
    """Implements ``SandboxBackend``; ``handler_for(spec)`` chooses each sandbox's behaviour."""

    def __init__(self, handler_for: Callable[[SandboxSpec], Handler]) -> None:
        self._handler_for = handler_for

    async def start(self, spec: SandboxSpec, on_egress: EgressCallback | None = None) -> FakeSandbox:
        image_id = spec.image if spec.image.startswith("sha256:") else f"sha256:fake-{spec.image}"
        return FakeSandbox(
            FakeIO(spec, on_egress=on_egress), self._handler_for(spec), f"fake-{spec.session_id}", image_id
        )

    async def sweep_orphans(self, instance: str) -> int:
        return 0

    async def check(self) -> None:
        return None

    async def settle(self) -> None:
        return None

    def close(self) -> None:
        return None
