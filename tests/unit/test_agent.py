"""The in-container agent, end to end: real agent process, real (scripted) MCP server, pipes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from runner.agent.frames import (
    MAX_MESSAGE_ENV,
    TOO_LARGE,
    CancelFrame,
    FrameWriter,
    HostLines,
    RequestFrame,
    parse_host_frame,
)
from runner.agent.lines import BoundedLines
from runner.agent.words import describe_exception, whole_words
from tests.servers.scripted_server import BEHAVIOURS
from tests.unit.agent_driver import PYTHON, ROOT, AgentProcess

Start = Callable[..., Awaitable[AgentProcess]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    agents: list[AgentProcess] = []

    async def _start(behaviour: str = "good", **kwargs: object) -> AgentProcess:
        agent = await AgentProcess.start(behaviour, **kwargs)  # type: ignore[arg-type]
        agents.append(agent)
        return agent

    yield _start
    for agent in agents:
        await agent.aclose()


async def ready_agent(start: Start, behaviour: str = "good", **kwargs: object) -> AgentProcess:
    agent = await start(behaviour, **kwargs)
    await agent.ready()
    return agent


# -- the happy path -----------------------------------------------------------------


async def test_ready_frame_carries_initialize_result(start: Start) -> None:
    agent = await start()
    ready = await agent.ready()
    init = ready["initialize"]
    assert init["protocolVersion"] == "2025-11-25"
    assert init["serverInfo"] == {"name": "scripted-good", "version": "1.0.0"}
    assert set(init["capabilities"]) >= {"tools", "resources", "prompts"}


async def test_tools_list_uses_wire_names(start: Start) -> None:
    agent = await ready_agent(start)
    await agent.request(1, "tools/list", {})
    frame = await agent.recv_for(1)
    assert frame["type"] == "result"
    tools = {t["name"]: t for t in frame["result"]["tools"]}
    assert set(tools) == {"echo", "add", "slow", "whoami", "inspect_sandbox"}
    assert tools["echo"]["inputSchema"]["required"] == ["text"]
    assert tools["add"]["outputSchema"]["properties"]["sum"] == {"type": "integer"}


async def test_tools_call_returns_the_servers_result_as_sent(start: Start) -> None:
    agent = await ready_agent(start)
    await agent.request(7, "tools/call", {"name": "echo", "arguments": {"text": "hi"}})
    frame = await agent.recv_for(7)
    # The server's own object, nothing added or dropped (the host parses and validates it).
    assert frame == {
        "type": "result",
        "id": 7,
        "result": {"content": [{"type": "text", "text": "hi"}], "structuredContent": {"text": "hi"}, "isError": False},
    }


async def test_progress_frames_precede_the_result(start: Start) -> None:
    agent = await ready_agent(start)
    await agent.request(3, "tools/call", {"name": "slow", "arguments": {"steps": 3, "delay_ms": 20}})
    frames = []
    while True:
        frame = await agent.recv()
        frames.append(frame)
        if frame["type"] != "progress":
            break
    progress = [f for f in frames if f["type"] == "progress"]
    assert [p["progress"] for p in progress] == [1.0, 2.0, 3.0]
    assert all(p["id"] == 3 and p["total"] == 3.0 for p in progress)
    assert progress[0]["message"] == "step 1/3"
    assert frames[-1]["type"] == "result" and frames[-1]["id"] == 3
    assert frames[-1]["result"]["content"][0]["text"] == "done 3 steps"


async def answered_before(agent: AgentProcess, rid: int, pending: int) -> dict[str, Any]:
    """The answer to ``rid``, asserting none came for ``pending`` first (the timeout only guards a hang)."""
    while True:
        frame = await agent.recv(timeout=60)
        assert not (frame.get("id") == pending and frame["type"] in ("result", "error")), frame
        if frame.get("id") == rid and frame["type"] in ("result", "error"):
            return frame


async def test_requests_run_concurrently(start: Start) -> None:
    agent = await ready_agent(start)
    # 50 steps of 2 s: the slow call is still running when the others are answered, however loaded the machine.
    await agent.request(1, "tools/call", {"name": "slow", "arguments": {"steps": 50, "delay_ms": 2000}})
    assert (await agent.recv(timeout=60))["type"] == "progress"  # the slow call is running
    # Fails if requests were served one at a time: request 1's result would come before these answers.
    await agent.request(2, "ping")
    assert await answered_before(agent, 2, pending=1) == {"type": "result", "id": 2, "result": {}}
    await agent.request(3, "tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}})
    assert (await answered_before(agent, 3, pending=1))["result"]["structuredContent"] == {"sum": 5}


async def test_cancel_stops_frames_for_that_request(start: Start) -> None:
    agent = await ready_agent(start)
    await agent.request(1, "tools/call", {"name": "slow", "arguments": {"steps": 50, "delay_ms": 50}})
    assert (await agent.recv())["type"] == "progress"
    await agent.send({"type": "cancel", "id": 1})
    await agent.request(2, "ping")
    await agent.recv_for(2)
    # Nothing more for id 1: no result, no progress.
    with pytest.raises(TimeoutError):
        while True:
            frame = await agent.recv(timeout=0.5)
            assert frame.get("id") != 1, frame


async def test_resources_and_prompts(start: Start) -> None:
    agent = await ready_agent(start)
    await agent.request(1, "resources/list")
    await agent.request(2, "resources/read", {"uri": "mem://greeting"})
    await agent.request(3, "prompts/list", {})
    await agent.request(4, "prompts/get", {"name": "greet", "arguments": {"name": "Ada"}})
    replies = {}
    for _ in range(4):
        frame = await agent.recv()
        replies[frame["id"]] = frame
    assert replies[1]["result"]["resources"][0]["uri"] == "mem://greeting"
    assert replies[2]["result"]["contents"] == [{"uri": "mem://greeting", "mimeType": "text/plain", "text": "hello"}]
    assert replies[3]["result"]["prompts"][0]["name"] == "greet"
    messages = replies[4]["result"]["messages"]
    assert messages == [{"role": "user", "content": {"type": "text", "text": "Hello, Ada!"}}]


async def test_server_error_becomes_error_frame(start: Start) -> None:
    agent = await ready_agent(start)
    await agent.request(5, "tools/call", {"name": "nope", "arguments": {}})
    frame = await agent.recv_for(5)
    assert frame == {"type": "error", "id": 5, "error": {"code": -32602, "message": "Unknown tool: nope"}}
    await agent.request(6, "resources/read", {"uri": "mem://missing"})
    assert (await agent.recv_for(6))["error"]["code"] == -32002


async def test_agent_side_errors_use_internal_error(start: Start) -> None:
    agent = await ready_agent(start)
    await agent.request(1, "sampling/createMessage", {})
    await agent.request(2, "tools/call", {"arguments": {}})  # no tool name
    await agent.request(3, "completion/complete", {"ref": {"type": "ref/prompt", "name": "p"}})  # no argument
    await agent.request(4, "resources/subscribe", {"uri": 7})
    for rid in (1, 2, 3, 4):
        frame = await agent.recv_for(rid)
        assert frame["type"] == "error" and frame["error"]["code"] == -32603, frame
    assert frame["error"]["message"] == "invalid params for resources/subscribe: 'uri' must be a string"


async def test_invalid_host_frames_are_ignored(start: Start) -> None:
    agent = await ready_agent(start)
    await agent.send(b"this is not json\n")
    await agent.send({"type": "bogus", "id": 1})
    await agent.send({"type": "request", "id": -4, "method": "ping"})
    await agent.send(b"\n")
    await agent.request(9, "ping")
    assert await agent.recv_for(9) == {"type": "result", "id": 9, "result": {}}
    assert "not JSON" in agent.stderr_text
    assert "unknown type 'bogus'" in agent.stderr_text


async def test_tool_output_is_not_validated_by_the_agent(start: Start) -> None:
    agent = await ready_agent(start, "bad_output")
    await agent.request(1, "tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
    frame = await agent.recv_for(1)
    assert frame["result"]["structuredContent"] == {"sum": "not a number"}


async def test_missing_structured_content_is_passed_through(start: Start) -> None:
    agent = await ready_agent(start, "missing_structured")
    await agent.request(1, "tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
    result = (await agent.recv_for(1))["result"]
    assert "structuredContent" not in result and result["content"][0]["text"] == "3"


async def test_server_gets_the_full_environment(start: Start) -> None:
    agent = await ready_agent(start, env={"SESSION_MARK": "mark-42"})
    await agent.request(1, "tools/call", {"name": "whoami", "arguments": {}})
    assert (await agent.recv_for(1))["result"]["content"][0]["text"] == "mark-42"


async def test_hanging_call_can_be_cancelled_while_pings_work(start: Start) -> None:
    agent = await ready_agent(start, "hang")
    await agent.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
    await agent.request(2, "ping")
    await agent.recv_for(2)
    await agent.send({"type": "cancel", "id": 1})
    await agent.request(3, "tools/call", {"name": "add", "arguments": {"a": 1, "b": 1}})
    assert (await agent.recv_for(3))["result"]["structuredContent"] == {"sum": 2}


async def test_result_under_a_raised_cap_is_relayed_whole(start: Start) -> None:
    agent = await ready_agent(start, "oversized", env={MAX_MESSAGE_ENV: str(16 * 1024 * 1024)})
    await agent.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
    frame = await agent.recv_for(1, timeout=30)
    assert len(frame["result"]["content"][0]["text"]) == 8 * 1024 * 1024


# -- shutting down ----------------------------------------------------------------------


async def test_stdin_eof_exits_zero(start: Start) -> None:
    agent = await ready_agent(start)
    await agent.request(1, "ping")
    await agent.recv_for(1)
    await agent.close_stdin()
    assert await agent.wait() == 0
    assert "fatal" not in agent.stderr_text


async def test_stdin_eof_during_a_slow_call_exits_zero(start: Start) -> None:
    agent = await ready_agent(start)
    await agent.request(1, "tools/call", {"name": "slow", "arguments": {"steps": 50, "delay_ms": 100}})
    await agent.recv()
    await agent.close_stdin()
    assert await agent.wait(timeout=10) == 0


async def test_sigterm_shuts_down_cleanly(start: Start) -> None:
    agent = await ready_agent(start)
    agent.proc.send_signal(signal.SIGTERM)
    assert await agent.wait() == 0


# -- fatal paths ------------------------------------------------------------------------


async def expect_fatal_frame(agent: AgentProcess, timeout: float = 20.0) -> dict[str, object]:
    frame = await agent.recv(timeout)
    while frame["type"] != "fatal":
        assert frame["type"] in ("ready", "progress"), frame
        frame = await agent.recv(timeout)
    assert await agent.wait() == 1
    assert agent.proc.stdout is not None
    assert await agent.proc.stdout.read() == b"", "nothing may follow the fatal frame"
    assert isinstance(frame["message"], str)
    return frame


async def expect_fatal(agent: AgentProcess, timeout: float = 20.0) -> str:
    frame = await expect_fatal_frame(agent, timeout)
    assert "reason" not in frame, frame
    return str(frame["message"])


# -- line caps: a server's output ends the session at the cap, at once ------------------------


@pytest.mark.parametrize(
    ("behaviour", "env", "cap"),
    [
        ("huge_line", {}, "4 MiB"),  # 1 GiB without a newline: it used to take the agent's CPU till the deadline
        ("huge_answer", {}, "4 MiB"),  # 64 MiB in one answer
        ("oversized", {MAX_MESSAGE_ENV: "1000000"}, "1000000 byte"),  # the host's cap, handed down in the env
    ],
)
async def test_server_line_past_the_cap_is_fatal_at_once(
    start: Start, behaviour: str, env: dict[str, str], cap: str
) -> None:
    agent = await ready_agent(start, behaviour, env=env)
    await agent.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
    frame = await expect_fatal_frame(agent, timeout=10)
    assert frame == {
        "type": "fatal",
        "message": f"MCP server wrote a message larger than the {cap} cap",
        "reason": TOO_LARGE,
    }


async def test_a_line_within_the_cap_whose_frame_is_not_is_fatal(start: Start) -> None:
    # The server's line (999 bytes, under the agent's id 2) fits the 1000 byte cap; the result frame carrying it,
    # under the host's id of 16 digits, does not (1014 bytes).
    agent = await ready_agent(start, env={MAX_MESSAGE_ENV: "1000"})
    await agent.request(1, "tools/call", {"name": "echo", "arguments": {"text": "y" * 10}})
    assert (await agent.recv_for(1))["result"]["structuredContent"] == {"text": "y" * 10}
    await agent.request(2**53 - 1, "tools/call", {"name": "echo", "arguments": {"text": "y" * 439}})
    frame = await expect_fatal_frame(agent, timeout=10)
    assert frame["reason"] == TOO_LARGE
    assert "larger than the 1000 byte cap once framed" in str(frame["message"])


def test_frame_writer_refuses_a_frame_past_its_cap() -> None:
    import os

    read_fd, write_fd = os.pipe()
    heard: list[str] = []
    writer = FrameWriter(write_fd, max_bytes=40, on_too_large=lambda: heard.append("too large"))
    try:
        assert writer.send({"type": "x", "pad": "p" * 10})
        assert not writer.send({"type": "x", "pad": "p" * 20})
        assert heard == ["too large"]
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            assert pipe.read() == b'{"type":"x","pad":"pppppppppp"}\n'
    finally:
        with contextlib.suppress(OSError):
            os.close(write_fd)


def feed_in_pieces(lines: BoundedLines, data: bytes, piece: int) -> list[bytes] | None:
    out: list[bytes] = []
    for at in range(0, len(data), piece):
        got = lines.feed(data[at : at + piece])
        if got is None:
            return None
        out += got
    return out


def test_bounded_lines_hand_on_whole_lines_only() -> None:
    lines = BoundedLines(50)
    assert feed_in_pieces(lines, b"a\nbb\n" + b"c" * 50 + b"\nlast", 16) == [b"a", b"bb", b"c" * 50]
    assert lines.feed(b" words\n") == [b"last words"] and not lines.over


@pytest.mark.parametrize("data", [b"ok\n" + b"x" * 51 + b"\nmore\n", b"ok\n" + b"x" * 51, b"x" * 100 + b"\n"])
@pytest.mark.parametrize("piece", [1, 16, 1000])
def test_bounded_lines_end_at_the_first_line_past_the_cap(data: bytes, piece: int) -> None:
    lines = BoundedLines(50)
    assert feed_in_pieces(lines, data, piece) is None
    assert lines.over and lines.feed(b"fine\n") is None  # and it stays ended


@pytest.mark.parametrize("piece", [1, 4, 100])
def test_a_host_line_past_its_cap_is_dropped_and_the_next_kept(piece: int) -> None:
    lines = HostLines(10)
    data = b"ping\n" + b"x" * 25 + b"\nnext\n" + b"y" * 10 + b"\n"
    got = [line for at in range(0, len(data), piece) for line in lines.feed(data[at : at + piece])]
    assert got == [b"ping", b"next", b"y" * 10]


class SearchCountingBuffer(bytearray):
    """A line buffer that counts the bytes its newline searches cover."""

    searched = 0

    def find(self, sub: Any, start: Any = 0, *rest: Any) -> int:
        self.searched += len(self) - start
        return super().find(sub, start, *rest)


def test_bounded_lines_reads_a_long_line_in_linear_time() -> None:
    # 256 KiB in 16-byte pieces: each byte is searched once and the buffer grows in place (the SDK's join was
    # quadratic). Fails if it came back: a search from the line's start covers ~size²/32 bytes, a copying join
    # replaces the buffer.
    size = 256 * 1024
    lines = BoundedLines(size)
    buffer = lines._buffer = SearchCountingBuffer()
    assert feed_in_pieces(lines, b"z" * size + b"\n", 16) == [b"z" * size]
    assert lines._buffer is buffer
    assert size < buffer.searched <= 2 * size


async def test_crash_at_start(start: Start) -> None:
    agent = await start("crash_at_start")
    message = await expect_fatal(agent)
    assert message.startswith("MCP server exited with status 3 before completing initialize"), message
    assert "cannot load config" in agent.stderr_text


async def test_crash_on_call(start: Start) -> None:
    agent = await ready_agent(start, "crash_on_call")
    await agent.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
    message = await expect_fatal(agent)
    assert message.startswith("MCP server exited with status 7"), message
    assert "boom: segfault simulated" in agent.stderr_text


async def test_malformed_output_is_a_protocol_violation(start: Start) -> None:
    agent = await ready_agent(start, "malformed")
    await agent.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
    message = await expect_fatal(agent)
    assert message.startswith("MCP server broke the protocol: it wrote a line to stdout that is not"), message


async def test_stdout_flood_is_a_protocol_violation(start: Start) -> None:
    agent = await ready_agent(start, "stdout_flood")
    await agent.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
    assert (await expect_fatal(agent)).startswith("MCP server broke the protocol")


async def test_requests_to_the_client_past_the_bound_are_a_protocol_violation(start: Start) -> None:
    # Relayed to the host, 64 may wait for answers; more (this server sends 200 000 without reading any answer)
    # would pile up in the agent and on the host.
    agent = await ready_agent(start, "request_flood")
    await agent.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
    relayed = []
    frame = await agent.recv(10)
    while frame["type"] == "server_request":
        relayed.append(frame)
        frame = await agent.recv(10)
    assert [f["id"] for f in relayed] == list(range(1, 65))
    assert {(f["method"], f["related"]) for f in relayed} == {("roots/list", 1)}
    assert frame["type"] == "fatal"
    assert (
        frame["message"] == "MCP server broke the protocol: it sent more than 64 requests without reading the answers"
    )
    assert await agent.wait() == 1


async def test_wrong_id_is_a_protocol_violation(start: Start) -> None:
    # The SDK itself would only debug-log and drop the answer (the call would hang);
    # the agent's link checks ids and treats an answer to an unsent id as fatal.
    agent = await ready_agent(start, "wrong_id")
    await agent.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
    message = await expect_fatal(agent)
    assert message.startswith("MCP server broke the protocol: it answered request id"), message
    assert "never sent" in message


async def test_exit_is_seen_where_no_pidfd_is_to_be_had(start: Start) -> None:
    # An old kernel, or a seccomp profile without pidfd_open: the agent polls for the server's exit instead.
    agent = await ready_agent(start, "crash_on_call", before="import os; del os.pidfd_open")
    await agent.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
    assert (await expect_fatal(agent)).startswith("MCP server exited with status 7")


async def test_a_server_killed_by_a_signal_is_named(start: Start) -> None:
    agent = await start(command=[PYTHON, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
    assert await expect_fatal(agent) == "MCP server was killed by SIGSEGV before completing initialize"


async def test_a_server_that_closes_its_stdout_but_lives_on(start: Start) -> None:
    agent = await start(command=[PYTHON, "-c", "import os, time; os.close(1); time.sleep(60)"])
    assert await expect_fatal(agent) == (
        "MCP server closed its stdout before completing initialize (the process is still running)"
    )


# Answers initialize, then closes its stdin and lives on: the agent's next write to it fails (EPIPE).
DEAF_SERVER = """
import json, os, sys, time
init = json.loads(sys.stdin.readline())
info = {"name": "deaf", "version": "1"}
result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": info}
sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": init["id"], "result": result}) + "\\n")
sys.stdout.flush()
sys.stdin.readline()  # notifications/initialized
os.close(0)
time.sleep(60)
"""


async def test_a_server_that_closes_its_stdin_but_lives_on(start: Start) -> None:
    """The agent dropped what it could not write and said nothing: each call waited for its caller's deadline."""
    agent = await ready_agent(start, command=[PYTHON, "-c", DEAF_SERVER])
    await agent.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x" * 100_000}})
    assert await expect_fatal(agent) == "MCP server closed its stdin (the process is still running)"


