"""CallToolStream's queue: a server's progress flood costs a bounded amount of memory, whatever the caller reads."""

from __future__ import annotations

import asyncio
from typing import Any

import mcp_types

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api.servicer import _DONE, MAX_PROGRESS_WAITING, RunnerServicer, _StreamUpdates
from runner.sessions.models import ProgressCallback, ProgressEvent, ToolCallOutcome

FLOOD = 50_000


class FloodingManager:
    """A call whose server sends FLOOD progress notifications before it answers, none of them waiting for the caller."""

    def __init__(self) -> None:
        self.sent = 0

    async def call_tool(
        self, *args: Any, on_progress: ProgressCallback | None = None, **kwargs: Any
    ) -> ToolCallOutcome:
        assert on_progress is not None
        for step in range(1, FLOOD + 1):
            await on_progress(ProgressEvent(progress=step, total=FLOOD, message="p" * 1024))
            self.sent += 1
        return ToolCallOutcome(result=mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text="ok")]))


class Caller:
    def identify(self, context: Any) -> str:
        return "alice"


class Context:
    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()  # no traceparent: the runner's spans start their own trace


async def test_a_progress_flood_reaches_a_slow_caller_bounded_and_latest_last() -> None:
    manager = FloodingManager()
    servicer = RunnerServicer(manager, Caller())  # type: ignore[arg-type]
    request = pb.CallToolRequest(session_id="s1", tool="flood", arguments_json="{}")
    stream = servicer.CallToolStream(request, Context())  # type: ignore[arg-type]
    first = await anext(stream)  # the caller reads once, then is slow: the server floods meanwhile
    while manager.sent < FLOOD:
        await asyncio.sleep(0)
    rest = [item async for item in stream]
    progress = [item.progress for item in [first, *rest] if item.HasField("progress")]
    assert len(progress) <= MAX_PROGRESS_WAITING + 2  # without a bound: all 50 000, each holding 1 KiB
    assert progress[-1].progress == FLOOD  # the latest is never the one dropped
    assert [p.progress for p in progress] == sorted(p.progress for p in progress)
    assert rest[-1].HasField("result")


async def test_approvals_and_the_end_are_never_dropped_and_keep_their_order() -> None:
    updates = _StreamUpdates()
    updates.put("approval pending")
    for step in range(1000):
        updates.put(step, progress=True)
    updates.put("approved")
    updates.put(_DONE)
    items = []
    while (item := await updates.get()) is not _DONE:
        items.append(item)
    assert items[0] == "approval pending" and items[-1] == "approved"
    assert items[1:-1] == list(range(1000 - MAX_PROGRESS_WAITING, 1000))


async def test_get_waits_for_the_next_update() -> None:
    updates = _StreamUpdates()
    waiting = asyncio.create_task(updates.get())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    updates.put(1, progress=True)
    assert await asyncio.wait_for(waiting, 2) == 1
    updates.put(2, progress=True)  # the count of waiting progress went back down: nothing is dropped
    assert await asyncio.wait_for(updates.get(), 2) == 2
