"""The server name (SNI) a TLS ClientHello asks for: what a CONNECT tunnel's first bytes must name.

A CONNECT is allowed for one ``host:port``, but a TLS client names the server it
wants inside its ClientHello, and a shared front end (a CDN, a reverse proxy)
routes by that name: without this check a tunnel allowed to one host reaches
every other name served at the same address (domain fronting). Standard
library only: this runs in the egress image.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

#: The most the proxy reads to find a ClientHello. Real ones are well under this
#: (post-quantum key shares bring them to ~2 KiB); a hello spread over many
#: records is still read whole, up to this many bytes in all.
MAX_HELLO_BYTES = 1 << 15

#: A fatal ``access_denied`` alert: tells a TLS client why its tunnel closed.
ACCESS_DENIED_ALERT = bytes([21, 3, 3, 0, 2, 2, 49])

_HANDSHAKE_RECORD = 22
_CLIENT_HELLO = 1
_SERVER_NAME_EXTENSION = 0
_HOST_NAME = 0
_MAX_FRAGMENT = 1 << 14


class Source(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


async def read_client_hello(source: Source) -> tuple[bytes, str | None]:
    """The TLS records that carry the ClientHello, as read, and the name it asks for (None: no SNI).

    ValueError when the bytes are not a well-formed ClientHello: a tunnel that
    does not start with one carries something the proxy cannot check.
    """
    raw = bytearray()
    message = bytearray()
    try:
        while True:
            header = await source.readexactly(5)
            length = int.from_bytes(header[3:5], "big")
            if header[0] != _HANDSHAKE_RECORD or header[1] != 3 or not 0 < length <= _MAX_FRAGMENT:
                raise ValueError("the tunnel does not start with a TLS handshake record")
            if len(raw) + 5 + length > MAX_HELLO_BYTES:
                raise ValueError(f"the TLS ClientHello is larger than {MAX_HELLO_BYTES} bytes")
            fragment = await source.readexactly(length)
            raw += header + fragment
            message += fragment
            if len(message) < 4:
                continue
            if message[0] != _CLIENT_HELLO:
                raise ValueError("the first TLS handshake message is not a ClientHello")
            end = 4 + int.from_bytes(message[1:4], "big")
            if len(message) > end:
                # Nothing may follow a ClientHello before the server answers it.
                raise ValueError("the TLS records carry more than the ClientHello")
            if len(message) == end:
                return bytes(raw), server_name(bytes(message[4:]))
    except asyncio.IncompleteReadError:
        raise ValueError("the tunnel closed before its TLS ClientHello was complete") from None


class _Cursor:
    """Reads a ClientHello body front to back; every length is checked against what is left."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def done(self) -> bool:
        return self._pos == len(self._data)

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise ValueError("the TLS ClientHello is truncated or its lengths disagree")
        self._pos += n
        return self._data[self._pos - n : self._pos]

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def rest(self) -> bytes:
        return self.take(len(self._data) - self._pos)

    def vector(self, size: int) -> _Cursor:
        """The next ``size``-byte length prefix and what it covers."""
        return _Cursor(self.take(self.number(size)))


def server_name(hello: bytes) -> str | None:
    """The host_name in a ClientHello body's server_name extension; None without the extension.

    Strict (ValueError) wherever two readers could disagree: duplicate
    extensions, more than one host_name, trailing bytes.
    """
    body = _Cursor(hello)
    body.take(2 + 32)  # legacy_version, random
    body.vector(1)  # legacy_session_id
    body.vector(2)  # cipher_suites
    body.vector(1)  # legacy_compression_methods
    if body.done():
        return None  # no extensions at all (an old client): no SNI
    extensions = body.vector(2)
    if not body.done():
        raise ValueError("the TLS ClientHello has bytes after its extensions")
    seen: set[int] = set()
    name: str | None = None
    while not extensions.done():
        kind = extensions.number(2)
        data = extensions.vector(2)
        if kind in seen:
            raise ValueError(f"the TLS ClientHello repeats extension {kind}")
        seen.add(kind)
        if kind == _SERVER_NAME_EXTENSION:
            name = _host_name(data)
    return name


def _host_name(data: _Cursor) -> str:
    names = data.vector(2)
    if not data.done() or names.done():
        raise ValueError("the TLS server_name extension is malformed")
    found: list[bytes] = []
    while not names.done():
        kind = names.number(1)
        value = names.vector(2).rest()
        if kind == _HOST_NAME:
            found.append(value)
    if len(found) != 1 or not found[0]:
        raise ValueError("the TLS server_name extension must name exactly one host")
    # latin-1 keeps every byte: a non-ASCII name then simply names no allowed host.
    return found[0].decode("latin-1")
