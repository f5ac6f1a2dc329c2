"""The stdio bridge (``mcp-runner mcp``) against a stand-in door: the SDK's low-level Server behind its own Streamable
HTTP app on a loopback port, with a recorder in front that keeps each HTTP request's method and MCP headers.

The relay is driven in-process through memory streams (what the host writes, what the bridge writes back); the
command itself, as a host launches it, is driven by the SDK's stdio client and by raw pipes (SIGTERM, no door).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
import uvicorn
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import StdioServerParameters
from mcp.server.lowlevel import Server
from mcp.shared.message import ServerMessageMetadata
from starlette.types import Receive, Scope, Send

from runner.cli import main
from runner.door import host_configs, stdio_bridge
from runner.door.host_configs import endpoint
from runner.door.stdio_bridge import Door, DoorUnavailable, Oversized, relay

TOKEN = "mcpr_stand-in-token"


# ---------------------------------------------------------------- the stand-in door


async def _list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    schema = {"type": "object", "properties": {"text": {"type": "string"}}}
    names = ("echo", "ask_roots", "announce", "big", "sleep")
    return types.ListToolsResult(tools=[types.Tool(name=name, input_schema=schema) for name in names])


async def _call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    arguments = params.arguments or {}
    if params.name == "ask_roots":  # a server→client request on this call's own stream
        roots = await ctx.session.send_request(
            types.ListRootsRequest(), types.ListRootsResult,
            metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
        )
        text = " ".join(str(root.uri) for root in roots.roots)
    elif params.name == "announce":  # notifications on the session's GET stream
        # A few times: the server drops what it sends before the GET stream is registered (the test waits for
        # the GET request to arrive, not for its registration).
        for _ in range(3):
            await ctx.session.send_tool_list_changed()
            await anyio.sleep(0.1)
        text = "announced"
    elif params.name == "sleep":
        await anyio.sleep(float(arguments.get("seconds", 0)))
        text = "slept"
    elif params.name == "big":
        text = "x" * int(arguments.get("size", 0))
    else:
        text = str(arguments.get("text", ""))
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


@dataclass
class StandIn:
    base: str  # the door's URL: endpoints are base/<profile>
    requests: list[dict[str, str]] = field(default_factory=list)

    def seen(self, method: str) -> list[dict[str, str]]:
        return [r for r in self.requests if r["method"] == method]


def _recorder(app: Any, requests: list[dict[str, str]]) -> Any:
    async def recorded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            requests.append({"method": scope["method"], "path": scope["path"], **headers})
            if scope["path"].startswith("/locked/"):  # a door (or proxy) refusing in plain text
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"Unauthorized"})
                return
            scope = {**scope, "path": "/mcp", "raw_path": b"/mcp"}  # every profile is the same stand-in
        await app(scope, receive, send)

    return recorded


@pytest.fixture(scope="module")
def stand_in() -> Iterator[StandIn]:
    server: Server[Any] = Server("stand-in", version="1.0", on_list_tools=_list_tools, on_call_tool=_call_tool)
    requests: list[dict[str, str]] = []
    app = _recorder(server.streamable_http_app(), requests)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.02)
    yield StandIn(f"http://127.0.0.1:{port}/mcp", requests)
    uv.should_exit = True
    thread.join(timeout=10)
    sock.close()


# ---------------------------------------------------------------- driving the relay in-process


def _request(request_id: int, method: str, params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode() + b"\n"


INITIALIZE = _request(1, "initialize", {
    "protocolVersion": "2025-11-25", "capabilities": {"roots": {"listChanged": True}},
    "clientInfo": {"name": "test-host", "version": "1"},
})
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'


class Host:
    """The host's side of the relay: lines it sends, messages the bridge wrote back."""

    def __init__(self) -> None:
        self._send, self._lines = anyio.create_memory_object_stream[bytes | Oversized](16)
        self._written, self._out = anyio.create_memory_object_stream[dict[str, Any]](64)
        self.raw: list[bytes] = []

    async def lines(self) -> AsyncIterator[bytes | Oversized]:
        async with self._lines:
            async for line in self._lines:
                yield line

    async def write(self, data: bytes) -> None:
        assert data.endswith(b"\n") and data.count(b"\n") == 1  # one message, one line
        self.raw.append(data)
        await self._written.send(json.loads(data))

    async def say(self, line: bytes | Oversized) -> None:
        await self._send.send(line)

    async def hear(self) -> dict[str, Any]:
        with anyio.fail_after(20):
            return await self._out.receive()

    async def ask(self, line: bytes | Oversized) -> dict[str, Any]:
        await self.say(line)
        return await self.hear()

    async def done(self) -> None:
        await self._send.aclose()