STOPS_READING_SERVER = DEAF_SERVER.replace("os.close(0)\n", "")


async def test_a_server_that_stops_reading_its_stdin_is_reported_not_buffered_for_ever(start: Start) -> None:
    """What the host sent piled up in the agent until the sandbox's memory cap killed it, with no word of why."""
    agent = await ready_agent(start, command=[PYTHON, "-c", STOPS_READING_SERVER], env={MAX_MESSAGE_ENV: "100000"})
    for rid in range(1, 40):  # 39 calls of ~90 kB: past the pipe's buffer and the agent's four messages' worth
        try:
            await agent.request(rid, "tools/call", {"name": "echo", "arguments": {"text": "x" * 90_000}})
        except (BrokenPipeError, ConnectionResetError):
            break  # it gave up already, and exited
    message = await expect_fatal(agent)
    assert message.startswith("MCP server stopped reading its stdin (") and "bytes waiting for it)" in message


def test_host_frames_from_a_regular_file(tmp_path: Path) -> None:
    """A regular file cannot be watched for reading (epoll refuses it): it is read as it comes, to its end."""
    import json
    import subprocess

    from tests.unit.agent_driver import server_command

    frames = tmp_path / "frames"
    frames.write_text(json.dumps({"type": "request", "id": 4, "method": "ping"}) + "\n")
    with frames.open("rb") as stdin:
        done = subprocess.run(
            [PYTHON, "-m", "runner.agent", "--", *server_command()],
            stdin=stdin,
            capture_output=True,
            cwd=ROOT,
            timeout=30,
        )
    replies = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["type"] for r in replies] == ["ready", "result"] and replies[1]["id"] == 4, done.stderr
    assert done.returncode == 0


