"""The agent's remote mode: a Streamable HTTP server reached only through the proxy its environment names.

Everything runs on loopback: the mcp SDK's own HTTP server in a subprocess,
the real egress proxy in this process, the real agent in a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from runner.agent.remote import CappedTransport, _EventSize
from runner.egress.proxy import EgressProxy
from runner.egress.rules import Rule
from tests.unit.agent_driver import AgentProcess
from tests.unit.test_agent import expect_fatal, expect_fatal_frame

SERVER = Path(__file__).resolve().parents[1] / "servers" / "http_mcp_server.py"
CREDENTIAL = "Bearer remote-test-credential"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


Decisions = list[dict[str, object]]
StartProxy = Callable[[list[Rule]], Awaitable[tuple[str, Decisions]]]


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), str(port)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture
async def proxied() -> AsyncIterator[StartProxy]:
    proxies: list[EgressProxy] = []

    async def start(rules: list[Rule]) -> tuple[str, Decisions]:
        decisions: Decisions = []
        proxy = EgressProxy(rules, emit=decisions.append)
        server = await proxy.serve("127.0.0.1", 0)
        proxies.append(proxy)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", decisions

    yield start
    for proxy in proxies:
        await proxy.close()


@contextlib.asynccontextmanager
async def _agent(url: str, proxy: str) -> AsyncIterator[AgentProcess]:
    agent = await AgentProcess.start(command=["--url", url], env={"HTTP_PROXY": proxy})
    try:
        yield agent
    finally:
        await agent.aclose()


async def test_remote_server_through_the_proxy_with_its_credential(server_port: int, proxied: StartProxy) -> None:
    rule = Rule("127.0.0.1", server_port, private=True, headers=(("Authorization", CREDENTIAL),))
    proxy, decisions = await proxied([rule])
    async with _agent(f"http://127.0.0.1:{server_port}/mcp", proxy) as agent:
        ready = await agent.ready()
        assert ready["initialize"]["serverInfo"]["name"] == "http-test-server"
        await agent.request(1, "tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}})
        assert (await agent.recv_for(1))["result"]["structuredContent"] == {"result": 5}
        await agent.request(2, "tools/call", {"name": "whoami", "arguments": {}})
        assert (await agent.recv_for(2))["result"]["content"][0]["text"] == CREDENTIAL
    assert decisions and all(d["allowed"] and d["port"] == server_port for d in decisions)


async def test_remote_server_refused_by_the_proxy_is_fatal(server_port: int, proxied: StartProxy) -> None:
    proxy, decisions = await proxied([])
    async with _agent(f"http://127.0.0.1:{server_port}/mcp", proxy) as agent:
        message = await expect_fatal(agent)
        assert "initialize" in message, message
    assert decisions and decisions[0]["code"] == "not_allowed"


async def test_url_mode_needs_exactly_one_url() -> None:
    agent = await AgentProcess.start(command=["--url"])
    try:
        frame = await agent.recv()
        assert frame["type"] == "fatal" and "--url URL" in frame["message"]
        assert await agent.wait() == 2
    finally:
        await agent.aclose()


# -- a remote server's answers are capped like a stdio server's lines ---------------------------------------------

CAP = 1024 * 1024
ENDLESS = 512 * 1024**2  # what a hostile server would go on sending; the agent must stop long before


async def _answer_every_post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, kind: str) -> None:
    """A hostile Streamable HTTP server: whatever it is asked, an answer that never ends (or a gzip bomb)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *([0-9]+)", head)
        await reader.readexactly(int(length[1]) if length else 0)
        if kind == "gzip":
            body = gzip.compress(b'{"jsonrpc":"2.0","id":0,"result":{"pad":"' + b"x" * 64 * CAP + b'"}}', 1)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
            return
        content_type = b"text/event-stream" if kind == "sse" else b"application/json"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nConnection: close\r\n\r\n")
        writer.write(b"event: message\ndata: " if kind == "sse" else b'{"jsonrpc":"2.0","id":0,"result":{"pad":[')
        piece = (b"x" if kind == "sse" else b"0,") * 65536
        for _ in range(ENDLESS // len(piece)):
            writer.write(piece)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


@pytest.mark.parametrize("kind", ["json", "sse"])
async def test_a_remote_answer_past_the_cap_is_too_large_at_once(kind: str) -> None:
    # The SDK reads a JSON answer whole, and caps an event at its own 1 MiB, not the host's cap.
    server = await asyncio.start_server(lambda r, w: _answer_every_post(r, w, kind), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = {"MCP_AGENT_MAX_MESSAGE_BYTES": str(CAP), "HTTP_PROXY": ""}
    agent = await AgentProcess.start(command=["--url", f"http://127.0.0.1:{port}/mcp"], env=env)
    try:
        frame = await expect_fatal_frame(agent, timeout=15)
        assert frame["reason"] == "message_too_large" and "1 MiB cap" in str(frame["message"]), frame
    finally:
        await agent.aclose()
        server.close()


async def test_a_compressed_remote_answer_is_refused_before_it_is_inflated() -> None:
    server = await asyncio.start_server(lambda r, w: _answer_every_post(r, w, "gzip"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = {"MCP_AGENT_MAX_MESSAGE_BYTES": str(CAP), "HTTP_PROXY": ""}
    agent = await AgentProcess.start(command=["--url", f"http://127.0.0.1:{port}/mcp"], env=env)
    try:
        message = await expect_fatal(agent, timeout=15)
        assert "compressed" in message and "gzip" in message, message
    finally:
        await agent.aclose()
        server.close()


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("piece", [1, 2, 3, 7, 4096])
def test_an_event_stream_is_counted_event_by_event(end: bytes, piece: int) -> None:
    # Many events, each well under the cap, make a long stream: none of it may count against the next event.
    event = b"event: message" + end + b"data: " + b"y" * 200 + end + end
    stream = event * 50 + b"data: " + b"z" * 1000
    counter = _EventSize()
    sizes = [counter.add(stream[at : at + piece]) for at in range(0, len(stream), piece)]
    assert max(sizes) <= len(event) + 1007 and sizes[-1] in (1006, 1007)  # a CRLF split at its LF: one byte more


@pytest.mark.parametrize("pad", [0, 10, 25])
async def test_a_compressed_answer_quotes_its_encoding_in_whole_words(pad: int) -> None:
    """The encoding is the server's word and the message reaches the host's sanitizer: cut at 40 characters it kept
    ``ghp_`` and part of a token, which the sanitizer no longer recognizes in the exit record."""
    body = "a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6q7r8"
    coding = "gzip, " + "x, " * (pad // 3) + "ghp_" + body

    class Compressed(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(200, headers={"content-encoding": coding}, stream=httpx2.ByteStream(b"{}"))

    said: list[str] = []
    transport = CappedTransport(Compressed(), 1024, lambda: None, said.append)
    with pytest.raises(httpx2.RemoteProtocolError):
        await transport.handle_async_request(httpx2.Request("POST", "http://127.0.0.1/mcp"))
    assert said and "gzip" in said[0] and (body in said[0] or "ghp_" not in said[0]), said