async def _start(host: Host) -> None:
    answer = await host.ask(INITIALIZE)
    assert answer["id"] == 1 and answer["result"]["serverInfo"]["name"] == "stand-in"
    await host.say(INITIALIZED)


async def test_a_session_goes_through_and_ends_with_a_delete(stand_in: StandIn) -> None:
    url = endpoint(stand_in.base, "time")
    host = Host()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(relay, Door(url, token=TOKEN), host.lines(), host.write)
        await _start(host)
        listing = await host.ask(_request(2, "tools/list"))
        assert [tool["name"] for tool in listing["result"]["tools"]][:2] == ["echo", "ask_roots"]
        called = await host.ask(_request(3, "tools/call", {"name": "echo", "arguments": {"text": "héllo\n\u202e"}}))
        assert called["result"]["content"][0]["text"] == "héllo\n\u202e"  # the same JSON value …
        assert "\u202e".encode() not in host.raw[-1] and b"h\xc3\xa9llo\\n\\u202e" in host.raw[-1]  # … control-free
        await host.done()
    mine = [r for r in stand_in.requests if r["path"] == "/mcp/time"]
    assert all(r["authorization"] == f"Bearer {TOKEN}" and r["x-mcp-runner-door"] == "mcp-stdio" for r in mine)
    [opening, *after] = [r for r in mine if r["method"] == "POST"]
    session = next(r["mcp-session-id"] for r in after)
    assert "mcp-session-id" not in opening and all(r["mcp-session-id"] == session for r in after)
    assert all(r["mcp-protocol-version"] == "2025-11-25" for r in after)
    assert [r["mcp-session-id"] for r in mine if r["method"] == "DELETE"] == [session]


async def test_a_host_that_writes_ahead_and_closes_gets_every_answer(stand_in: StandIn) -> None:
    host = Host()
    for line in (INITIALIZE, INITIALIZED, _request(2, "tools/call", {"name": "echo", "arguments": {"text": "ahead"}})):
        await host.say(line)
    await host.done()  # stdin ends before any answer: a pipe
    await relay(Door(endpoint(stand_in.base, "pipe")), host.lines(), host.write)
    first, second = await host.hear(), await host.hear()
    assert first["id"] == 1 and second["result"]["content"][0]["text"] == "ahead"
    calls = [r for r in stand_in.seen("POST") if r["path"] == "/mcp/pipe"][1:]
    assert calls and all("mcp-session-id" in r for r in calls)  # held back until the session existed


