"""The server name (SNI) a TLS ClientHello asks for: what a CONNECT tunnel's first bytes must name.

A CONNECT is allowed for one ``host:port``, but a TLS client names the server it
wants inside its ClientHello, and a shared front end (a CDN, a reverse proxy)
routes by that name: without this check a tunnel allowed to one host reaches
every other name served at the same address (domain fronting). A hello the
server asks to retry (HelloRetryRequest) is checked again, and a hello that
carries an encrypted inner hello (ECH, or the older ESNI) is refused: the front
end routes by the inner name, which the proxy cannot read. Standard library
only: this runs in the egress image.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from runner.egress.rules import ip_literal

#: The most the proxy reads to find a ClientHello. Real ones are well under this
#: (post-quantum key shares bring them to ~2 KiB); a hello spread over many
#: records is still read whole, up to this many bytes in all.
MAX_HELLO_BYTES = 1 << 15

#: A fatal ``access_denied`` alert: tells a TLS client why its tunnel closed.
ACCESS_DENIED_ALERT = bytes([21, 3, 3, 0, 2, 2, 49])

_CHANGE_CIPHER_SPEC = bytes([20, 3, 3, 0, 1, 1])
_HANDSHAKE_RECORD = 22
# The ServerHello.random that marks a HelloRetryRequest (RFC 8446, section 4.1.3).
_RETRY_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
_CLIENT_HELLO = 1
_SERVER_NAME_EXTENSION = 0
_HOST_NAME = 0
# encrypted_client_hello (RFC 9849; drafts 8 to 13 used 0xfe08-0xfe0d) and encrypted_server_name (ESNI drafts).
# A front end that accepts one routes by the encrypted inner name, so the outer
# name may be the allowed host while the tunnel reaches any other. A GREASE ECH
# extension (Chrome sends one) looks the same by design, so it is refused too.
_ENCRYPTED_NAME_EXTENSIONS = frozenset({*range(0xFE08, 0xFE0E), 0xFFCE})
_MAX_FRAGMENT = 1 << 14
# What a client may send after its ClientHello before the server answers (TLS early data), read ahead.
_EARLY_BYTES = 1 << 16
_TLS_ONLY = "a tunnel carries TLS only; send plain HTTP as http:// URLs"


class HelloRefused(Exception):
    """Why a tunnel is closed: ``code`` is sni_missing, sni_mismatch, sni_hidden or not_tls."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class HiddenName(ValueError):
    """A well-formed ClientHello whose real server name is encrypted (ECH/ESNI)."""


class Source(Protocol):
    async def readexactly(self, n: int) -> bytes: ...

    async def peek(self, n: int) -> bytes: ...


async def checked_hello(source: Source, host: str, timeout: float, *, retried: bool = False) -> bytes:
    """The TLS records of a ClientHello that names ``host``, the CONNECT's normalised host; else HelloRefused.

    A CONNECT to an IP literal expects no server name (RFC 6066 forbids an
    address there, and clients send none): a hello without one passes, one
    that names any other host is refused like a mismatch.
    """
    try:
        async with asyncio.timeout(timeout):
            records, name = await read_client_hello(source, retried=retried)
    except TimeoutError:
        raise HelloRefused("not_tls", f"no TLS ClientHello within {timeout:g} s: {_TLS_ONLY}") from None
    except HiddenName as exc:
        raise HelloRefused("sni_hidden", f"{exc}; it must name {host} in the clear") from None
    except ValueError as exc:
        raise HelloRefused("not_tls", f"{exc}: {_TLS_ONLY}") from None
    except OSError as exc:
        raise HelloRefused("not_tls", f"the connection broke before the TLS ClientHello: {exc}") from None
    if name is None:
        if ip_literal(host) is not None:
            return records
        raise HelloRefused("sni_missing", f"the TLS ClientHello names no server; it must name {host}")
    if name.lower().removesuffix(".") != host:
        raise HelloRefused(
            "sni_mismatch", f"the TLS ClientHello names {name!r}, not {host}, the host this tunnel was allowed for"
        )
    return records


async def server_first(client: Source, upstream: asyncio.StreamReader, timeout: float) -> tuple[bytes, bool] | None:
    """The server's first record and whether it asks for a retried hello; None if the tunnel ends first.

    The client's further bytes (early data at most) wait until the server has
    answered, so that a retried ClientHello can still be checked before it
    crosses; the tunnel ends when the client leaves or nothing moves.
    """
    server = asyncio.ensure_future(read_server_first(upstream))
    # Read ahead (not forwarded yet) to notice a client that leaves: fewer bytes or an error then.
    client_left = asyncio.ensure_future(client.peek(_EARLY_BYTES))
    watched: set[asyncio.Future[Any]] = {server, client_left}
    try:
        async with asyncio.timeout(timeout):
            while not server.done():
                await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                if server.done() or client_left not in watched or not client_left.done():
                    continue
                if client_left.exception() is not None or len(client_left.result()) < _EARLY_BYTES:
                    return None
                watched.discard(client_left)  # that much early data: stop reading ahead
        return server.result()
    except (TimeoutError, OSError):
        return None
    finally:
        server.cancel()
        client_left.cancel()
        await asyncio.gather(server, client_left, return_exceptions=True)


async def read_client_hello(source: Source, *, retried: bool = False) -> tuple[bytes, str | None]:
    """The TLS records that carry the ClientHello, as read, and the name it asks for (None: no SNI).

    ValueError when the bytes are not a well-formed ClientHello: a tunnel that
    does not start with one carries something the proxy cannot check. A
    ``retried`` hello (the answer to a HelloRetryRequest) may follow a
    change_cipher_spec record (RFC 8446, appendix D.4), which is kept with it.
    """
    raw = bytearray()
    message = bytearray()
    try:
        if retried and await source.peek(len(_CHANGE_CIPHER_SPEC)) == _CHANGE_CIPHER_SPEC:
            raw += await source.readexactly(len(_CHANGE_CIPHER_SPEC))
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


async def read_server_first(source: asyncio.StreamReader) -> tuple[bytes, bool]:
    """The server's first TLS record, as read, and whether it is a HelloRetryRequest.

    After a retry request the client sends a second ClientHello, which must be
    checked like the first: otherwise a client names the allowed host, offers
    a key share the server will not take, and names another host in its retry.
    """
    try:
        header = await source.readexactly(5)
    except asyncio.IncompleteReadError as exc:
        return exc.partial, False  # the pipe that follows sees the end
    length = int.from_bytes(header[3:5], "big")
    if header[0] != _HANDSHAKE_RECORD or header[1] != 3 or length > _MAX_FRAGMENT:
        return header, False  # an alert or not TLS at all: no second hello is asked for
    try:
        payload = await source.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        return header + exc.partial, False
    # ServerHello: type 2, a 3-byte length, legacy_version, then the random.
    return header + payload, payload[:1] == b"\x02" and payload[6:38] == _RETRY_RANDOM


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
    extensions, more than one host_name, trailing bytes; HiddenName when an
    encrypted inner hello would name the server instead.
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
        if kind in _ENCRYPTED_NAME_EXTENSIONS:
            raise HiddenName(f"the TLS ClientHello carries an encrypted server name (extension {kind:#06x})")
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
