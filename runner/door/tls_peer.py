"""The verified client certificate of a TLS connection, handed to the door with each of that connection's requests.

uvicorn does not put the peer certificate in the ASGI scope. Its protocol object lives exactly as long as one
connection and calls the application it holds in ``self.app``; so this protocol, once the handshake is done (the
door's SSL context requires a client certificate and verifies it against ``client_ca`` before the protocol hears
of the connection), wraps that connection's application to add the certificate to every scope it serves. Nothing
is shared between connections: no table keyed by the client address (which uvicorn's proxy-header handling may
rewrite), nothing to clean up when the connection ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

SCOPE_PEER_CERTIFICATE = "mcp_runner.peer_certificate"
"""Scope key: the connection's verified client certificate as ``ssl.SSLObject.getpeercert()`` gives it; absent
without TLS or without a client certificate."""

PeerCertificate = Mapping[str, Any]


def peer_certificate(scope: Scope) -> PeerCertificate | None:
    certificate = scope.get(SCOPE_PEER_CERTIFICATE)
    return certificate if isinstance(certificate, Mapping) else None


class _WithPeerCertificate:
    """One connection's application: the door, told that connection's certificate."""

    def __init__(self, app: ASGIApp, certificate: PeerCertificate) -> None:
        self._app = app
        self._certificate = certificate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[SCOPE_PEER_CERTIFICATE] = self._certificate
        await self._app(scope, receive, send)


class PeerCertificateProtocol(H11Protocol):
    """uvicorn's h11 HTTP/1.1 protocol, whose requests carry their connection's verified client certificate."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        certificate = ssl_object.getpeercert() if ssl_object is not None else None
        if certificate:  # {} when the handshake verified no certificate: no caller is named by it
            self.app = _WithPeerCertificate(self.app, certificate)
