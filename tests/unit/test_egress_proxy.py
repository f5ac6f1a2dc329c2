"""The egress proxy end to end on loopback: a fake resolver, an echoing upstream, and the module run as a process.

Nothing here leaves 127.0.0.1: names are answered by a fake resolver, and a
guard fails any test whose proxy tries to open a connection anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import re
import socket
import ssl
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.certs import DevCerts, make_dev_certs
from runner.egress import proxy as proxy_module
from runner.egress import request as request_module
from runner.egress import tls as tls_module
from runner.egress.framing import CHUNKED, HEADER_LINE, Buffered, forward_body
from runner.egress.proxy import EgressProxy, ProxyLimits
from runner.egress.request import Request as _Request
from runner.egress.request import rewrite_head as _rewrite_head
from runner.egress.rules import Rule
from runner.egress.tls import read_client_hello

TIMEOUT = 3.0
ROOT = Path(__file__).resolve().parents[2]
DECISION_KEYS = {"type", "time", "method", "host", "port", "address", "rule", "allowed", "code", "reason"}
TEST_LIMITS = ProxyLimits(head_timeout_s=2.0, resolve_timeout_s=2.0, connect_timeout_s=2.0, idle_timeout_s=10.0)
HANG = "hang"


class FakeResolver:
    """Answers from a table and records every name it is asked; HANG never answers, an exception is raised."""

    def __init__(self, table: dict[str, list[str] | str | OSError]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        answer = self.table.get(host, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
        if isinstance(answer, OSError):
            raise answer
        if answer == HANG:
            await asyncio.Event().wait()
        return list(answer)


class Upstream:
    """An HTTP server that answers each request with a JSON echo of its request line, headers and body.

    With ``linger`` set it keeps reading after its answer, and ``extra`` holds
    whatever else arrived on the connection (a pipelined request the proxy let through).
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.ended = asyncio.Event()
        self.port = 0
        self.extra = b""
        self.linger = 0.0
        self.answer_head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            try:
                head = (await reader.readuntil(b"\r\n\r\n"))[:-4].decode("latin-1").split("\r\n")
            except asyncio.IncompleteReadError:
                return  # a tunnel closed without a request
            headers = [line.split(": ", 1) for line in head[1:]]
            if ["Transfer-Encoding", "chunked"] in headers:
                body = await reader.readuntil(b"\r\n0\r\n\r\n")
            else:
                length = int(next((value for name, value in headers if name.lower() == "content-length"), "0"))
                body = await reader.readexactly(length)
            record = {"request_line": head[0], "headers": headers, "body": body.decode()}
            self.requests.append(record)
            payload = json.dumps(record).encode()
            writer.write(self.answer_head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
            await writer.drain()
            if self.linger:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.linger):
                        while chunk := await reader.read(65536):
                            self.extra += chunk
        finally:
            writer.close()
            self.ended.set()


# A TLS record carrying the start of a ServerHello, and one carrying a HelloRetryRequest (RFC 8446, 4.1.3).
SERVER_HELLO = b"\x16\x03\x03\x00\x26\x02\x00\x00\x22\x03\x03" + bytes(range(32))
RETRY_REQUEST = b"\x16\x03\x03\x00\x26\x02\x00\x00\x22\x03\x03" + bytes.fromhex(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"
)
CHANGE_CIPHER_SPEC = b"\x14\x03\x03\x00\x01\x01"


