"""Drive ``python -m runner.agent`` as a real subprocess over pipes (no Docker, no SDK mocks)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPTED_SERVER = ROOT / "tests" / "servers" / "scripted_server.py"
PYTHON = sys.executable


def server_command(behaviour: str = "good") -> list[str]:
    return [PYTHON, str(SCRIPTED_SERVER), behaviour]


class AgentProcess:
    """One agent process; frames in on stdin, frames out on stdout, stderr collected."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr = bytearray()
        assert proc.stderr is not None
        self._stderr_task = asyncio.create_task(self._collect(proc.stderr))

    @classmethod
    async def start(
        cls,
        behaviour: str = "good",
        *,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        before: str | None = None,
    ) -> AgentProcess:
        """``before``: Python source run in the agent's process before the agent (to take a facility away)."""
        agent = ["-m", "runner.agent"]
        if before is not None:
            agent = ["-c", f"{before}\nimport runpy\nrunpy.run_module('runner.agent', run_name='__main__')"]
        proc = await asyncio.create_subprocess_exec(
            PYTHON,
            *agent,
            "--",
            *(command or server_command(behaviour)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            limit=64 * 1024 * 1024,
        )
        return cls(proc)

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.stderr += chunk

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode(errors="replace")

    async def send(self, frame: dict[str, Any] | bytes) -> None:
        assert self.proc.stdin is not None
        data = frame if isinstance(frame, bytes) else json.dumps(frame).encode() + b"\n"
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def request(self, rid: int, method: str, params: dict[str, Any] | None = None) -> None:
        frame: dict[str, Any] = {"type": "request", "id": rid, "method": method}
        if params is not None:
            frame["params"] = params
        await self.send(frame)

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise EOFError(f"agent stdout closed; stderr:\n{self.stderr_text}")
        frame = json.loads(line)
        assert isinstance(frame, dict)
        return frame

    async def recv_for(self, rid: int, timeout: float = 10.0) -> dict[str, Any]:
        """The next result/error frame for `rid`, skipping progress frames."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if frame.get("id") == rid and frame["type"] in ("result", "error"):
                return frame

    async def ready(self, timeout: float = 20.0) -> dict[str, Any]:
        frame = await self.recv(timeout)
        assert frame["type"] == "ready", (frame, self.stderr_text)
        return frame

    async def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    async def wait(self, timeout: float = 15.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._stderr_task, 5)
        return code

    async def aclose(self) -> None:
        """Close like a host would (stdin EOF), so the agent stops its server; kill as a last resort."""
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            if not self.proc.stdin.is_closing():
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._stderr_task.cancel()
