"""The client's request as the proxy sees it: its head parsed and checked, and the head the upstream gets instead.

Apart from ``runner.egress.proxy`` because it owns what a request may say (the request-line grammar, the
methods forwarded, the header lines, the refusal that answers a bad one) and what is rewritten before it goes
on (origin-form, hop-by-hop headers out, the rule's credentials in), while the proxy owns the connections,
resolution and timing. Pure and stdlib-only, like the rest of the egress image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runner.egress.framing import BAD_VALUE, HEADER_LINE, hop_by_hop, request_body
from runner.egress.rules import Rule, parse_request_target

# Methods whose answer does not reflect the request: the only ones forwarded, and
# the only ones given a rule's credentials. TRACE, TRACK and DEBUG echo what they
# were sent; an unknown method might, and nothing the sandbox needs uses one.
_FORWARDED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ALLOW = ", ".join(sorted(_FORWARDED_METHODS)) + ", CONNECT"

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) ([\x21-\x7e]+) HTTP/(1\.[01])")
# What a request line may look like before its CRLF has arrived: lets a TLS
# ClientHello or an SSH banner be refused at once instead of at the timeout.
REQUEST_PREFIX = re.compile(_TCHAR + rb"*(?: [\x21-\x7e]*(?: [\x21-\x7e]*\r?)?)?")
NOT_HTTP = "this is not an HTTP request: the proxy forwards only HTTP requests and CONNECT tunnels"


class Refusal(Exception):
    def __init__(self, status: int, code: str, reason: str, headers: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.headers = headers  # extra reply header lines, each ending in CRLF


def bad(reason: str) -> Refusal:
    return Refusal(400, "bad_request", reason)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _authority(host: str, port: int) -> str:
    """The Host header for a target: the port is left out when it is HTTP's default."""
    return host_port(host, port).removesuffix(":80")


@dataclass
class Attempt:
    """What is known so far about one request, for its decision event."""

    method: str = ""
    host: str | None = None
    port: int | None = None
    address: str | None = None
    rule: str | None = None


@dataclass(frozen=True)
class Request:
    method: str
    host: str
    port: int
    path: str
    headers: list[tuple[str, str]]
    body: int = 0  # its length, or framing.CHUNKED
    version: str = "1.1"  # the client's; the upstream is always asked in HTTP/1.1


def parse_head(head: bytes, attempt: Attempt, max_headers: int) -> Request:
    lines = head.split(b"\r\n")
    line = REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        raise bad(NOT_HTTP)
    method, target, version = line[1].decode("ascii"), line[2].decode("ascii"), line[3].decode("ascii")
    attempt.method = method
    if len(lines) - 1 > max_headers:
        raise bad(f"more than {max_headers} header lines")
    headers: list[tuple[str, str]] = []
    for number, raw in enumerate(lines[1:], 1):
        header = HEADER_LINE.fullmatch(raw)
        if header is None or BAD_VALUE.search(header[2]):
            raise bad(f"header line {number} is malformed")
        headers.append((header[1].decode("ascii"), header[2].strip(b" \t").decode("latin-1")))
    try:
        host, port, path = parse_request_target(method, target)
    except ValueError as exc:
        raise bad(str(exc)) from None
    attempt.host, attempt.port = host, port
    if method != "CONNECT" and method not in _FORWARDED_METHODS:
        reason = f"method {method} is not forwarded: only {_ALLOW}"
        raise Refusal(405, "method_not_allowed", reason, f"Allow: {_ALLOW}\r\n")
    try:
        body = request_body(method, version, headers)
    except ValueError as exc:
        raise bad(str(exc)) from None
    return Request(method, host, port, path, headers, body, version)


def rewrite_head(request: Request, rule: Rule) -> bytes:
    """The head the upstream sees: origin-form, no hop-by-hop headers, the rule's credentials, one request only."""
    # Checked again here, not only at the door: a method that echoes never carries a credential.
    credentials = rule.headers if request.method in _FORWARDED_METHODS else ()
    dropped = hop_by_hop(request.headers) | {"host"}
    # Compared as servers that read '_' as '-' do: X_Api_Key from the sandbox would shadow the rule's X-Api-Key there.
    credential_names = {_alike(name) for name, _ in rule.headers}
    framing = {"content-length": str(request.body), "transfer-encoding": "chunked"}
    lines = [f"{request.method} {request.path} HTTP/1.1", f"Host: {_authority(request.host, request.port)}"]
    lines += [
        f"{name}: {framing.get(name.lower(), value)}"
        for name, value in request.headers
        if name.lower() not in dropped and _alike(name) not in credential_names
    ]
    lines += [f"{name}: {value}" for name, value in credentials]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _alike(name: str) -> str:
    return name.lower().replace("_", "-")
