"""Allowlist rules, the address policy and the config wire format of the egress proxy.

Pure functions only, standard library only: the host imports this module to
validate a profile's allowlist and the proxy's config before any container
starts, and the proxy imports it to judge each request, so both sides agree
on what a rule means.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Headers that describe one hop, not the request: a proxy never forwards them.
HOP_BY_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer", "upgrade"}
)
# A rule that set these could change where the request goes or how its body is
# framed, which is not what credentials are for.
_RESERVED_RULE_HEADERS = HOP_BY_HOP_HEADERS | {"host", "content-length", "transfer-encoding"}

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_WIRE_KEYS = frozenset({"host", "port", "private", "headers"})

_METADATA = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
    }
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_PRIVATE = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
    ipaddress.IPv6Network("fc00::/7"),
    # Site-local: deprecated (RFC 3879), so Python counts it as global, but a network may still route it inside.
    ipaddress.IPv6Network("fec0::/10"),
)
# Ranges newer than some Python's tables, which then count them as global (the egress image's Python is Debian's).
_NOT_GLOBAL = (ipaddress.IPv6Network("3fff::/20"),)  # documentation, RFC 9637: like 2001:db8::/32, never routed out


def ip_literal(host: str) -> IPAddress | None:
    """The address when a normalised host is an IP literal: such a target is never resolved."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse_host_pattern(text: str) -> str:
    """Normalise a rule host (or a request's target host) so that equal hosts compare equal as strings."""
    if not text:
        raise ValueError("empty host name")
    if not text.isascii():
        raise ValueError(f"host {text!r} is not ASCII: use the punycode (xn--) form of the name")
    host = text.lower()
    if host.startswith("["):
        raise ValueError(f"host {text!r}: give an IPv6 address without brackets")
    if ":" in host:
        return _ipv6_literal(host, text)
    if host.endswith("."):
        host = host[:-1]
    if host.startswith("*."):
        if ip_literal(host[2:]) is not None:
            raise ValueError(f"host {text!r}: a wildcard needs a domain name, not an address")
        return "*." + _dns_name(host[2:], text)
    if "*" in host:
        raise ValueError(f"host {text!r}: a wildcard must be the whole first label, as in *.example.com")
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        return _dns_name(host, text)


def _ipv6_literal(host: str, text: str) -> str:
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"host {text!r} is not a valid IPv6 address") from None
    if address.scope_id:
        raise ValueError(f"host {text!r}: an IPv6 zone (%...) cannot be allowed")
    return str(address)


def _dns_name(name: str, text: str) -> str:
    if not name or len(name) > 253:
        raise ValueError(f"host {text!r} is not a valid host name: it must be 1-253 characters")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"host {text!r} is not a valid host name: each dot-separated label needs 1-63 letters, "
                "digits or '-', not starting or ending with '-'"
            )
    try:
        # The C resolver reads forms like "127.1" or "0x7f000001" as addresses.
        socket.inet_aton(name)
    except OSError:
        return name
    raise ValueError(f"host {text!r} is a shorthand IPv4 address: write it as a dotted quad a.b.c.d")


def parse_target(text: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port`` (a CONNECT target or an allow entry) into a normalised host and port."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"target {text!r}: missing ']' after the IPv6 address")
        host_text, rest = text[1:end], text[end + 1 :]
        if ":" not in host_text:
            raise ValueError(f"target {text!r}: brackets are only for IPv6 addresses")
        if not rest.startswith(":"):
            raise ValueError(f"target {text!r} needs a port: write [address]:port")
        port_text = rest[1:]
    else:
        host_text, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"target {text!r} needs a port: write host:port")
        if ":" in host_text:
            raise ValueError(f"target {text!r}: put an IPv6 address in brackets, as in [2001:db8::1]:443")
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ValueError(f"target {text!r}: the port must be a number from 1 to 65535")
    port = int(port_text)
    _check_port(port)
    return parse_host_pattern(host_text), port


