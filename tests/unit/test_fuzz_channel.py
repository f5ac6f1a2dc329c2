"""Property-based fuzzing of the host side of the agent link (runner/channel.py): whatever a sandbox writes,
the channel fails only with RunnerError subclasses (ProtocolViolation, SandboxCrashed, MessageTooLarge, …),
never with anything else, and never logs a traceback (the sign of a bug it merely caught)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import channel
from runner.channel import AgentChannel, LineFramer
from runner.errors import RunnerError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MAX = 512
PENDING = "<the pending request's id>"
INIT = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "x", "version": "1"}}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None), max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=12,
)
frames = st.fixed_dictionaries(
    {"type": st.sampled_from(["ready", "result", "error", "progress", "fatal", "request"]) | json_values},
    optional={
        "id": st.just(PENDING) | json_values,
        "result": json_values | st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        "error": json_values | st.fixed_dictionaries({}, optional={"code": json_values, "message": json_values}),
        "progress": json_values,
        "total": json_values,
        "message": json_values,
        "reason": st.sampled_from(["message_too_large"]) | json_values,
        "initialize": json_values,
    },
)


def _deep(depth: int) -> bytes:
    return b'{"type":"result","id":1,"result":' + b"[" * depth + b"]" * depth + b"}"


lines = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda frame: json.dumps(frame).encode(), frames),  # NaN, Infinity and \udXXX escapes included
    st.sampled_from([b'{"type":"result","id":1,"result":{"x":1e999}}', b'{"type": []}', b'{"type": {}}',
                     b'{"type":"progress","id":1,"progress":NaN}', b"\xff\xfe", b'"\\ud800"', b"[" * 100_000]),
    st.builds(_deep, st.integers(0, 5000)),
)


class Errors(logging.Handler):
    """Collects what runner.channel logs at ERROR or above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged() -> Iterator[Errors]:
    handler = Errors()
    logger = logging.getLogger(channel.__name__)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@FUZZ
@given(line=lines)
def test_a_line_decodes_to_a_frame_or_a_runner_error(line: bytes) -> None:
    """The function the channel parses every line with."""
    try:
        frame = channel._decode(line)
    except RunnerError:
        return
    assert isinstance(frame, dict)


@FUZZ
@given(chunks=st.lists(st.binary(max_size=300) | st.sampled_from([b"\n", b"x" * (MAX + 1), b"a\nb\n"]), max_size=20))
def test_framing_cuts_lines_or_refuses_them(chunks: list[bytes]) -> None:
    framer = LineFramer(MAX)
    got: list[bytes] = []
    fed = b""
    try:
        for chunk in chunks:
            fed += chunk
            got.extend(framer.feed(chunk))
    except RunnerError:
        return
    assert all(len(line) <= MAX for line in got)
    assert fed.startswith(b"".join(line + b"\n" for line in got))


class ScriptedLink:
    """A sandbox that announces itself, waits for one request, then writes ``chunks`` (the pending request's id
    substituted for PENDING) and exits."""

    def __init__(self, ready: bytes, chunks: list[bytes]) -> None:
        self._ready: bytes | None = ready
        self._chunks = chunks
        self._request_id: int | None = None
        self._asked = asyncio.Event()

    async def read_stdout(self) -> bytes:
        if self._ready is not None:
            ready, self._ready = self._ready, None
            return ready
        await self._asked.wait()
        if not self._chunks:
            return b""
        return self._chunks.pop(0).replace(json.dumps(PENDING).encode(), str(self._request_id).encode())

    async def write_stdin(self, data: bytes) -> None:
        frame = json.loads(data)
        if frame["type"] == "request" and self._request_id is None:
            self._request_id = frame["id"]
            self._asked.set()


async def _drive(link: ScriptedLink) -> None:
    agent = AgentChannel(link, max_message_bytes=MAX)
    agent.start()
    progress: list[Any] = []

    async def on_progress(event: Any) -> None:
        progress.append(event)

    try:
        await asyncio.wait_for(agent.ready(), 5)
        result = await asyncio.wait_for(agent.request("tools/call", {}, on_progress=on_progress), 5)
        assert isinstance(result, dict)
    except RunnerError:
        pass
    await asyncio.wait_for(agent.closed.wait(), 5)  # the stream ends: the channel must notice
    assert isinstance(agent.terminal_error, RunnerError)
    await agent.aclose()


@FUZZ
@given(
    ready=st.just(json.dumps({"type": "ready", "initialize": INIT}).encode() + b"\n") | lines.map(lambda b: b + b"\n"),
    chunks=st.lists(st.one_of(lines.map(lambda b: b + b"\n"), st.binary(max_size=100)), max_size=6),
)
def test_whatever_a_sandbox_writes_ends_in_a_runner_error_and_no_traceback(
    ready: bytes, chunks: list[bytes], logged: Errors
) -> None:
    logged.records.clear()
    asyncio.run(_drive(ScriptedLink(ready, chunks)))
    assert not logged.records, [r.getMessage() for r in logged.records]