async def test_command_not_found(start: Start) -> None:
    agent = await start(command=["/nonexistent/mcp-server", "--flag"])
    message = await expect_fatal(agent)
    assert message == "cannot start MCP server /nonexistent/mcp-server --flag: No such file or directory"


async def test_initialize_timeout(start: Start) -> None:
    # The server never answers and never exits: only the agent's initialize timer can end this, and the message
    # names the timeout it ran with. Fails if the setting were ignored (it would say the default 30 s) or the timer
    # never fired (expect_fatal's 60 s guard, well before the server's hour).
    agent = await start(command=[PYTHON, "-c", "import time; time.sleep(3600)"], env={"MCP_AGENT_INIT_TIMEOUT": "0.5"})
    message = await expect_fatal(agent, timeout=60)
    assert message == "MCP server did not complete initialize within 0.5 s"


async def test_hard_hang_is_killed_at_shutdown(start: Start) -> None:
    agent = await ready_agent(start, "hang_hard")
    await agent.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
    await asyncio.sleep(0.2)
    await agent.close_stdin()
    assert await agent.wait(timeout=15) == 0


# -- frame parsing (in-process, stdlib only) ------------------------------------------------


def test_parse_host_frame() -> None:
    assert parse_host_frame(b'{"type":"request","id":3,"method":"ping"}') == RequestFrame(3, "ping", {})
    assert parse_host_frame(b'{"type":"cancel","id":3}') == CancelFrame(3)
    for bad in (b"[]", b"{", b'{"type":"cancel","id":true}', b'{"type":"request","id":1,"params":{}}'):
        assert isinstance(parse_host_frame(bad), str)
    assert isinstance(parse_host_frame(b'{"type":"request","id":1,"method":"ping","params":[]}'), str)


