"""One HTTP request per client connection: its body forwarded exactly, its answer marked as the last.

The proxy checks and records the first request on a connection only, so that
request is all it forwards. Whatever follows its body (a pipelined second
request, smuggled bytes) is read and dropped, never sent upstream. Where a
body ends must be unambiguous (RFC 9112 section 6): conflicting or repeated
framing headers are refused, and a chunked body is forwarded re-encoded in
canonical form, so the upstream cannot find a second request where the proxy
saw none. Standard library only: this runs in the egress image.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterable

from runner.egress.rules import HOP_BY_HOP_HEADERS

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
#: One header line; an obs-fold continuation (a line starting with blanks) does not match.
HEADER_LINE = re.compile(rb"(" + _TCHAR + rb"+):(.*)")
BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

_CHUNK = 65536
_LINE_BYTES = 4096
_MAX_TRAILERS = 100
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
# chunk-size [ chunk-ext ] CRLF; extensions are checked for control bytes and then dropped.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;[\x09\x20-\x7e\x80-\xff]*)?\r\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [\x09\x20-\x7e\x80-\xff]*)?")
_FRAMING = frozenset({"content-length", "transfer-encoding"})

#: The body length of a request: a byte count, or CHUNKED.
CHUNKED = -1

Touch = Callable[[], None]


def request_body(method: str, version: str, headers: Iterable[tuple[str, str]]) -> int:
    """How the request's body is framed: its length (0: none) or CHUNKED; ValueError if that is ambiguous."""
    headers = list(headers)
    for name, _ in headers:
        # CGI, WSGI and PHP servers read '_' and '-' in a name alike: Content_Length could frame the body there.
        if name.lower() not in _FRAMING and name.lower().replace("_", "-") in _FRAMING:
            raise ValueError(f"header {name}: a server that reads '_' as '-' would take it for the body's framing")
    lengths = [value for name, value in headers if name.lower() == "content-length"]
    codings = [value for name, value in headers if name.lower() == "transfer-encoding"]
    if lengths and codings:
        raise ValueError("both Content-Length and Transfer-Encoding: where the body ends would be ambiguous")
    if len(lengths) > 1 or len(codings) > 1:
        raise ValueError("more than one Content-Length or Transfer-Encoding header")
    if codings:
        if version == "1.0":
            raise ValueError("Transfer-Encoding in an HTTP/1.0 request")
        if codings[0].lower() != "chunked":
            raise ValueError("Transfer-Encoding must be exactly 'chunked'")
        length = CHUNKED
    elif lengths:
        if not _CONTENT_LENGTH.fullmatch(lengths[0]):
            raise ValueError("Content-Length must be a decimal number")
        length = int(lengths[0])
    else:
        length = 0
    if method == "CONNECT" and length != 0:
        raise ValueError("a CONNECT request has no body")
    return length


