"""What a sandbox's egress can cost the host: decision lines cut in linear time, decisions taken at a bounded pace."""

from __future__ import annotations

import asyncio

from runner.pace import Pace
from runner.sandbox.egress import DECISION_BURST, DECISIONS_PER_S, MAX_LINE_BYTES, EgressProxy, _Lines
from tests.unit.test_channel import CountingBuffer
from tests.unit.test_sandbox_egress import GOOD, NETWORK, FakeHandle, Recorder, _stop, line


def test_decision_lines_are_cut_in_linear_time() -> None:
    lines = _Lines(CountingBuffer())
    one = b"d" * (MAX_LINE_BYTES - 1) + b"\n"
    data = one * 8 + b"x" * (MAX_LINE_BYTES * 3) + b"\nlast\n"  # kept lines, then one dropped for its length
    got = [cut for start in range(0, len(data), 16) for cut in lines.feed(data[start : start + 16])]
    assert got == [one[:-1]] * 8 + [b"last"]
    assert lines.buffer.scanned <= len(data)  # type: ignore[attr-defined]  # rescanning: ~len(data)**2 / 32


def test_pace_lets_a_burst_through_then_asks_for_the_wait_its_rate_implies() -> None:
    now = [0.0]
    pace = Pace(100.0, 50, clock=lambda: now[0])
    assert pace.take(50) == 0.0
    assert pace.take(100) == 1.0  # 100 beyond the burst at 100 a second
    now[0] = 1.0
    assert pace.take(0) == 0.0  # the wait is over: back to zero tokens
    now[0] = 100.0
    assert pace.take(50) == 0.0 and pace.take(1) > 0  # refilled to the burst, never beyond


async def test_a_decision_flood_is_left_unread_past_the_pace_until_stop_drains_it() -> None:
    handle = FakeHandle()
    seen = Recorder()
    proxy = EgressProxy(handle, "net-1", "172.30.0.2", seen)
    handle.emit(line({"type": "ready"}))
    await proxy.configure(NETWORK)
    chunk = line(GOOD) * DECISION_BURST
    handle.emit(chunk, chunk, chunk)
    await seen.until(2 * DECISION_BURST)
    await asyncio.sleep(0.2)
    # A burst, then a second chunk that puts the pump DECISION_BURST / DECISIONS_PER_S seconds in debt: the
    # third waits unread in the proxy's output (in Docker, the proxy blocks writing its next decision).
    assert DECISION_BURST / DECISIONS_PER_S > 1
    assert len(seen.decisions) == 2 * DECISION_BURST
    assert handle.stdout.qsize() == 1
    await _stop(proxy, handle)
    assert len(seen.decisions) == 3 * DECISION_BURST  # stopping drains at full speed: no decision is lost