async def test_the_end_of_stdin_does_not_wait_for_a_request_the_host_cancelled(stand_in: StandIn) -> None:
    host = Host()
    for line in (INITIALIZE, INITIALIZED, _request(2, "tools/call", {"name": "sleep", "arguments": {"seconds": 600}}),
                 b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":2}}\n'):
        await host.say(line)
    await host.done()
    # The SDK's server answers a cancelled request (-32800); one that does as the spec says (no answer) must not
    # hold up the end either: the bridge stops waiting for it when it relays the cancel.
    with anyio.fail_after(60):
        await relay(Door(endpoint(stand_in.base, "cancel")), host.lines(), host.write)
    assert (await host.hear())["id"] == 1
    assert [r["method"] for r in stand_in.requests if r["path"] == "/mcp/cancel"][-1] == "DELETE"


async def test_the_servers_requests_reach_the_host_and_its_answers_go_back(stand_in: StandIn) -> None:
    host = Host()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(relay, Door(endpoint(stand_in.base, "roots")), host.lines(), host.write)
        await _start(host)
        await host.say(_request(2, "tools/call", {"name": "ask_roots", "arguments": {}}))
        asked = await host.hear()
        assert asked["method"] == "roots/list"
        await host.say(json.dumps({"jsonrpc": "2.0", "id": asked["id"],
                                   "result": {"roots": [{"uri": "file:///work/project"}]}}).encode() + b"\n")
        answer = await host.hear()
        assert answer["id"] == 2 and answer["result"]["content"][0]["text"] == "file:///work/project"
        await host.done()


async def test_what_the_server_sends_on_its_own_arrives_over_the_get_stream(stand_in: StandIn) -> None:
    host = Host()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(relay, Door(endpoint(stand_in.base, "notes")), host.lines(), host.write)
        await _start(host)
        with anyio.fail_after(20):
            while not any(r["path"] == "/mcp/notes" for r in stand_in.seen("GET")):
                await anyio.sleep(0.02)
        await host.say(_request(2, "tools/call", {"name": "announce", "arguments": {}}))
        heard: list[dict[str, Any]] = []
        while not (any("id" in m for m in heard) and any("method" in m for m in heard)):
            heard.append(await host.hear())  # the answer and the GET stream's first notification, in either order
        assert next(m for m in heard if "id" in m)["result"]["content"][0]["text"] == "announced"
        assert {m["method"] for m in heard if "method" in m} == {"notifications/tools/list_changed"}
        await host.done()


async def test_bad_lines_are_answered_and_the_session_goes_on(stand_in: StandIn) -> None:
    host = Host()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(relay, Door(endpoint(stand_in.base, "bad")), host.lines(), host.write)
        not_json = await host.ask(b"{not json\n")
        assert not_json["id"] is None and not_json["error"]["code"] == types.PARSE_ERROR
        too_big = await host.ask(Oversized.LINE)
        assert too_big["id"] is None and "cap" in too_big["error"]["message"]
        discover = await host.ask(_request(7, "server/discover"))  # the SDK's clients then initialize
        assert discover["id"] == 7 and discover["error"]["code"] == types.METHOD_NOT_FOUND
        await _start(host)
        echoed = await host.ask(_request(2, "tools/call", {"name": "echo", "arguments": {"text": "still here"}}))
        assert echoed["result"]["content"][0]["text"] == "still here"
        await host.done()


async def test_an_answer_past_the_cap_is_an_error_for_that_request_only(
    stand_in: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stdio_bridge, "MAX_DOOR_MESSAGE_BYTES", 4096)
    host = Host()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(relay, Door(endpoint(stand_in.base, "big")), host.lines(), host.write)
        await _start(host)
        big = await host.ask(_request(2, "tools/call", {"name": "big", "arguments": {"size": 10_000}}))
        assert big["id"] == 2 and "error" in big
        small = await host.ask(_request(3, "tools/call", {"name": "big", "arguments": {"size": 10}}))
        assert small["result"]["content"][0]["text"] == "x" * 10
        await host.done()


async def test_a_refusal_in_plain_text_says_what_to_do(stand_in: StandIn) -> None:
    host = Host()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(relay, Door(endpoint(stand_in.base.replace("/mcp", "/locked"), "time")), host.lines(),
                         host.write)
        refused = await host.ask(INITIALIZE)
        assert refused["id"] == 1 and "MCP_RUNNER_TOKEN" in refused["error"]["message"]
        await host.done()


async def test_no_door_answers_the_pending_request_and_names_what_to_start() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp/time"
        host = Host()
        await host.say(INITIALIZE)
        with pytest.raises(DoorUnavailable, match="mcp-runner serve"):
            await relay(Door(url), host.lines(), host.write)
    answer = await host.hear()
    assert answer["id"] == 1 and answer["error"]["code"] == types.CONNECTION_CLOSED
    assert "make run" in answer["error"]["message"]


# ---------------------------------------------------------------- the command, as a host launches it


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "runner.cli", *args]


