"""AgentChannel (host side of the host ⇄ agent link) against a scripted in-test byte link."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

import runner.channel as channel_module
from runner.channel import TOO_LARGE, AgentChannel, agent_env
from runner.errors import MessageTooLarge, ProtocolViolation, SandboxCrashed, ServerError, Status
from runner.framing import MAX_FRAME_VALUES, LineFramer
from runner.framing import line_cost as _line_cost
from runner.pace import Pace
from runner.sessions.models import ProgressEvent

CAP = 200
TIMEOUT = 2.0


def line(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame).encode() + b"\n"


class FakeLink:
    """stdout chunks come from a queue the test fills (b"" is EOF); stdin frames are recorded."""

    def __init__(self) -> None:
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.fail_writes = False

    async def read_stdout(self) -> bytes:
        return await self.chunks.get()

    async def write_stdin(self, data: bytes) -> None:
        if self.fail_writes:
            raise BrokenPipeError("pipe closed")
        assert data.endswith(b"\n") and data.count(b"\n") == 1
        self.sent.append(json.loads(data))

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.chunks.put_nowait(chunk)

    async def sent_frame(self, index: int) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while len(self.sent) <= index:
                await asyncio.sleep(0)
            return self.sent[index]

        return await asyncio.wait_for(wait(), TIMEOUT)


@pytest.fixture
async def link() -> FakeLink:
    return FakeLink()


@pytest.fixture
async def channel(link: FakeLink) -> AsyncIterator[AgentChannel]:
    ch = AgentChannel(link, max_message_bytes=CAP)
    ch.start()
    yield ch
    await ch.aclose()


async def ended(channel: AgentChannel) -> BaseException | None:
    await asyncio.wait_for(channel.closed.wait(), TIMEOUT)
    return channel.terminal_error


async def test_ready_frame_delivered(link: FakeLink, channel: AgentChannel) -> None:
    link.feed(line({"type": "ready", "initialize": {"protocolVersion": "2025-06-18"}}))
    assert await asyncio.wait_for(channel.ready(), TIMEOUT) == {"protocolVersion": "2025-06-18"}


async def test_frame_split_across_chunks(link: FakeLink, channel: AgentChannel) -> None:
    data = line({"type": "ready", "initialize": {"serverInfo": {"name": "split"}}})
    link.feed(data[:5], data[5:17], data[17:-1], data[-1:])
    assert await asyncio.wait_for(channel.ready(), TIMEOUT) == {"serverInfo": {"name": "split"}}


async def test_several_frames_in_one_chunk_each_reach_their_request(link: FakeLink, channel: AgentChannel) -> None:
    first = asyncio.create_task(channel.request("tools/list", {}))
    second = asyncio.create_task(channel.request("ping", {}))
    await link.sent_frame(1)
    ids = {frame["method"]: frame["id"] for frame in link.sent}
    link.feed(
        line({"type": "ready", "initialize": {}})
        + line({"type": "result", "id": ids["ping"], "result": {"pong": True}})
        + line({"type": "result", "id": ids["tools/list"], "result": {"tools": []}})
    )
    assert await asyncio.wait_for(first, TIMEOUT) == {"tools": []}
    assert await asyncio.wait_for(second, TIMEOUT) == {"pong": True}
    assert await asyncio.wait_for(channel.ready(), TIMEOUT) == {}


async def test_request_frame_shape_and_result_by_id(link: FakeLink, channel: AgentChannel) -> None:
    task = asyncio.create_task(channel.request("tools/call", {"name": "echo", "arguments": {"t": "é"}}))
    sent = await link.sent_frame(0)
    assert sent["type"] == "request" and sent["method"] == "tools/call"
    assert sent["params"] == {"name": "echo", "arguments": {"t": "é"}}
    link.feed(line({"type": "result", "id": sent["id"], "result": {"content": []}}))
    assert await asyncio.wait_for(task, TIMEOUT) == {"content": []}


async def test_a_result_comes_with_the_size_and_value_count_of_its_line(link: FakeLink, channel: AgentChannel) -> None:
    task = asyncio.create_task(channel.request_sized("tools/call", {"name": "echo"}))
    sent = await link.sent_frame(0)
    data = line({"type": "result", "id": sent["id"], "result": {"content": [{"type": "text", "text": "a, [b]"}]}})
    link.feed(data)
    reply = await asyncio.wait_for(task, TIMEOUT)
    assert reply.result == {"content": [{"type": "text", "text": "a, [b]"}]}
    assert reply.size == len(data) - 1  # the line without its newline
    # Separators and containers counted on the bytes, before parsing: the comma and bracket in the text too.
    assert reply.values == data.count(b",") + data.count(b"[") + data.count(b"{")


async def test_error_frame_becomes_server_error_with_code(link: FakeLink, channel: AgentChannel) -> None:
    task = asyncio.create_task(channel.request("tools/call", {"name": "x"}))
    request_id = (await link.sent_frame(0))["id"]
    link.feed(line({"type": "error", "id": request_id, "error": {"code": -32602, "message": "bad \x1b[1mparams"}}))
    with pytest.raises(ServerError) as caught:
        await asyncio.wait_for(task, TIMEOUT)
    assert caught.value.code == -32602
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert caught.value.message.startswith("MCP server error -32602: bad ")
    assert "\x1b" not in caught.value.message and caught.value.message.endswith("params")
    assert channel.terminal_error is None


async def test_progress_frames_reach_callback(link: FakeLink, channel: AgentChannel) -> None:
    events: list[ProgressEvent] = []

    async def on_progress(event: ProgressEvent) -> None:
        events.append(event)

    task = asyncio.create_task(channel.request("tools/call", {"name": "slow"}, on_progress=on_progress))
    request_id = (await link.sent_frame(0))["id"]
    link.feed(
        line({"type": "progress", "id": request_id, "progress": 1, "total": 4, "message": "one"})
        + line({"type": "progress", "id": request_id, "progress": 2.5, "total": None, "message": None})
        + line({"type": "result", "id": request_id, "result": {"done": 1}})
    )
    assert await asyncio.wait_for(task, TIMEOUT) == {"done": 1}
    assert events == [
        ProgressEvent(progress=1.0, total=4.0, message="one"),
        ProgressEvent(progress=2.5, total=None, message=None),
    ]


async def test_line_of_exactly_the_cap_is_accepted(link: FakeLink, channel: AgentChannel) -> None:
    body = json.dumps({"type": "ready", "initialize": {}}).encode()
    link.feed(body + b" " * (CAP - len(body)) + b"\n")
    assert await asyncio.wait_for(channel.ready(), TIMEOUT) == {}


@pytest.mark.parametrize("with_newline", [False, True], ids=["no-newline-yet", "with-newline"])
async def test_oversized_line_ends_channel_and_fails_pending(
    link: FakeLink, channel: AgentChannel, with_newline: bool
) -> None:
    task = asyncio.create_task(channel.request("ping", {}))
    await link.sent_frame(0)
    link.feed(b"x" * (CAP // 2), b"x" * (CAP // 2 + 1) + (b"\n" if with_newline else b""))
    with pytest.raises(MessageTooLarge, match=f"larger than the {CAP} byte cap") as caught:
        await asyncio.wait_for(task, TIMEOUT)
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert isinstance(await ended(channel), MessageTooLarge)
    with pytest.raises(MessageTooLarge, match="byte cap"):
        await asyncio.wait_for(channel.ready(), TIMEOUT)


async def test_a_line_of_too_many_values_is_refused_before_it_is_parsed(link: FakeLink) -> None:
    # 4 MiB of "[]," parses in ~0.3 s holding the GIL (in any thread): every session would stall that long.
    channel = AgentChannel(link, max_message_bytes=4 * 1024**2)
    channel.start()
    try:
        task = asyncio.create_task(channel.request("tools/call", {}))
        request_id = (await link.sent_frame(0))["id"]
        values = b"[" + b"[]," * 1_000_000 + b"[]]"
        link.feed(b'{"type":"result","id":%d,"result":{"rows":%s}}\n' % (request_id, values))
        with pytest.raises(MessageTooLarge, match=f"more than {MAX_FRAME_VALUES} JSON values") as caught:
            await asyncio.wait_for(task, TIMEOUT)
        assert caught.value.status is Status.RESOURCE_EXHAUSTED
        assert isinstance(await ended(channel), MessageTooLarge)
    finally:
        await channel.aclose()


async def test_separators_inside_strings_do_not_count_as_values(link: FakeLink) -> None:
    channel = AgentChannel(link, max_message_bytes=4 * 1024**2)
    channel.start()
    try:
        task = asyncio.create_task(channel.request("tools/call", {}))
        request_id = (await link.sent_frame(0))["id"]
        # 150 000 strings full of separators (some behind escaped quotes and backslashes): 1.5 M "," "[" "{" in all.
        rows = ['a,[{\\",b\\\\,{[c,d'] * 150_000
        link.feed(line({"type": "result", "id": request_id, "result": {"rows": rows}}))
        assert (await asyncio.wait_for(task, TIMEOUT))["rows"] == rows
    finally:
        await channel.aclose()


async def test_a_flood_of_frames_is_read_at_a_bounded_share_of_the_loop(
    link: FakeLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lines the channel parses and then coalesces or drops (progress, answers to abandoned requests) must not let
    # one sandbox keep the service's event loop to itself: past the burst the reader waits, the sandbox blocks.
    monkeypatch.setattr(channel_module, "PARSE_BURST_S", 0.01)
    monkeypatch.setattr(channel_module, "PARSE_SHARE", 0.01)
    channel = AgentChannel(link, max_message_bytes=CAP)
    channel.start()
    seen: list[ProgressEvent] = []

    async def on_progress(event: ProgressEvent) -> None:
        seen.append(event)

    task = asyncio.create_task(channel.request("tools/call", {}, on_progress=on_progress))
    try:
        request_id = (await link.sent_frame(0))["id"]
        frame = line({"type": "progress", "id": request_id, "progress": 1})
        link.feed(*[frame * 100] * 20)  # ~40 ms of parsing by the channel's reckoning: four times the burst
        await asyncio.sleep(0.5)
        assert 0 < len(seen) < 2000, "the reader should be waiting, at 1 % of the loop, after a 10 ms burst"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await channel.aclose()


def test_a_progress_line_is_reckoned_at_what_sanitizing_its_message_costs() -> None:
    # Measured: 18 µs for a bare progress line, 290 µs with a 4 KiB message (the sanitizer, on the loop).
    bare = line({"type": "progress", "id": 2**52, "progress": 1})
    wordy = line({"type": "progress", "id": 2**52, "progress": 1, "message": "p" * 4096})
    assert 15e-6 <= _line_cost(len(bare), 1) <= 50e-6
    assert _line_cost(len(wordy), 3) >= 250e-6


def test_the_pace_waits_in_proportion_to_the_work_past_the_burst() -> None:
    now = [100.0]
    pace = Pace(0.25, 1.0, clock=lambda: now[0])
    assert pace.take(0.75) == 0.0
    assert pace.take(0.5) == pytest.approx(1.0)  # 0.25 s over, refilled at 0.25 s a second
    now[0] += 1.0
    assert pace.take(0.0) == 0.0
    now[0] += 100.0
    assert pace.take(1.0) == 0.0 and pace.take(0.25) == pytest.approx(1.0)  # the burst is the most it saves up


class CountingBuffer(bytearray):
    """A framer buffer that counts the bytes its newline searches walk over: the framer's work."""

    scanned = 0

    def find(self, sub: Any, start: Any = 0, *rest: Any) -> int:
        found = super().find(sub, start, *rest)
        self.scanned += (len(self) if found < 0 else found + 1) - start
        return found