class RawUpstream:
    """A server that sends ``greeting`` (a TLS server's first record) and keeps every byte each connection sent."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.ended = asyncio.Event()
        self.port = 0
        self.greeting = SERVER_HELLO

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.greeting)
            data = b""
            with contextlib.suppress(ConnectionResetError):  # the proxy closed without reading the greeting
                while chunk := await reader.read(65536):
                    data += chunk
            self.received.append(data)
        finally:
            writer.close()
            self.ended.set()


Proxies = Callable[..., Awaitable[tuple[int, EgressProxy]]]


class CountingPattern:
    """A compiled pattern that records the length of each subject it is matched against."""

    def __init__(self, pattern: re.Pattern[bytes], lengths: list[int]) -> None:
        self.pattern = pattern
        self.lengths = lengths

    def fullmatch(self, subject: bytes) -> re.Match[bytes] | None:
        self.lengths.append(len(subject))
        return self.pattern.fullmatch(subject)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail the test if anything (the proxy above all) tries to open a connection beyond loopback."""
    real = asyncio.open_connection
    escaped: list[str] = []

    async def guarded(host: str, port: int, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not ipaddress.ip_address(host).is_loopback:
            escaped.append(host)
            raise AssertionError(f"a test tried to connect to {host}")
        return await real(host, port, **kwargs)

    monkeypatch.setattr(asyncio, "open_connection", guarded)
    yield escaped
    assert escaped == []


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    echo = Upstream()
    server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
    echo.port = server.sockets[0].getsockname()[1]
    yield echo
    server.close()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    raw = RawUpstream()
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    yield raw
    server.close()


@pytest.fixture
async def events() -> list[dict[str, object]]:
    return []


@pytest.fixture
async def start_proxy(events: list[dict[str, object]]) -> AsyncIterator[Proxies]:
    started: list[EgressProxy] = []

    async def start(
        rules: Sequence[Rule], resolver: FakeResolver | None = None, limits: ProxyLimits = TEST_LIMITS
    ) -> tuple[int, EgressProxy]:
        proxy = EgressProxy(rules, emit=events.append, resolver=resolver or FakeResolver({}), limits=limits)
        server = await proxy.serve("127.0.0.1", 0)
        started.append(proxy)
        return server.sockets[0].getsockname()[1], proxy

    yield start
    for proxy in started:
        await asyncio.wait_for(proxy.close(), TIMEOUT)


async def exchange(port: int, data: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send data to the proxy and read everything it answers, up to its close (``timeout`` only guards a hang)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


def assert_refused(raw: bytes, status: int, *in_body: str) -> str:
    code, headers, body = parse_response(raw)
    assert code == status, raw
    allow = {"Allow": "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, CONNECT"} if status == 405 else {}
    assert headers == {
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Length": str(len(body)),
        **allow,
        "Connection": "close",
    }
    text = body.decode()
    assert text.startswith("mcp-runner egress: ") and text.count("\n") == 1
    for part in in_body:
        assert part in text
    return text


def only_decision(events: list[dict[str, object]]) -> dict[str, object]:
    decisions = [event for event in events if event["type"] == "decision"]
    assert len(decisions) == 1, events
    decision = decisions[0]
    assert set(decision) == DECISION_KEYS
    assert isinstance(decision["time"], float) and abs(decision["time"] - time.time()) < 10
    assert decision["allowed"] is (decision["code"] == "allowed")
    return decision


def get(url: str, *headers: str) -> bytes:
    return "\r\n".join([f"GET {url} HTTP/1.1", *headers, "", ""]).encode()


async def test_plain_http_is_rewritten_and_gets_the_rule_credentials(
    upstream: Upstream, start_proxy: Proxies, events: list[dict[str, object]]
) -> None:
    rule = Rule("web.test", upstream.port, private=True, headers=(("Authorization", "Bearer rule-secret"),))
    resolver = FakeResolver({"web.test": ["127.0.0.1"]})
    port, _ = await start_proxy([rule], resolver)
    request = "\r\n".join(
        [
            f"POST http://Web.Test:{upstream.port}/echo/path?q=1#frag HTTP/1.0",
            "Host: elsewhere.test",
            "Proxy-Authorization: Basic cHJveHk6cHJveHktc2VjcmV0",
            "authorization: Bearer client-secret",
            "Proxy-Connection: keep-alive",
            "Connection: keep-alive, X-Hop",
            "Keep-Alive: timeout=5",
            "X-Hop: dropped",
            "TE: trailers",
            "Upgrade: websocket",
            "X-Kept:   yes  ",
            "Content-Length: 5",
            "",
            "hello",
        ]
    )
    status, _, body = parse_response(await exchange(port, request.encode()))
    assert status == 200
    assert json.loads(body) == upstream.requests[0]
    assert upstream.requests == [
        {
            "request_line": "POST /echo/path?q=1 HTTP/1.1",
            "headers": [
                ["Host", f"web.test:{upstream.port}"],
                ["X-Kept", "yes"],
                ["Content-Length", "5"],
                ["Authorization", "Bearer rule-secret"],
                ["Connection", "close"],
            ],
            "body": "hello",
        }
    ]
    assert resolver.asked == ["web.test"]
    decision = only_decision(events)
    assert decision | {"time": 0, "reason": ""} == {
        "type": "decision",
        "time": 0,
        "method": "POST",
        "host": "web.test",
        "port": upstream.port,
        "address": "127.0.0.1",
        "rule": f"web.test:{upstream.port}",
        "allowed": True,
        "code": "allowed",
        "reason": "",
    }
    logged = json.dumps(events)
    for secret in ("rule-secret", "client-secret", "cHJveHk6cHJveHktc2VjcmV0"):
        assert secret not in logged


async def test_a_header_a_server_reads_as_the_credential_is_dropped(upstream: Upstream, start_proxy: Proxies) -> None:
    # A CGI, WSGI or PHP server reads X_Api_Key and X-Api-Key alike: the sandbox's would shadow the rule's there.
    rule = Rule("web.test", upstream.port, private=True, headers=(("X-Api-Key", "rule-key"),))
    port, _ = await start_proxy([rule], FakeResolver({"web.test": ["127.0.0.1"]}))
    request = get(f"http://web.test:{upstream.port}/", "X_Api_Key: sandbox-key", "x-api-key: other", "X_Kept: yes")
    status, _, _ = parse_response(await exchange(port, request))
    assert status == 200
    assert upstream.requests[0]["headers"] == [
        ["Host", f"web.test:{upstream.port}"],
        ["X_Kept", "yes"],
        ["X-Api-Key", "rule-key"],
        ["Connection", "close"],
    ]


@pytest.mark.parametrize("method", ["TRACE", "TRACK", "DEBUG", "PROPFIND", "get", "CONNECTX"])
async def test_echoing_and_unknown_methods_are_refused_before_anything_is_sent(
    upstream: Upstream, start_proxy: Proxies, events: list[dict[str, object]], method: str
) -> None:
    rule = Rule("web.test", upstream.port, private=True, headers=(("Authorization", "Bearer rule-secret"),))
    resolver = FakeResolver({"web.test": ["127.0.0.1"]})
    port, _ = await start_proxy([rule], resolver)
    request = f"{method} http://web.test:{upstream.port}/ HTTP/1.1\r\nMax-Forwards: 0\r\n\r\n".encode()
    text = assert_refused(await exchange(port, request), 405, f"method {method} is not forwarded")
    assert "rule-secret" not in text
    assert (upstream.connections, resolver.asked) == (0, [])
    decision = only_decision(events)
    assert (decision["code"], decision["method"], decision["host"], decision["rule"]) == (
        "method_not_allowed",
        method,
        "web.test",
        None,
    )


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_ordinary_methods_are_forwarded_with_the_credentials(
    upstream: Upstream, start_proxy: Proxies, events: list[dict[str, object]], method: str
) -> None:
    rule = Rule("127.0.0.1", upstream.port, private=True, headers=(("Authorization", "Bearer rule-secret"),))
    port, _ = await start_proxy([rule])
    request = f"{method} http://127.0.0.1:{upstream.port}/m HTTP/1.1\r\n\r\n".encode()
    assert parse_response(await exchange(port, request))[0] == 200
    assert upstream.requests[0]["request_line"] == f"{method} /m HTTP/1.1"
    assert ["Authorization", "Bearer rule-secret"] in upstream.requests[0]["headers"]
    assert only_decision(events)["code"] == "allowed"


@pytest.mark.parametrize("method", ["TRACE", "TRACK", "DEBUG", "PROPFIND"])
def test_a_method_that_may_echo_never_gets_credentials_even_past_the_door(method: str) -> None:
    """Defence in depth: the head rewrite keeps its own list, should the check at the door ever widen."""
    rule = Rule("web.test", 80, headers=(("Authorization", "Bearer rule-secret"), ("X-Api-Key", "key-secret")))
    request = _Request(method, "web.test", 80, "/", [("Authorization", "Bearer client"), ("X-Kept", "1")])
    head = _rewrite_head(request, rule).decode()
    assert head == f"{method} / HTTP/1.1\r\nHost: web.test\r\nX-Kept: 1\r\nConnection: close\r\n\r\n"


def pipelined(first: bytes, second_host: str = "other.test") -> bytes:
    return first + f"GET http://{second_host}/second HTTP/1.1\r\nHost: {second_host}\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("first", "body"),
    [
        (b"GET http://web.test:{port}/first HTTP/1.1\r\n\r\n", ""),
        (b"POST http://web.test:{port}/first HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", "hello"),
        (b"POST http://web.test:{port}/first HTTP/1.1\r\nContent-Length: 0005\r\n\r\nhello", "hello"),
        (
            b"POST http://web.test:{port}/first HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"
            b"2;ext=x\r\nhe\r\n03\r\nllo\r\n0\r\nX-Trailer: smuggled\r\n\r\n",
            "2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
        ),
    ],
    ids=["no-body", "content-length", "content-length-leading-zeros", "chunked-with-extensions-and-trailer"],
)
@pytest.mark.parametrize("second_host", ["other.test", "web.test"])
async def test_a_pipelined_second_request_never_reaches_the_upstream(
    upstream: Upstream,
    start_proxy: Proxies,
    events: list[dict[str, object]],
    first: bytes,
    body: str,
    second_host: str,
) -> None:
    upstream.linger = 0.3
    resolver = FakeResolver({"web.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    port, _ = await start_proxy([Rule("web.test", upstream.port, private=True)], resolver)
    request = first.replace(b"{port}", str(upstream.port).encode())
    raw = await exchange(port, pipelined(request, f"{second_host}:{upstream.port}"))
    status, headers, answer = parse_response(raw)
    assert status == 200 and headers["Connection"] == "close"
    assert json.loads(answer)["body"] == body
    assert len(upstream.requests) == 1 and upstream.requests[0]["request_line"].endswith("/first HTTP/1.1")
    assert upstream.extra == b""  # nothing after the first request's body reached the upstream
    assert not any(name == "X-Trailer" for name, _ in upstream.requests[0]["headers"])
    assert upstream.connections == 1 and resolver.asked == ["web.test"]
    assert only_decision(events)["code"] == "allowed"


@pytest.mark.parametrize(
    "broken",
    [
        b"5\nhello\r\n0\r\n\r\n",  # a bare LF ends the size line
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",  # the chunk is longer than it said
        b"-1\r\n",
        b"0\r\nbad trailer\r\n\r\n",
    ],
)
async def test_a_chunked_body_that_breaks_its_framing_ends_the_exchange(
    raw_upstream: RawUpstream, start_proxy: Proxies, broken: bytes
) -> None:
    port, _ = await start_proxy([Rule("127.0.0.1", raw_upstream.port, private=True)])
    head = f"POST http://127.0.0.1:{raw_upstream.port}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    await exchange(port, pipelined(head + broken))
    await asyncio.wait_for(raw_upstream.ended.wait(), TIMEOUT)
    [received] = raw_upstream.received
    assert b"second" not in received and b"hello\r\n0" not in received
    assert received.startswith(b"POST / HTTP/1.1\r\n")


async def test_the_answer_ends_the_connection(upstream: Upstream, start_proxy: Proxies) -> None:
    upstream.answer_head = (
        b"HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=60\r\nX-Hop: 1\r\nX-Kept: 2\r\n"
    )
    port, _ = await start_proxy([Rule("127.0.0.1", upstream.port, private=True)])
    request = f"PUT http://127.0.0.1:{upstream.port}/ HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"
    raw = await exchange(port, request.encode())
    interim, _, final = raw.partition(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\nX-Interim: yes"
    status, headers, body = parse_response(final)
    assert status == 200 and json.loads(body)["body"] == "ok"
    assert headers == {"X-Kept": "2", "Content-Length": str(len(body)), "Connection": "close"}


async def test_an_http_1_0_client_gets_no_interim_answer(upstream: Upstream, start_proxy: Proxies) -> None:
    # The proxy asks in HTTP/1.1, so the upstream may send 1xx; a 1.0 client would take one for the answer.
    upstream.answer_head = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n"
    )
    port, _ = await start_proxy([Rule("127.0.0.1", upstream.port, private=True)])
    request = f"PUT http://127.0.0.1:{upstream.port}/ HTTP/1.0\r\nContent-Length: 2\r\n\r\nok"
    raw = await exchange(port, request.encode())
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    status, _, body = parse_response(raw)
    assert status == 200 and json.loads(body)["body"] == "ok"


async def test_an_http_1_0_client_gets_a_chunked_answer_as_its_data(start_proxy: Proxies) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    up_port = server.sockets[0].getsockname()[1]
    try:
        port, _ = await start_proxy([Rule("127.0.0.1", up_port, private=True)])
        raw = await exchange(port, f"GET http://127.0.0.1:{up_port}/ HTTP/1.0\r\n\r\n".encode())
        assert raw == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nok!!!"
    finally:
        server.close()


@pytest.mark.parametrize(
    ("method", "answer", "relayed"),
    [
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\nsecond", b"ok"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nHTTP/1.1 200 OK\r\n\r\nsecond", b""),
        ("GET", b"HTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.1 200 OK\r\n\r\nsecond", b""),
        (
            "GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n002;x=y\r\nok\r\n0\r\nX-T: 1\r\n\r\nsecond",
            b"2\r\nok\r\n0\r\n\r\n",
        ),
    ],
    ids=["content-length", "head", "not-modified", "chunked"],
)
async def test_the_answer_ends_where_its_framing_says_though_the_upstream_stays(
    start_proxy: Proxies, method: str, answer: bytes, relayed: bytes
) -> None:
    # An upstream that ignores Connection: close and sends a second response the client never asked for.
    stay = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await stay.wait()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    up_port = server.sockets[0].getsockname()[1]
    try:
        port, _ = await start_proxy([Rule("127.0.0.1", up_port, private=True)])
        raw = await exchange(port, f"{method} http://127.0.0.1:{up_port}/ HTTP/1.1\r\n\r\n".encode())
        assert raw.partition(b"\r\n\r\n")[2] == relayed
    finally:
        stay.set()
        server.close()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"", "the upstream closed before answering"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "does not start with an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", "switched protocols"),
    ],
)
async def test_an_answer_the_proxy_cannot_relay_is_a_bad_gateway(
    start_proxy: Proxies, answer: bytes, message: str
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    bad_port = server.sockets[0].getsockname()[1]
    try:
        port, _ = await start_proxy([Rule("127.0.0.1", bad_port, private=True)])
        assert_refused(await exchange(port, get(f"http://127.0.0.1:{bad_port}/")), 502, message)
    finally:
        server.close()


async def test_plain_http_ends_when_the_upstream_does(upstream: Upstream, start_proxy: Proxies) -> None:
    limits = ProxyLimits(max_connections=1, idle_timeout_s=3600)
    port, _ = await start_proxy([Rule("127.0.0.1", upstream.port, private=True)], limits=limits)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(get(f"http://127.0.0.1:{upstream.port}/first"))
        assert parse_response(await asyncio.wait_for(reader.read(), TIMEOUT))[0] == 200
        # The client has not closed; its slot comes back all the same: with an idle timeout of an hour only the
        # upstream's close can give it back (the 60 s deadline only guards a slot kept for good).
        deadline = time.monotonic() + 60
        while parse_response(await exchange(port, get(f"http://127.0.0.1:{upstream.port}/second")))[0] == 503:
            assert time.monotonic() < deadline, "the proxy kept the connection after the upstream closed"
            await asyncio.sleep(0.01)
    finally:
        writer.close()


async def test_client_text_in_decisions_is_clipped(start_proxy: Proxies, events: list[dict[str, object]]) -> None:
    port, _ = await start_proxy([])
    long_host = ".".join(["a" * 60] * 5)
    await exchange(port, f"{'M' * 300} http://{long_host}/ HTTP/1.1\r\n\r\n".encode())
    decision = only_decision(events)
    assert decision["code"] == "bad_request" and decision["host"] is None
    assert decision["method"] == "..."  # one word past the cap: cut whole, nothing of it is left
    assert isinstance(decision["reason"], str) and len(decision["reason"]) <= 258


def test_client_text_is_clipped_in_whole_words() -> None:
    """Part of a secret the sandbox put in a host name, left at the cut, is one the host's sanitizer misses."""
    body = "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    clipped = proxy_module._clip("refused " * 30 + "ghp_" + body + " for it")
    assert clipped.endswith("refused ...") and "ghp_" not in clipped and len(clipped) <= 258


@pytest.fixture(scope="module")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("tls"), server_names=("web.test",), clients=())


