"""A CallToolStream caller leaving just as its call fails: nobody hears the failure, and asyncio must not either.

The call runs in a task of its own; when the caller is cancelled in the very turn that task ends with an
error, the error was never retrieved, and asyncio logged "Task exception was never retrieved" with a
traceback at ERROR in the service log, for an ordinary refusal (a tool not found, a closed session).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Any

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api.servicer import RunnerServicer
from runner.errors import ToolNotFound
from runner.sessions.models import ToolCallOutcome
from tests.unit.test_stream_updates import Caller, Context


class FailingManager:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def call_tool(self, *args: Any, **kwargs: Any) -> ToolCallOutcome:
        self.started.set()
        await self.release.wait()
        raise ToolNotFound("session s1 has no tool 'gone'")


async def test_an_error_nobody_is_left_to_hear_is_not_logged_as_never_retrieved() -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    manager = FailingManager()
    servicer = RunnerServicer(manager, Caller())  # type: ignore[arg-type]
    stream = servicer.CallToolStream(pb.CallToolRequest(session_id="s1", tool="gone"), Context())  # type: ignore[arg-type]
    reading = asyncio.ensure_future(anext(stream))
    await manager.started.wait()
    manager.release.set()  # the call ends with its error in the next turn...
    reading.cancel()  # ...the very turn its caller leaves
    with contextlib.suppress(asyncio.CancelledError):
        await reading
    await stream.aclose()
    del stream, reading
    for _ in range(3):
        await asyncio.sleep(0)
        gc.collect()
    assert not unhandled, [c.get("message") for c in unhandled]