def test_framing_work_is_linear_in_the_bytes_read() -> None:
    # A 4 MiB line in 16-byte pieces: rescanning the buffer per piece walks ~5e11 bytes (seconds of loop CPU).
    size, piece = 4 * 1024**2, 16
    framer = LineFramer(size)
    framer._buffer = buffer = CountingBuffer()
    data = b"x" * (size - 1) + b"\n" + b"y" * 15 + b"\n"
    lines = [line for start in range(0, len(data), piece) for line in framer.feed(data[start : start + piece])]
    assert lines == [b"x" * (size - 1), b"y" * 15]
    assert buffer.scanned <= len(data)
    assert len(buffer) == 0


def test_framer_cuts_many_lines_of_one_chunk_and_keeps_the_tail() -> None:
    framer = LineFramer(10)
    assert framer.feed(b"a\n\nbc\nde") == [b"a", b"", b"bc"]
    assert framer.feed(b"f") == []
    assert framer.feed(b"g\nh") == [b"defg"]
    with pytest.raises(MessageTooLarge, match="larger than the 10 byte cap"):
        framer.feed(b"0123456789")  # "h" + 10 bytes, no newline yet: refused before it is kept


def test_framer_names_a_cap_in_mib() -> None:
    with pytest.raises(MessageTooLarge, match="larger than the 4 MiB cap"):
        LineFramer(4 * 1024**2).feed(b"x" * (4 * 1024**2 + 1))


