"""HTTP forwarding and CONNECT tunnels to allowlisted ``host:port`` only.

This is the single route out of a networked sandbox. It resolves names itself
and connects only to the addresses it has just checked, so a sandbox can
neither reach a name nobody allowed nor steer an allowed name to an internal
address (DNS rebinding). Every request ends in exactly one decision event
(a tunnel whose retried TLS hello is refused adds a second), which the host
records: the proxy's stdout is the audit trail.

It forwards only what it decided on: one request per connection (framing.py),
ordinary methods only (an echoing method such as TRACE would hand a rule's
credential back to the sandbox; request.py), and inside a CONNECT tunnel only
TLS whose ClientHello names the host the tunnel was allowed for (tls.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence

from runner.egress.framing import Buffered, discard, forward_body, relay_response
from runner.egress.request import (
    NOT_HTTP,
    REQUEST_LINE,
    REQUEST_PREFIX,
    Attempt,
    Refusal,
    Request,
    bad,
    host_port,
    parse_head,
    rewrite_head,
)
from runner.egress.rules import IPAddress, ProxyLimits, Rule, address_refusal, first_match, ip_literal
from runner.egress.tls import ACCESS_DENIED_ALERT, HelloRefused, checked_hello, server_first

__all__ = ["EgressProxy", "ProxyLimits"]

Emit = Callable[[dict[str, object]], None]
Resolver = Callable[[str, int], Awaitable[list[str]]]
_Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Touch = Callable[[], None]
_Direction = Callable[[Touch], Coroutine[object, object, None]]

_DEFAULT_LIMITS = ProxyLimits()
_CHUNK = 65536
_CLIP = 255
_REPLY_TIMEOUT_S = 5.0
# After a refusal, read what the client still sends for a moment: closing a
# socket with unread input resets it, and the client would lose the reply.
_LINGER_S = 1.0
_LINGER_BYTES = 1 << 20
_STATUS = {
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _clip(text: str) -> str:
    """Client-supplied text made safe for a log line and a one-line reply: at most ``_CLIP`` characters, cut in
    whole words. A cut through a word leaves part of it, and part of a secret the sandbox put in a host name is
    one the host's sanitizer no longer recognizes in the decision it records and logs."""
    if len(text) > _CLIP:
        head = text[:_CLIP]
        text = head if text[_CLIP] == " " else head[: head.rfind(" ") + 1]
        text += "..."
    return "".join(c if c.isprintable() else "?" for c in text)


def _describe(exc: BaseException) -> str:
    return "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)