async def test_the_sdks_stdio_client_uses_a_profile_through_the_command(stand_in: StandIn) -> None:
    command, *args = _command("mcp", "--url", stand_in.base, "cli")
    async def list_roots(context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        return types.ListRootsResult.model_validate({"roots": [{"uri": "file:///srv/cli"}]})

    server = StdioServerParameters(command=command, args=args, env={"MCP_RUNNER_TOKEN": TOKEN})
    async with Client(server, list_roots_callback=list_roots) as client:
        assert "echo" in [tool.name for tool in (await client.list_tools()).tools]
        result = await client.call_tool("echo", {"text": "through the bridge"})
        assert result.content[0].text == "through the bridge"  # type: ignore[union-attr]
        asked = await client.call_tool("ask_roots", {})
        assert asked.content[0].text == "file:///srv/cli"  # type: ignore[union-attr]
    mine = [r for r in stand_in.requests if r["path"] == "/mcp/cli"]
    assert [r["method"] for r in mine][-1] == "DELETE" and mine[-1]["authorization"] == f"Bearer {TOKEN}"


def test_sigterm_ends_the_session(stand_in: StandIn) -> None:
    process = subprocess.Popen(
        _command("mcp", "--url", stand_in.base, "term"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(INITIALIZE)
    process.stdin.flush()
    assert json.loads(process.stdout.readline())["result"]["serverInfo"]["name"] == "stand-in"
    process.send_signal(signal.SIGTERM)  # stdin still open: the host did not close it first
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert [r["method"] for r in stand_in.requests if r["path"] == "/mcp/term"][-1] == "DELETE"


def test_no_door_is_one_line_on_stderr_and_exit_69() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        env = {**os.environ, "MCP_RUNNER_MCP_URL": f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"}
        done = subprocess.run(_command("mcp", "time"), input=INITIALIZE, capture_output=True, env=env, timeout=60)
    assert done.returncode == stdio_bridge.EXIT_DOOR_UNAVAILABLE
    [line] = done.stderr.decode().splitlines()
    assert "mcp-runner serve" in line and "Traceback" not in line
    assert json.loads(done.stdout)["error"]["code"] == types.CONNECTION_CLOSED


# ---------------------------------------------------------------- printed configs


@pytest.mark.parametrize("host", host_configs.HOSTS)
def test_print_config_is_the_hosts_json_with_an_absolute_command(
    host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MCP_RUNNER_MCP_URL", raising=False)
    token_file = tmp_path / "token"
    assert main(["mcp", "--print-config", host, "--token-file", str(token_file), "time"]) == 0
    config = json.loads(capsys.readouterr().out)
    servers = config["servers"] if host == "vscode" else config["mcpServers"]
    entry = servers["mcp-runner-time"]
    assert Path(entry["command"]).is_absolute()
    assert entry["args"][-4:] == ["mcp", "--token-file", str(token_file), "time"]
    assert (entry.get("type") == "stdio") is (host == "vscode")


def test_print_config_keeps_a_door_url() -> None:
    config = host_configs.host_config(
        "claude", "files", command=["/opt/venv/bin/python", "-m", "runner.cli"], door_url="http://127.0.0.1:6000/mcp"
    )
    assert config["mcpServers"]["mcp-runner-files"] == {
        "command": "/opt/venv/bin/python",
        "args": ["-m", "runner.cli", "mcp", "--url", "http://127.0.0.1:6000/mcp", "files"],
    }


def test_print_config_never_writes_the_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--token", TOKEN, "mcp", "--print-config", "cursor", "time"]) == 0
    printed = capsys.readouterr()
    assert TOKEN not in printed.out and "--token-file" in printed.err