@pytest.fixture
async def tls_upstream(tls_certs: DevCerts) -> AsyncIterator[int]:
    """A TLS server for web.test that answers one line with its length and its first bytes."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_certs.server_cert, tls_certs.server_key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            writer.write(b"%d %s\n" % (len(line), line[:10]))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context, limit=1 << 20)
    yield server.sockets[0].getsockname()[1]
    server.close()


def record(fragment: bytes) -> bytes:
    """One TLS handshake record."""
    return b"\x16\x03\x01" + struct.pack("!H", len(fragment)) + fragment


def hello_message(*extensions: bytes, no_extensions: bool = False) -> bytes:
    """A minimal TLS 1.3 ClientHello handshake message, built by hand to shape its extensions."""
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if not no_extensions:
        joined = b"".join(extensions)
        body += struct.pack("!H", len(joined)) + joined
    return b"\x01" + len(body).to_bytes(3, "big") + body


def client_hello(*extensions: bytes, records: int = 1, no_extensions: bool = False) -> bytes:
    """``hello_message`` spread over ``records`` handshake records."""
    message = hello_message(*extensions, no_extensions=no_extensions)
    size = -(-len(message) // records)
    return b"".join(record(message[i : i + size]) for i in range(0, len(message), size))


def sni(*names: bytes) -> bytes:
    """A server_name extension with one host_name entry per name."""
    entries = b"".join(b"\x00" + struct.pack("!H", len(name)) + name for name in names)
    data = struct.pack("!H", len(entries)) + entries
    return struct.pack("!HH", 0, len(data)) + data


def ssl_client_hello(server_hostname: str | None) -> bytes:
    """The ClientHello Python's own TLS client sends for ``server_hostname``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def test_connect_tunnel_carries_tls_to_the_allowed_name(
    tls_upstream: int, tls_certs: DevCerts, start_proxy: Proxies, events: list[dict[str, object]]
) -> None:
    resolver = FakeResolver({"web.test": ["127.0.0.1"]})
    port, _ = await start_proxy([Rule("web.test", tls_upstream, private=True)], resolver)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"CONNECT web.test:{tls_upstream} HTTP/1.1\r\nHost: web.test:{tls_upstream}\r\n\r\n".encode())
        established = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert established == b"HTTP/1.1 200 Connection established\r\n\r\n"
        context = ssl.create_default_context(cafile=tls_certs.ca_cert)
        await asyncio.wait_for(writer.start_tls(context, server_hostname="web.test"), TIMEOUT)
        writer.write(b"x" * 200_000 + b"\n")
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"200001 xxxxxxxxxx\n"
    finally:
        writer.close()
    assert resolver.asked == ["web.test"]
    decision = only_decision(events)
    assert (decision["method"], decision["host"], decision["port"]) == ("CONNECT", "web.test", tls_upstream)
    assert (decision["address"], decision["rule"], decision["code"]) == (
        "127.0.0.1",
        f"web.test:{tls_upstream}",
        "allowed",
    )