def parse_request_target(method: str, target: str) -> tuple[str, int, str]:
    """Host, port and origin-form path of a proxy request: ``host:port`` for CONNECT, else an http:// URL."""
    if method == "CONNECT":
        host, port = parse_target(target)
        path = ""
    else:
        scheme = target[:8].lower()
        if scheme.startswith("https://"):
            raise ValueError("https:// URLs go through a tunnel: use CONNECT (set HTTPS_PROXY to this proxy)")
        if not scheme.startswith("http://"):
            raise ValueError("send the full http:// URL: use this address as an HTTP proxy (HTTP_PROXY), not a server")
        rest = target[7:]
        cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
        authority, path = rest[:cut], rest[cut:].partition("#")[0]
        if "@" in authority:
            raise ValueError("user:password@ in a URL is not supported: the proxy adds credentials from its rules")
        if not path.startswith("/"):
            path = "/" + path
        if authority.endswith("]") or ":" not in authority:
            authority += ":80"
        host, port = parse_target(authority)
    if host.startswith("*"):
        raise ValueError(f"{host} is a wildcard, not a host to connect to")
    return host, port, path


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range: it must be from 1 to 65535")


def check_header(name: str, value: str) -> None:
    """ValueError unless a rule may add this header with this value; the message never quotes the value."""
    check_header_name(name)
    problem = header_value_problem(value)
    if problem:
        raise ValueError(f"header {name!r}: {problem}")


