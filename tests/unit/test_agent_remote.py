"""The agent's remote mode: a Streamable HTTP server reached only through the proxy its environment names.

Everything runs on loopback: the mcp SDK's own HTTP server in a subprocess,
the real egress proxy in this process, the real agent in a subprocess.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from runner.egress.proxy import EgressProxy
from runner.egress.rules import Rule
from tests.unit.agent_driver import AgentProcess
from tests.unit.test_agent import expect_fatal

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
