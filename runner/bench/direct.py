"""The baseline: the profile's server started on the host and driven directly with the mcp SDK over stdio.

What a caller would pay without the runner: spawn, initialize and tools/list for an open, then tools/call
on the SDK's ``ClientSession``, all in this process. The dev install puts the PyPI servers next to this
interpreter, which need not be on PATH.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from runner.config import Profile


def host_command(profile: Profile) -> list[str] | None:
    """The profile's command as it runs on the host, or None when its server is not installed here."""
    if not profile.command:
        return None
    search = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    found = shutil.which(profile.command[0], path=search)
    return [found, *profile.command[1:]] if found else None


class DirectSession:
    """One server process on the host with an initialized SDK client session; ``close`` ends both."""

    def __init__(self, stack: AsyncExitStack, session: ClientSession) -> None:
        self._stack = stack
        self.session = session

    @classmethod
    async def open(cls, command: Sequence[str]) -> DirectSession:
        """Spawn, initialize and list tools: what an open through the service does before it answers."""
        params = StdioServerParameters(command=command[0], args=list(command[1:]), env=dict(os.environ))
        stack = AsyncExitStack()
        try:
            read, write = await stack.enter_async_context(stdio_client(params))
            session = await stack.enter_async_context(ClientSession(read, write))
            await session.initialize()
            await session.list_tools()
        except BaseException:
            await stack.aclose()
            raise
        return cls(stack, session)

    async def close(self) -> None:
        await self._stack.aclose()


@contextlib.asynccontextmanager
async def direct_sessions(command: Sequence[str], count: int) -> AsyncIterator[list[DirectSession]]:
    """``count`` server processes, each with its own client session, all closed on the way out.

    Opened one after another: anyio's stdio transport must be left in the task that entered it.
    """
    opened: list[DirectSession] = []
    try:
        for _ in range(count):
            opened.append(await DirectSession.open(command))
        yield opened
    finally:
        for session in reversed(opened):
            await session.close()