async def test_fatal_frame_for_a_too_large_message_is_resource_exhausted(
    link: FakeLink, channel: AgentChannel
) -> None:
    task = asyncio.create_task(channel.request("tools/call", {"name": "huge"}))
    await link.sent_frame(0)
    message = "MCP server wrote a message larger than the 4 MiB cap"
    link.feed(line({"type": "fatal", "message": message, "reason": TOO_LARGE}))
    with pytest.raises(MessageTooLarge, match=f"^{message}$") as caught:
        await asyncio.wait_for(task, TIMEOUT)
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert await ended(channel) is caught.value


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"not json at all\n", "not JSON"),
        (b"\xff\xfe\n", "not JSON"),
        (b'{"type": "ready", "initialize": {"x": NaN}}\n', "not JSON"),
        (b'{"type": "ready", "initialize": {"x": -Infinity}}\n', "not JSON"),
        (b'{"type": "bogus"}\n', "unknown frame"),
        (b"[1, 2]\n", "unknown frame"),
        (b'{"type": "result", "id": 123, "result": {}}\n', "request 123, which is not pending"),
        (b'{"type": "result", "id": true, "result": {}}\n', "without an integer id"),
        (b'{"type": "ready", "initialize": []}\n', "'initialize' is not an object"),
        (b'{"type": "ready", "initialize": {}}\n' * 2, "announced itself twice"),
        (b'{"type": "progress", "id": 5, "progress": "half"}\n', "which is not pending"),
    ],
)
async def test_bad_frames_are_protocol_violations(
    link: FakeLink, channel: AgentChannel, data: bytes, expected: str
) -> None:
    link.feed(data)
    error = await ended(channel)
    assert isinstance(error, ProtocolViolation)
    assert expected in error.message


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_late_result_after_cancel_is_ignored(link: FakeLink, channel: AgentChannel, how: str) -> None:
    task = asyncio.create_task(
        asyncio.wait_for(channel.request("tools/call", {"name": "slow"}), 0.05 if how == "timeout" else 60)
    )
    request_id = (await link.sent_frame(0))["id"]
    if how == "cancel":
        task.cancel()
    with pytest.raises((asyncio.CancelledError, TimeoutError)):
        await asyncio.wait_for(task, TIMEOUT)
    link.feed(line({"type": "result", "id": request_id, "result": {"late": True}}))
    link.feed(line({"type": "ready", "initialize": {"after": 1}}))
    assert await asyncio.wait_for(channel.ready(), TIMEOUT) == {"after": 1}
    assert channel.terminal_error is None
    assert {"type": "cancel", "id": request_id} in link.sent