def hop_by_hop(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Lower-case names a proxy must not forward: the standard ones and those Connection names."""
    named = {
        token.strip().lower() for name, value in headers if name.lower() == "connection" for token in value.split(",")
    }
    # Connection may name hop-by-hop headers, but never the body's framing.
    return set(HOP_BY_HOP_HEADERS | named) - _FRAMING


class Buffered:
    """A client's stream with the bytes already read past the request head put back in front."""

    def __init__(self, reader: asyncio.StreamReader, pending: bytes) -> None:
        self._reader = reader
        self._pending = bytearray(pending)

    async def read(self, n: int) -> bytes:
        if self._pending:
            data = bytes(self._pending[:n])
            del self._pending[:n]
            return data
        return await self._reader.read(n)

    async def peek(self, n: int) -> bytes:
        """The next ``n`` bytes, left to be read; fewer only at the end of the stream."""
        while len(self._pending) < n and (chunk := await self._reader.read(_CHUNK)):
            self._pending += chunk
        return bytes(self._pending[:n])

    async def readexactly(self, n: int) -> bytes:
        if len(await self.peek(n)) < n:
            raise asyncio.IncompleteReadError(bytes(self._pending), n)
        data = bytes(self._pending[:n])
        del self._pending[:n]
        return data

    async def readline(self) -> bytes:
        """One line up to its LF (included); ValueError past a short cap, EOFError at the end."""
        while (end := self._pending.find(b"\n")) < 0:
            if len(self._pending) > _LINE_BYTES:
                raise ValueError(f"a line in the request body is longer than {_LINE_BYTES} bytes")
            chunk = await self._reader.read(_CHUNK)
            if not chunk:
                raise EOFError("the client closed in the middle of the request body")
            self._pending += chunk
        return await self.readexactly(end + 1)


async def forward_body(source: Buffered, sink: asyncio.StreamWriter, length: int, touch: Touch) -> None:
    """Send exactly the request's body upstream; ValueError or EOFError if the client breaks its framing."""
    if length == CHUNKED:
        await _forward_chunked(source, sink, touch)
    else:
        await _forward_exactly(source, sink, length, touch)


async def _forward_exactly(source: Buffered, sink: asyncio.StreamWriter, length: int, touch: Touch) -> None:
    while length > 0:
        chunk = await source.read(min(length, _CHUNK))
        if not chunk:
            raise EOFError("the client closed in the middle of the request body")
        touch()
        length -= len(chunk)
        sink.write(chunk)
        await sink.drain()


async def _forward_chunked(source: Buffered, sink: asyncio.StreamWriter, touch: Touch, *, framed: bool = True) -> None:
    """Re-encode a chunked body canonically; only its data when not ``framed`` (for a reader that ends at the close)."""
    while True:
        size_line = _CHUNK_LINE.fullmatch(await source.readline())
        if size_line is None:
            raise ValueError("a malformed chunk-size line in the request body")
        touch()
        size = int(size_line[1], 16)
        if framed:
            sink.write(b"%x\r\n" % size)
        if size == 0:
            break
        await _forward_exactly(source, sink, size, touch)
        if await source.readexactly(2) != b"\r\n":
            raise ValueError("a chunk of the request body does not end with CRLF")
        if framed:
            sink.write(b"\r\n")
    # Trailer fields are checked for framing, then dropped: one could carry a header a rule sets.
    for _ in range(_MAX_TRAILERS + 1):
        line = await source.readline()
        if line == b"\r\n":
            if framed:
                sink.write(b"\r\n")
            await sink.drain()
            return
        if not line.endswith(b"\r\n") or not HEADER_LINE.fullmatch(line[:-2]) or BAD_VALUE.search(line[:-2]):
            raise ValueError("a malformed trailer line in the request body")
    raise ValueError(f"more than {_MAX_TRAILERS} trailer lines in the request body")


async def discard(source: Buffered, limit: int) -> None:
    """Read and drop what the client sends after its request (up to ``limit`` bytes): none of it goes on.

    Reading it keeps the kernel from resetting the connection (and losing the
    answer) when the proxy closes a socket with unread input.
    """
    received = 0
    while received < limit and (chunk := await source.read(_CHUNK)):
        received += len(chunk)


async def relay_response(
    upstream: asyncio.StreamReader,
    client: asyncio.StreamWriter,
    touch: Touch,
    *,
    http_1_0: bool = False,
    head_request: bool = False,
) -> None:
    """Copy the upstream's answer to the client, its final head saying Connection: close.

    The answer ends where its own framing says when that is a Content-Length,
    chunked (re-encoded, as a request body is) or no body at all, not when the
    upstream closes: one that ignores Connection: close would hold the
    connection (and the client reading to the end) until the idle timeout, and
    what it sends past the answer is a second response nobody asked for.

    The request went upstream as HTTP/1.1, so the upstream may answer with what
    an HTTP/1.0 client does not know (RFC 9110, section 15.2; RFC 9112, section
    6.1): for one, interim (1xx) heads are dropped, as it would take one for the
    answer, and a chunked body goes as its data only, ending at the close.
    ValueError before the final head is written if the upstream does not
    answer with an HTTP/1.x head: the caller may then still answer 502.
    """
    while True:
        try:
            head = await upstream.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            raise ValueError("the upstream closed before answering") from None
        except asyncio.LimitOverrunError:
            raise ValueError("the upstream's answer head is too large") from None
        touch()
        status_line, status, headers = _parse_response_head(head[:-4])
        if status >= 200:
            break
        if not http_1_0:
            client.write(_response_head(status_line, status, headers, set()))
            await client.drain()
    remaining = _response_length(status, headers, head_request)
    dechunk = http_1_0 and remaining == CHUNKED
    client.write(_response_head(status_line, status, headers, {"transfer-encoding"} if dechunk else set()))
    await client.drain()
    if remaining == CHUNKED:
        # A broken chunked body is cut short there: the client sees it end early.
        with contextlib.suppress(ValueError, EOFError, asyncio.IncompleteReadError):
            await _forward_chunked(Buffered(upstream, b""), client, touch, framed=not dechunk)
        remaining = 0
    while remaining != 0 and (chunk := await upstream.read(_CHUNK if remaining is None else min(remaining, _CHUNK))):
        touch()
        if remaining is not None:
            remaining -= len(chunk)
        client.write(chunk)
        await client.drain()
    if client.can_write_eof():
        client.write_eof()


def _response_length(status: int, headers: list[tuple[str, str]], head_request: bool) -> int | None:
    """The final answer's body length, CHUNKED, or None when it runs until the upstream closes."""
    if head_request or status in (204, 304):
        return 0
    lengths = [value for name, value in headers if name.lower() == "content-length"]
    codings = [value for name, value in headers if name.lower() == "transfer-encoding"]
    if not lengths and len(codings) == 1 and codings[0].lower() == "chunked":
        return CHUNKED
    if codings or len(lengths) != 1 or not _CONTENT_LENGTH.fullmatch(lengths[0]):
        return None  # the client reads its framing, or up to the close, as the upstream sent it
    return int(lengths[0])


def _parse_response_head(head: bytes) -> tuple[str, int, list[tuple[str, str]]]:
    """The status line, the status and the header fields of an upstream's answer head."""
    lines = head.split(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise ValueError("the upstream's answer does not start with an HTTP/1.x status line")
    status = int(status_line[1])
    if status == 101:
        raise ValueError("the upstream switched protocols, which the proxy never asked it to")
    headers: list[tuple[str, str]] = []
    for raw in lines[1:]:
        header = HEADER_LINE.fullmatch(raw)
        if header is None or BAD_VALUE.search(header[2]):
            raise ValueError("the upstream's answer has a malformed header line")
        headers.append((header[1].decode("ascii"), header[2].strip(b" \t").decode("latin-1")))
    return status_line[0].decode("latin-1"), status, headers


def _response_head(status_line: str, status: int, headers: list[tuple[str, str]], also_dropped: set[str]) -> bytes:
    """The head the client sees: no hop-by-hop headers, and a final head ends the connection."""
    dropped = hop_by_hop(headers) | also_dropped
    kept = [f"{name}: {value}" for name, value in headers if name.lower() not in dropped]
    final = ["Connection: close"] if status >= 200 else []
    out = [status_line, *kept, *final]
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