@pytest.mark.parametrize(
    ("target", "hello"),
    [
        ("web.test", ssl_client_hello("web.test")),
        ("web.test", client_hello(sni(b"WEB.Test."))),
        ("web.test", client_hello(b"\x00\x0a\x00\x00", sni(b"web.test"), b"\x00\x10\x00\x00", records=5)),
        ("127.0.0.1", ssl_client_hello("127.0.0.1")),
        ("127.0.0.1", ssl_client_hello(None)),
        ("127.0.0.1", client_hello(no_extensions=True)),
    ],
    ids=["python-client", "case-and-dot", "split-over-records", "ip-literal", "no-sni-for-ip", "no-extensions-for-ip"],
)
async def test_a_client_hello_naming_the_allowed_host_passes_unchanged(
    raw_upstream: RawUpstream, start_proxy: Proxies, events: list[dict[str, object]], target: str, hello: bytes
) -> None:
    resolver = FakeResolver({"web.test": ["127.0.0.1"]})
    port, _ = await start_proxy([Rule(target, raw_upstream.port, private=True)], resolver)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"CONNECT {target}:{raw_upstream.port} HTTP/1.1\r\n\r\n".encode() + hello + b"early data")
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    assert answer == b"HTTP/1.1 200 Connection established\r\n\r\n" + SERVER_HELLO
    assert raw_upstream.received == [hello + b"early data"]
    decision = only_decision(events)
    assert decision["code"] == "allowed" and "TLS server name checked" in str(decision["reason"])