async def test_fatal_frame_is_sandbox_crashed_with_message(link: FakeLink, channel: AgentChannel) -> None:
    task = asyncio.create_task(channel.request("ping", {}))
    await link.sent_frame(0)
    link.feed(line({"type": "fatal", "message": "server exited with status 3"}))
    with pytest.raises(SandboxCrashed, match=r"^server exited with status 3$"):
        await asyncio.wait_for(task, TIMEOUT)
    with pytest.raises(SandboxCrashed, match="status 3"):
        await asyncio.wait_for(channel.ready(), TIMEOUT)


CONTROLS = "\x1b\x07\x00\u202e\r\x9b"


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        ("boom\x1b[2J\x07\x00\u202e\r\x9b2J done\ttab\nline", ["boom", " done\ttab\nline"]),
        ("\x1b\x00", ["the agent gave up without a reason"]),
        (42, ["the agent gave up without a reason"]),
    ],
)
async def test_fatal_message_is_stripped_of_control_characters(
    link: FakeLink, channel: AgentChannel, message: object, kept: list[str]
) -> None:
    link.feed(line({"type": "fatal", "message": message}))
    error = await ended(channel)
    assert isinstance(error, SandboxCrashed)
    assert not any(ch in error.message for ch in CONTROLS)
    assert all(text in error.message for text in kept)
    assert error.message.startswith(kept[0]) and error.message.endswith(kept[-1])


async def test_eof_is_sandbox_crashed_and_fails_pending(link: FakeLink, channel: AgentChannel) -> None:
    task = asyncio.create_task(channel.request("ping", {}))
    await link.sent_frame(0)
    link.feed(b'{"type": "res', b"")
    with pytest.raises(SandboxCrashed, match="the sandbox exited"):
        await asyncio.wait_for(task, TIMEOUT)
    assert channel.closed.is_set()


async def test_request_after_end_raises_terminal_error_at_once(link: FakeLink, channel: AgentChannel) -> None:
    link.feed(b"")
    terminal = await ended(channel)
    with pytest.raises(SandboxCrashed) as caught:
        await asyncio.wait_for(channel.request("ping", {}), TIMEOUT)
    assert caught.value is terminal
    assert link.sent == []


async def test_write_failure_ends_channel(link: FakeLink, channel: AgentChannel) -> None:
    link.fail_writes = True
    with pytest.raises(SandboxCrashed, match="stopped accepting input"):
        await asyncio.wait_for(channel.request("ping", {}), TIMEOUT)
    assert isinstance(await ended(channel), SandboxCrashed)


async def test_request_ids_distinct_and_in_range(link: FakeLink, channel: AgentChannel) -> None:
    tasks = [asyncio.create_task(channel.request("ping", {})) for _ in range(64)]
    await link.sent_frame(63)
    ids = [frame["id"] for frame in link.sent]
    assert len(set(ids)) == 64
    assert all(isinstance(i, int) and 1 <= i <= 2**53 for i in ids)
    link.feed(b"".join(line({"type": "result", "id": i, "result": {"n": i}}) for i in ids))
    results = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert results == [{"n": i} for i in ids]


def test_the_agent_reads_the_cap_the_host_hands_it() -> None:
    from runner.agent import frames

    assert agent_env(5000) == {frames.MAX_MESSAGE_ENV: "5000"}
    assert frames.TOO_LARGE == TOO_LARGE