async def _system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class EgressProxy:
    """Serves the allowlist; one request per client connection, one decision per request."""

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        emit: Emit,
        resolver: Resolver | None = None,
        limits: ProxyLimits = _DEFAULT_LIMITS,
    ) -> None:
        self._rules = tuple(rules)
        self._emit = emit
        self._resolve = resolver or _system_resolve
        self._limits = limits
        self._active = 0
        self._servers: list[asyncio.Server] = []
        self._handlers: set[asyncio.Task[object]] = set()

    async def serve(self, host: str, port: int) -> asyncio.Server:
        server = await asyncio.start_server(self._handle_client, host, port)
        self._servers.append(server)
        return server

    async def close(self) -> None:
        """Stop listening and end every open connection."""
        for server in self._servers:
            server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    async def _handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        attempt = Attempt()
        try:
            if self._active >= self._limits.max_connections:
                busy = f"more than {self._limits.max_connections} connections at once; try again later"
                await self._refuse(reader, writer, attempt, Refusal(503, "too_many_connections", busy))
                return
            self._active += 1
            try:
                await self._handle_request(reader, writer, attempt)
            finally:
                self._active -= 1
        except asyncio.CancelledError:
            pass  # close(): end normally, as Python 3.11's stream callback reports a cancelled handler as an error
        except Exception as exc:
            print(f"mcp-runner egress: connection ended by {exc!r}", file=sys.stderr)
        finally:
            await _close(writer)
            if task is not None:
                self._handlers.discard(task)

    async def _handle_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, attempt: Attempt
    ) -> None:
        try:
            head = await self._read_head(reader)
            if head is None:
                return  # closed before sending a byte: no request, no decision
            request = parse_head(head[0], attempt, self._limits.max_headers)
            rule = first_match(self._rules, request.host, request.port)
            if rule is None:
                where = host_port(request.host, request.port)
                fix = "add it to the profile's network.egress"
                raise Refusal(403, "not_allowed", f"{where} is not on the allowlist; {fix}")
            attempt.rule = rule.label()
            if request.method == "CONNECT" and rule.headers:
                why = "it cannot add them inside a TLS tunnel: request http:// URLs so the proxy can add them"
                raise Refusal(403, "credentials_need_http", f"{rule.label()} has credentials; {why}")
            addresses = await self._addresses(request, rule, attempt)
            up_reader, up_writer = await self._connect(addresses, request, attempt)
        except Refusal as refusal:
            await self._refuse(reader, writer, attempt, refusal)
            return
        client = Buffered(reader, head[1])
        allowed = f"allowed by rule {rule.label()}, connected to {attempt.address}"
        try:
            if request.method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if await self._open_tunnel(client, writer, (up_reader, up_writer), request.host, attempt, allowed):
                    await self._tunnel(client, writer, up_reader, up_writer)
            else:
                self._decide(attempt, "allowed", allowed)
                up_writer.write(rewrite_head(request, rule))
                await self._forward(request, client, writer, up_reader, up_writer)
        finally:
            await _close(up_writer)

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
        """The request head (without its final CRLFCRLF) and whatever the client sent after it."""
        limit = self._limits.head_bytes
        buf = bytearray()
        try:
            async with asyncio.timeout(self._limits.head_timeout_s):
                while chunk := await reader.read(_CHUNK):
                    start = max(0, len(buf) - 3)
                    buf += chunk
                    eol = buf.find(b"\r\n")
                    pattern, line = (REQUEST_PREFIX, buf) if eol < 0 else (REQUEST_LINE, buf[:eol])
                    if not pattern.fullmatch(line):
                        raise bad(NOT_HTTP)
                    end = buf.find(b"\r\n\r\n", start)
                    if 0 <= end <= limit - 4:
                        return bytes(buf[:end]), bytes(buf[end + 4 :])
                    if end >= 0 or len(buf) >= limit:
                        raise bad(f"the request head is larger than {limit} bytes")
        except TimeoutError:
            raise bad(f"no complete request head within {self._limits.head_timeout_s:g} s") from None
        except OSError as exc:
            raise bad(f"the connection broke while sending the request head: {_describe(exc)}") from None
        if buf:
            raise bad("the connection closed before the request head was complete")
        return None

    async def _addresses(self, request: Request, rule: Rule, attempt: Attempt) -> list[IPAddress]:
        """The checked addresses to try, in order: the only ones ever connected to."""
        literal = ip_literal(request.host)
        if literal is not None:
            candidates = [literal]
        else:
            try:
                async with asyncio.timeout(self._limits.resolve_timeout_s):
                    names = await self._resolve(request.host, request.port)
                candidates = list(dict.fromkeys(ipaddress.ip_address(name) for name in names))
            except Exception as exc:
                raise Refusal(502, "resolve_failed", f"cannot resolve {request.host}: {_describe(exc)}") from None
            if not candidates:
                raise Refusal(502, "resolve_failed", f"{request.host} has no addresses")
        if not rule.private:
            for address in candidates:
                kind = address_refusal(address)
                if kind is not None:
                    attempt.address = str(address)
                    reason = f"{kind} address {address} refused for {request.host}: the rule is not private"
                    raise Refusal(403, "refused_address", reason)
        return candidates

    async def _connect(
        self, addresses: list[IPAddress], request: Request, attempt: Attempt
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        failure = ""
        for address in addresses:
            attempt.address = str(address)
            try:
                async with asyncio.timeout(self._limits.connect_timeout_s):
                    return await asyncio.open_connection(str(address), request.port, flags=socket.AI_NUMERICHOST)
            except OSError as exc:
                failure = _describe(exc)
        where = host_port(request.host, request.port)
        raise Refusal(502, "connect_failed", f"cannot connect to {where}: {failure}")

    async def _open_tunnel(
        self,
        client: Buffered,
        writer: asyncio.StreamWriter,
        upstream: _Streams,
        host: str,
        attempt: Attempt,
        allowed: str,
    ) -> bool:
        """Check the ClientHello (and a retried one) before anything else crosses; False when the tunnel ends."""
        try:
            upstream[1].write(await checked_hello(client, host, self._limits.head_timeout_s))
            self._decide(attempt, "allowed", f"{allowed}; TLS server name checked")
            answer = await server_first(client, upstream[0], self._limits.idle_timeout_s)
            if answer is None:
                return False
            writer.write(answer[0])
            if answer[1]:
                upstream[1].write(await checked_hello(client, host, self._limits.head_timeout_s, retried=True))
            return True
        except HelloRefused as refusal:
            # A refused retry follows the first hello's allowed decision: that one request then has two.
            self._decide(attempt, refusal.code, str(refusal))
            if refusal.code != "not_tls":  # a TLS client: tell it why, in TLS
                writer.write(ACCESS_DENIED_ALERT)
            return False

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, attempt: Attempt, refusal: Refusal
    ) -> None:
        self._decide(attempt, refusal.code, refusal.reason)
        try:
            async with asyncio.timeout(_REPLY_TIMEOUT_S):
                writer.write(_reply(refusal.status, refusal.reason, refusal.headers))
                await writer.drain()
                writer.write_eof()
            received = 0
            async with asyncio.timeout(_LINGER_S):
                while received < _LINGER_BYTES and (chunk := await reader.read(_CHUNK)):
                    received += len(chunk)
        except OSError:
            return

    def _decide(self, attempt: Attempt, code: str, reason: str) -> None:
        self._emit(
            {
                "type": "decision",
                "time": time.time(),
                "method": _clip(attempt.method),
                "host": None if attempt.host is None else _clip(attempt.host),
                "port": attempt.port,
                "address": None if attempt.address is None else _clip(attempt.address),
                "rule": attempt.rule,
                "allowed": code == "allowed",
                "code": code,
                "reason": _clip(reason),
            }
        )

    async def _tunnel(
        self,
        client: Buffered,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        await self._pipe(
            lambda touch: _copy(client, up_writer, touch), lambda touch: _copy(up_reader, writer, touch), tunnel=True
        )

    async def _forward(
        self,
        request: Request,
        client: Buffered,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """The request's body up, the answer down; anything the client sends after the body goes nowhere."""

        async def upload(touch: Touch) -> None:
            await up_writer.drain()
            await forward_body(client, up_writer, request.body, touch)
            await discard(client, _LINGER_BYTES)

        async def download(touch: Touch) -> None:
            try:
                await relay_response(
                    up_reader, writer, touch, http_1_0=request.version == "1.0", head_request=request.method == "HEAD"
                )
            except ValueError as exc:
                writer.write(_reply(502, str(exc)))

        await self._pipe(upload, download, tunnel=False)

    async def _pipe(self, upload: _Direction, download: _Direction, *, tunnel: bool) -> None:
        """Run both directions until both are done (a tunnel) or the download is (HTTP), or nothing moves."""
        loop = asyncio.get_running_loop()
        last_data = loop.time()

        def touch() -> None:
            nonlocal last_data
            last_data = loop.time()

        up = asyncio.create_task(upload(touch))
        down = asyncio.create_task(download(touch))
        pending: set[asyncio.Task[None]] = {up, down}
        try:
            while pending:
                remaining = last_data + self._limits.idle_timeout_s - loop.time()
                if remaining <= 0:
                    break
                done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if any(task.exception() is not None for task in done) or (down in done and not tunnel):
                    break
        finally:
            up.cancel()
            down.cancel()
            await asyncio.gather(up, down, return_exceptions=True)


async def _copy(source: Buffered | asyncio.StreamReader, sink: asyncio.StreamWriter, touch: Touch) -> None:
    await sink.drain()
    while chunk := await source.read(_CHUNK):
        touch()
        sink.write(chunk)
        await sink.drain()
    if sink.can_write_eof():
        sink.write_eof()


def _reply(status: int, reason: str, headers: str = "") -> bytes:
    """The proxy's own one-line plain-text answer; it ends the connection."""
    body = f"mcp-runner egress: {_clip(reason)}\n".encode()
    head = (
        f"HTTP/1.1 {status} {_STATUS[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n{headers}Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(_REPLY_TIMEOUT_S):
            await writer.wait_closed()
    except OSError:
        writer.transport.abort()