def check_header_name(name: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"header name {name!r} is not a valid HTTP token")
    if name.lower() in _RESERVED_RULE_HEADERS:
        raise ValueError(f"header {name!r} is managed by the proxy and cannot be set by a rule")


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot go in an HTTP header, or None."""
    if _CONTROL.search(value):
        return "the value must not contain CR, LF, NUL or other control characters"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "the value must be ASCII (or latin-1) text"
    return None


@dataclass(frozen=True)
class Rule:
    """One allowlist entry; ``headers`` are credentials the proxy adds to plain-HTTP requests it forwards."""

    host: str
    port: int
    private: bool = False
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if parse_host_pattern(self.host) != self.host:
            raise ValueError(f"rule host {self.host!r} is not normalised: pass it through parse_host_pattern")
        _check_port(self.port)
        for name, value in self.headers:
            check_header(name, value)

    def label(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def matches(self, host: str, port: int) -> bool:
        if port != self.port or "*" in host:
            return False
        if self.host.startswith("*."):
            suffix = self.host[1:]
            return host.endswith(suffix) and len(host) > len(suffix) and ip_literal(host) is None
        return host == self.host


def rule_from_wire(obj: object) -> Rule:
    """Parse ``{"host": ..., "port": ..., "private": ..., "headers": [[name, value], ...]}`` strictly."""
    if not isinstance(obj, dict):
        raise ValueError('a rule must be a JSON object such as {"host": "api.example.com", "port": 443}')
    unknown = sorted(str(key) for key in set(obj) - _WIRE_KEYS)
    if unknown:
        raise ValueError(f"unknown rule field(s) {', '.join(unknown)}: expected host, port, private, headers")
    host = obj.get("host")
    if not isinstance(host, str):
        raise ValueError('a rule needs "host" as a string')
    port = obj.get("port")
    if not isinstance(port, int) or isinstance(port, bool):
        raise ValueError(f'rule {host!r}: "port" must be an integer from 1 to 65535')
    private = obj.get("private", False)
    if not isinstance(private, bool):
        raise ValueError(f'rule {host!r}: "private" must be true or false')
    wire_headers = obj.get("headers", [])
    if not isinstance(wire_headers, list | tuple):
        raise ValueError(f'rule {host!r}: "headers" must be a list of [name, value] pairs')
    headers: list[tuple[str, str]] = []
    for index, pair in enumerate(wire_headers):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise ValueError(f"rule {host!r}: headers[{index}] must be a [name, value] pair of strings")
        name, value = pair
        if not (isinstance(name, str) and isinstance(value, str)):
            raise ValueError(f"rule {host!r}: headers[{index}] must be a [name, value] pair of strings")
        headers.append((name, value))
    return Rule(parse_host_pattern(host), port, private, tuple(headers))


def address_refusal(address: IPAddress) -> str | None:
    """None for a globally routable unicast address; otherwise the kind of address that is refused."""
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(int(address))  # drop any %zone
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return address_refusal(embedded)
    if address in _METADATA:
        return "metadata"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address in _SHARED:
        return "shared"
    if any(address in network for network in _PRIVATE):
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global or any(address in network for network in _NOT_GLOBAL):
        return "not-global"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a packet to ``address`` really reaches (mapped, NAT64 and 6to4 forms)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def first_match(rules: Sequence[Rule], host: str, port: int) -> Rule | None:
    return next((rule for rule in rules if rule.matches(host, port)), None)


@dataclass(frozen=True)
class ProxyLimits:
    max_connections: int = 64
    head_bytes: int = 16384
    max_headers: int = 100
    head_timeout_s: float = 10.0
    resolve_timeout_s: float = 5.0
    connect_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0


def limits_from_wire(obj: object) -> ProxyLimits:
    """Apply the config's ``limits`` overrides; each must be a positive number of its field's type."""
    if not isinstance(obj, dict):
        raise ValueError('"limits" must be a JSON object')
    defaults = {field.name: field.default for field in dataclasses.fields(ProxyLimits)}
    changes: dict[str, Any] = {}
    for key, value in obj.items():
        if key not in defaults:
            raise ValueError(f"unknown limit {key!r}: expected one of {', '.join(defaults)}")
        kind = "integer" if isinstance(defaults[key], int) else "number"
        wanted = int if kind == "integer" else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"limit {key!r} must be a positive {kind}")
        changes[key] = value
    return ProxyLimits(**changes)


@dataclass(frozen=True)
class ProxyConfig:
    """The one JSON line the host writes to the proxy's stdin."""

    rules: tuple[Rule, ...]
    listen_host: str = "0.0.0.0"
    listen_port: int = 3128
    limits: ProxyLimits = ProxyLimits()

    def to_wire(self) -> dict[str, Any]:
        """The JSON form ``config_from_wire`` reads back (limits only where they differ from the defaults)."""
        rules = [
            {"host": r.host, "port": r.port, "private": r.private, "headers": [list(h) for h in r.headers]}
            for r in self.rules
        ]
        limits = {k: v for k, v in dataclasses.asdict(self.limits).items() if v != getattr(ProxyLimits(), k)}
        wire: dict[str, Any] = {"listen_host": self.listen_host, "listen_port": self.listen_port, "rules": rules}
        return {**wire, "limits": limits} if limits else wire


def config_from_wire(obj: object) -> ProxyConfig:
    """Parse ``{"listen_host", "listen_port", "rules": [...], "limits": {...}}``; only ``rules`` is required."""
    if not isinstance(obj, dict):
        raise ValueError("the config must be a JSON object")
    unknown = sorted(str(key) for key in set(obj) - {"listen_host", "listen_port", "rules", "limits"})
    if unknown:
        raise ValueError(
            f"unknown config field(s) {', '.join(unknown)}: expected listen_host, listen_port, rules, limits"
        )
    host = obj.get("listen_host", ProxyConfig.listen_host)
    if not isinstance(host, str) or not host:
        raise ValueError('"listen_host" must be a non-empty string')
    port = obj.get("listen_port", ProxyConfig.listen_port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError('"listen_port" must be an integer from 0 to 65535')
    wire_rules = obj.get("rules")
    if not isinstance(wire_rules, list):
        raise ValueError('"rules" must be a list of rules')
    rules = []
    for index, wire_rule in enumerate(wire_rules):
        try:
            rules.append(rule_from_wire(wire_rule))
        except ValueError as exc:
            raise ValueError(f"rules[{index}]: {exc}") from None
    return ProxyConfig(tuple(rules), host, port, limits_from_wire(obj.get("limits", {})))
