"""What the agent reads from a remote (Streamable HTTP) server, bounded like a stdio server's lines.

The SDK reads a JSON answer whole (``response.aread()``, however long) and caps
a server-sent event at its own default (1 MiB), not at the host's cap; either
way a remote server could cost the agent its memory, or end a call with an
error that does not name the cap. `CappedTransport` sits under the SDK's HTTP
client and counts each answer's bytes as they arrive: a JSON body, or one
server-sent event, past ``max_bytes`` calls ``on_too_large`` (the agent then
reports the cap and ends) and the read fails, so nothing past the cap is kept.

Answers must come uncompressed (the client asks for ``identity``): a few KiB of
gzip can inflate to gigabytes inside the HTTP library, past any count here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx2

from .words import whole_words

#: Asked of every remote server: counting the bytes on the wire then counts what the SDK will hold.
ACCEPT_IDENTITY = {"accept-encoding": "identity"}


class CappedTransport(httpx2.AsyncBaseTransport):
    """``inner`` with every answer's body (JSON) or each of its events (``text/event-stream``) capped."""

    def __init__(
        self,
        inner: httpx2.AsyncBaseTransport,
        max_bytes: int,
        on_too_large: Callable[[], None],
        on_violation: Callable[[str], None],
    ) -> None:
        self._inner = inner
        self._max = max_bytes
        self._on_too_large = on_too_large
        self._on_violation = on_violation

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        coding = response.headers.get("content-encoding", "").strip().lower()
        if coding not in ("", "identity"):
            await response.aclose()
            shown = whole_words(coding, 40)  # the server's words, for the host's sanitizer: never part of one
            message = f"the remote MCP server sent a compressed answer (Content-Encoding: {shown}), unasked"
            self._on_violation(message)
            raise httpx2.RemoteProtocolError(message, request=request)
        events = response.headers.get("content-type", "").strip().lower().startswith("text/event-stream")
        assert isinstance(response.stream, httpx2.AsyncByteStream), "an async transport answers with async streams"
        response.stream = _CappedStream(response.stream, _EventSize() if events else _BodySize(), self)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()

    def over(self, size: int, request: httpx2.Request | None = None) -> None:
        """Past the cap: the agent hears of it first, then the read fails."""
        if size > self._max:
            self._on_too_large()
            raise httpx2.ReadError(f"the remote MCP server's answer passed the {self._max} byte cap", request=request)


class _BodySize:
    """A whole body is one message."""

    def __init__(self) -> None:
        self.size = 0

    def add(self, chunk: bytes) -> int:
        self.size += len(chunk)
        return self.size


class _EventSize:
    """Bytes of the server-sent event in progress: an event ends at an empty line.

    Two line ends in a row end it, whichever of CR, LF and CRLF each is: any pair of
    CR/LF bytes but CR followed by LF (one CRLF line end). The last byte of the
    previous chunk is kept, so a pair split across chunks is seen too.
    """

    def __init__(self) -> None:
        self.size = 0
        self._tail = b""

    def add(self, chunk: bytes) -> int:
        data = self._tail + chunk
        end = max(data.rfind(b"\n\n"), data.rfind(b"\r\r"), data.rfind(b"\n\r"))
        self.size = len(data) - end - 2 if end >= 0 else self.size + len(chunk)
        self._tail = chunk[-1:] or self._tail
        return self.size


class _CappedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, counter: _BodySize | _EventSize, owner: CappedTransport) -> None:
        self._inner = inner
        self._counter = counter
        self._owner = owner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._owner.over(self._counter.add(chunk))
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
