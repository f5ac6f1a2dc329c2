"""``HOST:PORT`` addresses people write (``listen:``, ``mcp_http.listen``, ``--listen``, ``--address``), checked
before anything binds or dials them, so a wrong one is refused naming its port or host rather than reported
later as a bind failure or "no service is listening"; and quoted capped, since a value may be megabytes.
"""

from __future__ import annotations

import ipaddress
import re

_HOST = re.compile(r"[A-Za-z0-9_.-]{1,253}", re.ASCII)
"""A host name or an IPv4 address; an IPv6 address goes in brackets."""
QUOTE_LIMIT = 80
EXAMPLE = "e.g. 127.0.0.1:50051, localhost:50051 or [::1]:50051"
GRPC_SOCKET_PREFIXES = ("unix:", "unix-abstract:")
"""Listen addresses gRPC takes besides HOST:PORT: a Unix socket's path, or an abstract socket's name."""
GRPC_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "vsock:", *GRPC_SOCKET_PREFIXES)
"""Targets a gRPC client takes besides HOST:PORT, by their scheme."""


def quoted(text: str) -> str:
    """``text`` as Python quotes it, cut to its first ``QUOTE_LIMIT`` characters (saying so)."""
    if len(text) <= QUOTE_LIMIT:
        return repr(text)
    return f"{text[:QUOTE_LIMIT]!r}… ({len(text)} characters)"


def capped(text: str) -> str:
    """``text`` as it is when short; else its first ``QUOTE_LIMIT`` characters, quoted, saying how long it was."""
    return text if len(text) <= QUOTE_LIMIT else quoted(text)


def host_port(value: str, what: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` or ``[IPv6]:PORT``; ValueError naming ``what`` and what is wrong."""
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        colon, port_text = rest[:1], rest[1:]
        if not bracket or colon != ":" or not _is_ipv6(host):
            raise ValueError(f"{what} {quoted(value)} is not HOST:PORT ({EXAMPLE})")
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon or ":" in host:
            raise ValueError(f"{what} {quoted(value)} is not HOST:PORT ({EXAMPLE}; an IPv6 address goes in brackets)")
        if not _HOST.fullmatch(host):
            raise ValueError(f"{what} {quoted(value)}: the host {quoted(host)} is not a host name or IP address "
                             f"(HOST:PORT, {EXAMPLE})")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"{what} {quoted(value)}: the port {quoted(port_text)} is not a port (0 to 65535)")
    return host, int(port_text)


def grpc_listen(value: str, what: str) -> str:
    """``value`` if gRPC can listen there (HOST:PORT, or a ``unix:``/``unix-abstract:`` socket); ValueError else."""
    if value.startswith(GRPC_SOCKET_PREFIXES) and value.split(":", 1)[1]:
        return value
    host_port(value, what)
    return value


def grpc_target(value: str, what: str) -> str:
    """``value`` if a gRPC client may dial it: HOST:PORT, or a target with a scheme gRPC resolves (``dns:``,
    ``unix:`` …), which gRPC itself checks; ValueError naming ``what`` otherwise, an empty one included."""
    if not value.strip():
        raise ValueError(f"{what} is empty: give the service's HOST:PORT ({EXAMPLE})")
    if value.startswith(GRPC_TARGET_SCHEMES) or "://" in value:
        return value
    host_port(value, what)
    return value


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True