@pytest.mark.parametrize(
    ("target", "sent", "code", "message"),
    [
        ("web.test", ssl_client_hello("other.test"), "sni_mismatch", "names 'other.test', not web.test"),
        ("web.test", client_hello(sni(b"web.test.evil")), "sni_mismatch", "names 'web.test.evil'"),
        ("web.test", client_hello(sni(b"sub.web.test")), "sni_mismatch", "names 'sub.web.test'"),
        ("web.test", ssl_client_hello(None), "sni_missing", "names no server"),
        ("web.test", client_hello(no_extensions=True), "sni_missing", "names no server"),
        ("127.0.0.1", ssl_client_hello("other.test"), "sni_mismatch", "names 'other.test', not 127.0.0.1"),
        # The front end would route by the encrypted inner hello's name, which could be any host it serves.
        ("web.test", client_hello(sni(b"web.test"), b"\xfe\x0d\x00\x04\x00\x00\x01\x00"), "sni_hidden", "0xfe0d"),
        ("web.test", client_hello(b"\xff\xce\x00\x00", sni(b"web.test")), "sni_hidden", "encrypted server name"),
        ("127.0.0.1", client_hello(b"\xfe\x0d\x00\x00"), "sni_hidden", "name 127.0.0.1 in the clear"),
        ("web.test", client_hello(sni(b"web.test"), sni(b"other.test")), "not_tls", "repeats extension 0"),
        ("web.test", client_hello(sni(b"web.test", b"other.test")), "not_tls", "exactly one host"),
        ("web.test", client_hello(sni(b"web.test"))[:-3], "not_tls", "closed before its TLS ClientHello"),
        ("web.test", record(hello_message(sni(b"web.test")) + b"\x02"), "not_tls", "more than the ClientHello"),
        ("web.test", b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n", "not_tls", "not start with a TLS handshake"),
        ("web.test", b"\x16\x03\x01\x40\x01" + bytes(0x4001), "not_tls", "not start with a TLS handshake"),
        ("web.test", b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not_tls", "is not a ClientHello"),
        ("web.test", client_hello(b"\x00\x15\xa0\x00" + bytes(0xA000), records=4), "not_tls", "larger than 32768"),
    ],
    ids=[
        "python-client-other-host",
        "suffix-of-another-domain",
        "subdomain",
        "python-client-no-sni",
        "no-extensions",
        "ip-literal-with-a-name",
        "ech",
        "esni",
        "ech-for-an-ip-literal",
        "two-sni-extensions",
        "two-host-names",
        "truncated",
        "handshake-after-the-hello",
        "plain-http",
        "oversized-record",
        "not-a-client-hello",
        "too-large",
    ],
)
async def test_a_tunnel_whose_client_hello_names_another_host_is_refused(
    raw_upstream: RawUpstream,
    start_proxy: Proxies,
    events: list[dict[str, object]],
    target: str,
    sent: bytes,
    code: str,
    message: str,
) -> None:
    resolver = FakeResolver({"web.test": ["127.0.0.1"]})
    port, _ = await start_proxy([Rule(target, raw_upstream.port, private=True)], resolver)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"CONNECT {target}:{raw_upstream.port} HTTP/1.1\r\n\r\n".encode() + sent)
        if code == "not_tls" and "closed before" in message:
            writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    alert = b"" if code == "not_tls" else b"\x15\x03\x03\x00\x02\x02\x31"  # fatal access_denied
    assert answer == b"HTTP/1.1 200 Connection established\r\n\r\n" + alert
    await asyncio.wait_for(raw_upstream.ended.wait(), TIMEOUT)
    assert raw_upstream.received == [b""]  # connected, then closed without a byte
    decision = only_decision(events)
    assert (decision["code"], decision["allowed"], decision["rule"]) == (code, False, f"{target}:{raw_upstream.port}")
    assert message in str(decision["reason"])


@pytest.mark.parametrize(
    ("retry", "decisions"),
    [
        (client_hello(sni(b"web.test")), ["allowed"]),
        (CHANGE_CIPHER_SPEC + client_hello(sni(b"web.test")), ["allowed"]),
        (client_hello(sni(b"other.test")), ["allowed", "sni_mismatch"]),
        (CHANGE_CIPHER_SPEC + client_hello(sni(b"other.test")), ["allowed", "sni_mismatch"]),
        (CHANGE_CIPHER_SPEC + b"\x17\x03\x03\x00\x01x", ["allowed", "not_tls"]),
    ],
    ids=["same-name", "ccs-then-same-name", "other-name", "ccs-then-other-name", "no-second-hello"],
)
async def test_the_hello_retried_after_a_hello_retry_request_is_checked_too(
    raw_upstream: RawUpstream,
    start_proxy: Proxies,
    events: list[dict[str, object]],
    retry: bytes,
    decisions: list[str],
) -> None:
    """Otherwise: name the allowed host, offer a key share the server refuses, name another host in the retry."""
    raw_upstream.greeting = RETRY_REQUEST
    resolver = FakeResolver({"web.test": ["127.0.0.1"]})
    port, _ = await start_proxy([Rule("web.test", raw_upstream.port, private=True)], resolver)
    first = client_hello(sni(b"web.test"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"CONNECT web.test:{raw_upstream.port} HTTP/1.1\r\n\r\n".encode() + first)
        expected = b"HTTP/1.1 200 Connection established\r\n\r\n" + RETRY_REQUEST
        assert await asyncio.wait_for(reader.readexactly(len(expected)), TIMEOUT) == expected
        writer.write(retry + b"finished")
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    await asyncio.wait_for(raw_upstream.ended.wait(), TIMEOUT)
    assert [event["code"] for event in events] == decisions
    if decisions == ["allowed"]:
        assert (answer, raw_upstream.received) == (b"", [first + retry + b"finished"])
    else:
        assert answer == (b"" if decisions[-1] == "not_tls" else b"\x15\x03\x03\x00\x02\x02\x31")
        assert raw_upstream.received == [first]  # the retry never reached the server


async def test_a_real_hello_retry_passes(
    tls_certs: DevCerts, start_proxy: Proxies, events: list[dict[str, object]]
) -> None:
    """A server that takes only P-384 makes Python's client (an X25519 key share) retry its hello."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_certs.server_cert, tls_certs.server_key)
    context.set_ecdh_curve("secp384r1")
    retried: list[bool] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    tls_port = server.sockets[0].getsockname()[1]
    real_read_server_first = tls_module.read_server_first

    async def spy(source: asyncio.StreamReader) -> tuple[bytes, bool]:
        first, retry = await real_read_server_first(source)
        retried.append(retry)
        return first, retry

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tls_module, "read_server_first", spy)
            port, _ = await start_proxy(
                [Rule("web.test", tls_port, private=True)], FakeResolver({"web.test": ["127.0.0.1"]})
            )
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"CONNECT web.test:{tls_port} HTTP/1.1\r\n\r\n".encode())
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            client = ssl.create_default_context(cafile=tls_certs.ca_cert)
            await asyncio.wait_for(writer.start_tls(client, server_hostname="web.test"), TIMEOUT)
            writer.write(b"after a retry\n")
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"after a retry\n"
            writer.close()
    finally:
        server.close()
    assert retried == [True]
    assert [event["code"] for event in events] == ["allowed"]


async def test_a_tunnel_without_a_client_hello_ends_at_the_head_timeout(
    upstream: Upstream, start_proxy: Proxies, events: list[dict[str, object]]
) -> None:
    limits = ProxyLimits(head_timeout_s=0.2)
    port, _ = await start_proxy([Rule("127.0.0.1", upstream.port, private=True)], limits=limits)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\n\r\n".encode() + b"\x16\x03\x01")
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    finally:
        writer.close()
    decision = only_decision(events)
    assert decision["code"] == "not_tls" and "no TLS ClientHello within 0.2 s" in str(decision["reason"])


@pytest.mark.parametrize(
    "request_bytes",
    [
        get("http://other.test/"),
        get("http://web.test:81/"),
        b"CONNECT other.test:443 HTTP/1.1\r\n\r\n",
        b"CONNECT web.test.:81 HTTP/1.1\r\n\r\n",
        b"CONNECT sub.web.test:80 HTTP/1.1\r\n\r\n",
    ],
)
async def test_a_name_off_the_allowlist_is_refused_without_resolving(
    start_proxy: Proxies, events: list[dict[str, object]], request_bytes: bytes
) -> None:
    resolver = FakeResolver({"other.test": ["127.0.0.1"], "web.test": ["127.0.0.1"], "sub.web.test": ["127.0.0.1"]})
    port, _ = await start_proxy([Rule("web.test", 80, private=True)], resolver)
    assert_refused(await exchange(port, request_bytes), 403, "is not on the allowlist; add it to the profile's "
                   "network.egress")  # fmt: skip
    assert resolver.asked == []
    decision = only_decision(events)
    assert str(decision["reason"]).endswith(" is not on the allowlist; add it to the profile's network.egress")
    assert (decision["code"], decision["rule"], decision["address"]) == ("not_allowed", None, None)
    assert decision["host"] in {"other.test", "web.test", "sub.web.test"}


@pytest.mark.parametrize(
    ("addresses", "refused", "kind"),
    [
        (["127.0.0.1"], "127.0.0.1", "loopback"),
        (["93.184.216.34", "172.18.0.3"], "172.18.0.3", "private"),
        (["2606:4700::1111", "::ffff:169.254.169.254"], "::ffff:a9fe:a9fe", "metadata"),
        (["fe80::1%eth0"], "fe80::1%eth0", "link-local"),
    ],
)
async def test_an_allowed_name_resolving_to_a_refused_address_is_refused(
    upstream: Upstream,
    start_proxy: Proxies,
    events: list[dict[str, object]],
    addresses: list[str],
    refused: str,
    kind: str,
) -> None:
    resolver = FakeResolver({"web.test": addresses})
    port, _ = await start_proxy([Rule("web.test", upstream.port)], resolver)
    assert_refused(await exchange(port, get(f"http://web.test:{upstream.port}/")), 403, f"{kind} address {refused}")
    assert upstream.connections == 0
    decision = only_decision(events)
    assert (decision["code"], decision["address"], decision["rule"]) == (
        "refused_address",
        refused,
        f"web.test:{upstream.port}",
    )
    assert f"{kind} address {refused}" in str(decision["reason"])


async def test_an_ip_literal_needs_its_own_rule(
    upstream: Upstream, start_proxy: Proxies, events: list[dict[str, object]]
) -> None:
    resolver = FakeResolver({"web.test": ["127.0.0.1"]})
    port, _ = await start_proxy([Rule("web.test", upstream.port, private=True)], resolver)
    connect = f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\n\r\n".encode()
    assert_refused(await exchange(port, connect), 403, "not on the allowlist")
    assert (resolver.asked, upstream.connections) == ([], 0)
    assert only_decision(events)["code"] == "not_allowed"


async def test_an_allowed_private_ip_literal_is_forwarded(
    upstream: Upstream, start_proxy: Proxies, events: list[dict[str, object]]
) -> None:
    resolver = FakeResolver({})
    port, _ = await start_proxy([Rule("127.0.0.1", upstream.port, private=True)], resolver)
    status, _, _ = parse_response(await exchange(port, get(f"http://127.0.0.1:{upstream.port}/x")))
    assert status == 200
    assert upstream.requests[0]["headers"] == [["Host", f"127.0.0.1:{upstream.port}"], ["Connection", "close"]]
    assert resolver.asked == []
    assert only_decision(events)["code"] == "allowed"


async def test_an_ip_literal_is_still_checked(
    upstream: Upstream, start_proxy: Proxies, events: list[dict[str, object]]
) -> None:
    port, _ = await start_proxy([Rule("127.0.0.1", upstream.port)])
    assert_refused(await exchange(port, get(f"http://127.0.0.1:{upstream.port}/")), 403, "loopback address 127.0.0.1")
    assert upstream.connections == 0
    assert only_decision(events)["code"] == "refused_address"


@pytest.mark.parametrize(
    ("request_bytes", "method", "message"),
    [
        (get("https://web.test/"), "GET", "use CONNECT"),
        (get("/index.html", "Host: web.test"), "GET", "HTTP proxy"),
        (get("http://user:pw@web.test/"), "GET", "user:password@"),
        (get("http://bad_host.test/"), "GET", "not a valid host name"),
        (b"CONNECT web.test HTTP/1.1\r\n\r\n", "CONNECT", "needs a port"),
        (b"CONNECT *.web.test:443 HTTP/1.1\r\n\r\n", "CONNECT", "wildcard"),
        (b"hello\r\n\r\n", "", "not an HTTP request"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "", "not an HTTP request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)), "", "not an HTTP request"),
        (b"GET http://web.test/ HTTP/2.0\r\n\r\n", "", "not an HTTP request"),
        (b"GET  http://web.test/ HTTP/1.1\r\n\r\n", "", "not an HTTP request"),
        (b"GET http://web.test/\r\n\r\n", "", "not an HTTP request"),
        (b"GET http://web.test/ HTTP/1.1\n\n", "", "not an HTTP request"),
        (get("http://web.test/", " folded: header"), "GET", "header line 1 is malformed"),
        (get("http://web.test/", "No-Colon"), "GET", "header line 1 is malformed"),
        (get("http://web.test/", "X: a\x00b"), "GET", "header line 1 is malformed"),
        (get("http://web.test/", "X: a\rb"), "GET", "header line 1 is malformed"),
        (get("http://web.test/", "X: a\nb"), "GET", "header line 1 is malformed"),
        (get("http://web.test/", "X: a", "Bad Name: b"), "GET", "header line 2 is malformed"),
        (get("http://web.test/", "Content-Length : 5"), "GET", "header line 1 is malformed"),
        (get("http://web.test/", "Content-Length: 5", "Transfer-Encoding: chunked"), "GET", "both Content-Length"),
        (get("http://web.test/", "Transfer-Encoding: chunked", "Content-Length: 5"), "GET", "both Content-Length"),
        (get("http://web.test/", "Content-Length: 5", "Content-Length: 5"), "GET", "more than one Content-Length"),
        (get("http://web.test/", "Content-Length: 5, 5"), "GET", "must be a decimal number"),
        (get("http://web.test/", "Content-Length: +5"), "GET", "must be a decimal number"),
        (get("http://web.test/", "Content-Length: 0x5"), "GET", "must be a decimal number"),
        (get("http://web.test/", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), "GET", "more than one"),
        (get("http://web.test/", "Transfer-Encoding: chunked, chunked"), "GET", "exactly 'chunked'"),
        (get("http://web.test/", "Transfer-Encoding: gzip, chunked"), "GET", "exactly 'chunked'"),
        (get("http://web.test/", "Transfer-Encoding: xchunked"), "GET", "exactly 'chunked'"),
        # CGI-style servers read these as Content-Length and Transfer-Encoding: the body would end elsewhere there.
        (get("http://web.test/", "Content_Length: 5"), "GET", "would take it for the body's framing"),
        (get("http://web.test/", "Content-Length: 0", "content_length: 40"), "GET", "for the body's framing"),
        (get("http://web.test/", "Transfer_Encoding: chunked"), "GET", "would take it for the body's framing"),
        (b"POST http://web.test/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "POST", "HTTP/1.0"),
        (b"CONNECT web.test:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", "CONNECT", "has no body"),
        (get("http://web.test/", "X: a", "\tobs-fold"), "GET", "header line 2 is malformed"),
    ],
)
async def test_anything_but_a_proxy_request_is_a_bad_request(
    start_proxy: Proxies, events: list[dict[str, object]], request_bytes: bytes, method: str, message: str
) -> None:
    resolver = FakeResolver({"web.test": ["127.0.0.1"]})
    rules = [Rule("web.test", 80, private=True), Rule("web.test", 443, private=True)]
    port, _ = await start_proxy(rules, resolver, dataclasses.replace(TEST_LIMITS, head_timeout_s=3600))
    # Refused at once, not at the head timeout: the client never closes and the timeout is an hour, so a proxy that
    # waited for more would fail the 60 s guard (and its refusal would name the timeout, not the request's fault).
    text = assert_refused(await exchange(port, request_bytes, timeout=60), 400, message)
    assert "no complete request head" not in text
    assert resolver.asked == []
    decision = only_decision(events)
    assert (decision["code"], decision["method"], decision["rule"], decision["address"]) == (
        "bad_request",
        method,
        None,
        None,
    )


async def test_head_limits(start_proxy: Proxies, events: list[dict[str, object]]) -> None:
    limits = ProxyLimits(head_bytes=1024, max_headers=3, head_timeout_s=0.2)
    port, _ = await start_proxy([Rule("other.test", 80)], FakeResolver({}), limits)
    oversized = get("http://web.test/", "X-Pad: " + "a" * 2000)
    assert_refused(await exchange(port, oversized), 400, "larger than 1024 bytes")
    just_fits = get("http://web.test/", "X-Pad: " + "a" * (1024 - len(get("http://web.test/", "X-Pad: "))))
    assert len(just_fits) == 1024
    assert_refused(await exchange(port, just_fits), 403, "not on the allowlist")
    headers = [f"X-{n}: {n}" for n in range(4)]
    assert_refused(await exchange(port, get("http://web.test/", *headers)), 400, "more than 3 header lines")
    assert_refused(await exchange(port, b"GET http://web.test/ HTTP/1.1\r\n"), 400, "no complete request head")
    assert [event["code"] for event in events] == ["bad_request", "not_allowed", "bad_request", "bad_request"]


async def test_a_head_full_of_blanks_is_parsed_quickly(
    upstream: Upstream, start_proxy: Proxies, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, _ = await start_proxy([Rule("127.0.0.1", upstream.port, private=True)])
    value = b" \t" * 2000 + b"a" + b" \t" * 2000 + b"b" + b" \t" * 2000  # within the 16 KiB head
    # Linear: the header pattern takes the whole value as it is, blanks and all, and bytes.strip trims it. Fails if
    # trimming moved into the pattern (a blank run before and after a lazy value backtracks quadratically), or if
    # a header line were matched more than once.
    whole = HEADER_LINE.fullmatch(b"X-Blank:" + value)
    assert whole is not None and whole[2] == value
    matched: list[int] = []
    monkeypatch.setattr(request_module, "HEADER_LINE", CountingPattern(HEADER_LINE, matched))
    blanks = get(f"http://127.0.0.1:{upstream.port}/", "X-Blank:" + value.decode())
    assert parse_response(await exchange(port, blanks, timeout=60))[0] == 200
    assert upstream.requests[0]["headers"][1] == ["X-Blank", "a" + " \t" * 2000 + "b"]
    assert sorted(matched) == sorted(len(line) for line in blanks.split(b"\r\n")[1:-2])


async def test_connections_without_a_request(start_proxy: Proxies, events: list[dict[str, object]]) -> None:
    port, _ = await start_proxy([])
    for sent in (b"", b"GET http://web.test/ HTTP/1.1\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        if not sent:
            assert answer == b""
            assert events == []
    assert_refused(answer, 400, "closed before the request head")
    assert [event["code"] for event in events] == ["bad_request"]


async def test_connect_to_a_rule_with_credentials_is_refused(
    start_proxy: Proxies, events: list[dict[str, object]]
) -> None:
    resolver = FakeResolver({"api.test": ["127.0.0.1"]})
    rule = Rule("api.test", 443, private=True, headers=(("X-Api-Key", "key-secret"),))
    port, _ = await start_proxy([rule], resolver)
    text = assert_refused(await exchange(port, b"CONNECT api.test:443 HTTP/1.1\r\n\r\n"), 403, "http://")
    assert "key-secret" not in text
    assert resolver.asked == []
    decision = only_decision(events)
    assert (decision["code"], decision["rule"]) == ("credentials_need_http", "api.test:443")
    assert "key-secret" not in json.dumps(events)


async def test_a_closed_port_is_a_connect_failure(start_proxy: Proxies, events: list[dict[str, object]]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    port, _ = await start_proxy([Rule("127.0.0.1", closed_port, private=True)])
    assert_refused(await exchange(port, get(f"http://127.0.0.1:{closed_port}/")), 502, "cannot connect")
    decision = only_decision(events)
    assert (decision["code"], decision["address"]) == ("connect_failed", "127.0.0.1")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "Name or service not known"),
        ([], "has no addresses"),
        (["not-an-address"], "cannot resolve"),
        (HANG, "timed out"),
    ],
)
async def test_resolve_failures(
    start_proxy: Proxies, events: list[dict[str, object]], answer: list[str] | str | OSError, message: str
) -> None:
    resolver = FakeResolver({"web.test": answer})
    port, _ = await start_proxy([Rule("web.test", 80)], resolver, ProxyLimits(resolve_timeout_s=0.2))
    assert_refused(await exchange(port, get("http://web.test/")), 502, message)
    assert resolver.asked == ["web.test"]
    decision = only_decision(events)
    assert (decision["code"], decision["address"], decision["rule"]) == ("resolve_failed", None, "web.test:80")


async def test_too_many_connections(upstream: Upstream, start_proxy: Proxies, events: list[dict[str, object]]) -> None:
    port, _ = await start_proxy([Rule("127.0.0.1", upstream.port, private=True)], limits=ProxyLimits(max_connections=1))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\n\r\n".encode())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert_refused(await exchange(port, get(f"http://127.0.0.1:{upstream.port}/")), 503, "connections at once")
    busy = events[-1]
    assert (busy["code"], busy["allowed"], busy["method"], busy["host"]) == ("too_many_connections", False, "", None)
    writer.close()
    deadline = time.monotonic() + TIMEOUT
    while parse_response(await exchange(port, get(f"http://127.0.0.1:{upstream.port}/")))[0] == 503:
        assert time.monotonic() < deadline, "the slot was never given back"
        await asyncio.sleep(0.01)
    assert events[-1]["code"] == "allowed"


async def test_an_idle_tunnel_is_closed(
    upstream: Upstream, start_proxy: Proxies, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = ProxyLimits(idle_timeout_s=0.2)
    port, _ = await start_proxy([Rule("127.0.0.1", upstream.port, private=True)], limits=limits)
    waits: list[tuple[float, object]] = []
    wait_for_server = proxy_module.server_first

    async def recorded(client: Any, upstream_reader: asyncio.StreamReader, timeout: float) -> Any:
        answer = await wait_for_server(client, upstream_reader, timeout)
        waits.append((timeout, answer))
        return answer

    monkeypatch.setattr(proxy_module, "server_first", recorded)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\n\r\n".encode() + ssl_client_hello(None))
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert await asyncio.wait_for(reader.read(), 60) == b""  # the 60 s only guards a tunnel never closed
    finally:
        writer.close()
    # Closed by the idle wait: the upstream never answers a hello and the client stays, so the wait for the server
    # ran with the idle limit and ended with no answer. Fails if the tunnel closed some other way or with another limit.
    assert waits == [(0.2, None)]


async def test_a_reset_client_ends_its_tunnel(upstream: Upstream, start_proxy: Proxies) -> None:
    port, _ = await start_proxy([Rule("127.0.0.1", upstream.port, private=True)])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\n\r\n".encode())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    writer.write(ssl_client_hello(None) + b"\x17\x03\x03\x01\x00half a record")
    await writer.drain()
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # a reset, not an orderly end
    await asyncio.wait_for(upstream.ended.wait(), 1.0)


async def run_module(tmp_path: Path) -> asyncio.subprocess.Process:
    """``python -m runner.egress`` with no site-packages and an empty ``runner`` package: the standard library only."""
    package = tmp_path / "runner"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    if not (package / "egress").exists():
        (package / "egress").symlink_to(ROOT / "runner" / "egress")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-S",
        "-E",
        "-B",
        "-m",
        "runner.egress",
        cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_event(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
    assert line.endswith(b"\n") and b": " not in line, line
    event: dict[str, Any] = json.loads(line)
    return event


async def test_the_module_serves_a_config_from_stdin(upstream: Upstream, tmp_path: Path) -> None:
    process = await run_module(tmp_path)
    assert process.stdin is not None
    try:
        rule = {"host": "127.0.0.1", "port": upstream.port, "private": True, "headers": [["X-Api-Key", "k-secret"]]}
        config = {"listen_host": "127.0.0.1", "listen_port": 0, "rules": [rule], "limits": {"idle_timeout_s": 2}}
        process.stdin.write(json.dumps(config).encode() + b"\n")
        ready = await read_event(process)
        assert ready["type"] == "ready" and isinstance(ready["port"], int) and ready["port"] > 0
        status, _, _ = parse_response(await exchange(ready["port"], get(f"http://127.0.0.1:{upstream.port}/sub")))
        assert status == 200
        assert ["X-Api-Key", "k-secret"] in upstream.requests[0]["headers"]
        decision = await read_event(process)
        assert set(decision) == DECISION_KEYS
        assert (decision["code"], decision["method"], decision["port"]) == ("allowed", "GET", upstream.port)
        process.stdin.close()
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (b"{not json\n", "not valid JSON"),
        (b'{"rules": [{"host": "bad host", "port": 80}]}\n', "rules[0]"),
        (b'{"rules": [], "limits": {"max_connections": 0}}\n', "max_connections"),
        (b"", "no config line"),
    ],
)
async def test_the_module_rejects_a_bad_config(tmp_path: Path, stdin: bytes, message: str) -> None:
    process = await run_module(tmp_path)
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(stdin), TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 2
    event = json.loads(stdout)
    assert event["type"] == "error" and message in event["message"]


class _ListSink:
    """Stands in for the upstream's StreamWriter: keeps what is written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


def _buffered(data: bytes) -> Buffered:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return Buffered(reader, b"")


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=600)
    | st.builds(
        lambda cut, junk: client_hello(sni(b"web.test"))[:cut] + junk, st.integers(0, 80), st.binary(max_size=40)
    )
)
def test_the_client_hello_reader_refuses_any_bytes_only_with_a_value_error(data: bytes) -> None:
    """Whatever a sandbox sends into a tunnel, the reader answers a name, no name or ValueError, nothing else."""

    async def read() -> None:
        with contextlib.suppress(ValueError):
            records, name = await read_client_hello(_buffered(data))
            assert data.startswith(records) and (name is None or isinstance(name, str))

    asyncio.run(read())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=50), max_size=6), st.binary(max_size=30))
def test_a_chunked_body_is_forwarded_canonically_and_nothing_after_it(chunks: list[bytes], after: bytes) -> None:
    sent = b"".join(b"%X;x=y\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\nT: v\r\n\r\n" + after
    sink = _ListSink()

    async def forward() -> None:
        await forward_body(_buffered(sent), sink, CHUNKED, lambda: None)  # type: ignore[arg-type]

    asyncio.run(forward())
    assert bytes(sink.data) == b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