# -- the scripted server itself, under the system python3 it meets in the sandbox -------------


@pytest.mark.parametrize("behaviour", [b for b in BEHAVIOURS if b != "crash_at_start"])
async def test_scripted_server_handshake(behaviour: str) -> None:
    import json
    import shutil

    from tests.unit.agent_driver import SCRIPTED_SERVER

    python3 = shutil.which("python3", path="/usr/bin") or PYTHON
    proc = await asyncio.create_subprocess_exec(
        python3,
        str(SCRIPTED_SERVER),
        behaviour,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "1999-01-01"}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "ping"},
    ]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in requests)
    out, _ = await asyncio.wait_for(proc.communicate(data), 10)
    replies = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in replies] == [1, 2, 3]
    assert replies[0]["result"]["protocolVersion"] == "2025-06-18"
    # Every behaviour offers the good server's tools; some (net_probe, leaky, ...) add their own.
    assert {"echo", "add", "slow", "whoami", "inspect_sandbox"} <= {t["name"] for t in replies[1]["result"]["tools"]}
    assert proc.returncode == 0


@pytest.mark.parametrize("pad", [0, 30, 60, 75])
def test_what_the_agent_quotes_of_the_server_is_cut_in_whole_words(pad: int) -> None:
    """A reused request id or an exception's message goes to the host's sanitizer: a cut at a fixed length kept
    ``ghp_`` and part of a token, which it no longer recognizes in the exit record."""
    body = "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    request_id = "x " * (pad // 2) + "ghp_" + body
    shown = whole_words(repr(request_id), 80)
    assert body in shown or "ghp_" not in shown, shown
    message = describe_exception(ValueError("y " * (pad + 70) + "ghp_" + body))
    assert body in message or "ghp_" not in message, message
    assert whole_words("short", 80) == "short"


def test_the_stdio_agent_loads_the_standard_library_only(tmp_path: Path) -> None:
    """Importing the SDK (and pydantic, anyio) cost each session ~0.5 CPU-s and ~60 MiB before its server answered;
    asyncio (which loads ssl), typing and dataclasses cost it 8 MiB more, half the agent's memory."""
    import subprocess

    # As in the image: the agent package under an empty ``runner`` package (the host's pulls in the service).
    (tmp_path / "runner").mkdir()
    (tmp_path / "runner" / "__init__.py").write_text("")
    (tmp_path / "runner" / "agent").symlink_to(ROOT / "runner" / "agent")
    probe = (
        "import sys, runner.agent.app, runner.agent.stdio;"
        "heavy = {'mcp', 'mcp_types', 'anyio', 'pydantic', 'httpx2', 'asyncio', 'ssl', 'typing', 'dataclasses'};"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))"
    )
    done = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert done.stdout == "[]\n"
