"""The CLI's exit codes, and what it says when a request fails: the one table from gRPC status to exit code, and
connection failures turned into what to do about them.

gRPC reports a service that is not running, a TLS mismatch and an unknown CA all as UNAVAILABLE with a detail
string from its transport; a person needs the cause and the fix, so ``explain`` reads the detail for them.
"""

from __future__ import annotations

import argparse
from enum import IntEnum

import grpc

from runner.client_channel import ADDRESS_ENV
from runner.text import control_free


class Exit(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    NOT_FOUND = 3
    DENIED = 4
    UNAVAILABLE = 5
    INVALID = 6
    TIMEOUT = 7
    EXHAUSTED = 8
    PRECONDITION = 9
    INTERRUPTED = 130


_BY_STATUS = {
    grpc.StatusCode.OK: Exit.OK,
    grpc.StatusCode.NOT_FOUND: Exit.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED: Exit.DENIED,
    grpc.StatusCode.UNAUTHENTICATED: Exit.DENIED,
    grpc.StatusCode.UNAVAILABLE: Exit.UNAVAILABLE,
    grpc.StatusCode.INVALID_ARGUMENT: Exit.INVALID,
    grpc.StatusCode.OUT_OF_RANGE: Exit.INVALID,
    grpc.StatusCode.DEADLINE_EXCEEDED: Exit.TIMEOUT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Exit.EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION: Exit.PRECONDITION,
    grpc.StatusCode.ABORTED: Exit.PRECONDITION,
}
"""Every other status (INTERNAL, UNIMPLEMENTED, CANCELLED, UNKNOWN …) is ``Exit.FAILURE``."""

EXIT_CODES_HELP = """\
exit codes:
  0    ok
  1    failed: the tool reported an error, a replay differed, the audit log is broken, the server asked for
       input the CLI cannot give, or the service failed (INTERNAL, UNIMPLEMENTED …)
  2    usage: the command line, or a file it names, is wrong
  3    not found: no such profile, session, tool, resource, prompt or audit record (NOT_FOUND)
  4    denied: the policy refused, or the caller is not known (PERMISSION_DENIED, UNAUTHENTICATED)
  5    unavailable: the service is not running or cannot be reached, or its backend is down (UNAVAILABLE)
  6    invalid: the service refused a value, e.g. arguments that break a tool's schema (INVALID_ARGUMENT)
  7    timed out (DEADLINE_EXCEEDED)
  8    a quota or rate limit (RESOURCE_EXHAUSTED)
  9    the session is closed or failed, or an approval is not usable (FAILED_PRECONDITION)
  130  interrupted (Ctrl-C)
`mcp-runner health` exits 0 when SERVING and 1 otherwise; `mcp-runner mcp` has its own (see its --help)."""


_CONNECT_FAILURE = "failed to connect to all addresses"
_RESOLVER_FAILURES = ("errors resolving ", "DNS resolution failed")
"""How gRPC's transport begins the details of a connection it could not make, and of a host it could not resolve."""


def exit_for(code: grpc.StatusCode) -> Exit:
    return _BY_STATUS.get(code, Exit.FAILURE)


def explain(code: grpc.StatusCode, details: str, args: argparse.Namespace) -> str:
    """The message to print for a failed request: the service's own, or for a connection failure its cause and fix."""
    address = getattr(args, "address", "")
    tls = bool(getattr(args, "ca", None) or getattr(args, "cert", None) or getattr(args, "key", None))
    # The service's words may quote a server's or a caller's (a name, a server's stderr): escaped, and its later
    # lines indented, so none can pass for a line of the CLI's own.
    details = control_free(details).rstrip("\n").replace("\n", "\n    ")
    if code == grpc.StatusCode.UNAVAILABLE:
        return _unreachable(details, address, tls, bool(getattr(args, "cert", None))) or details
    if code == grpc.StatusCode.UNAUTHENTICATED:
        if details.startswith("authentication required"):
            return (f"{details}. The service names its callers: pass --token TOKEN (or set MCP_RUNNER_TOKEN), or a "
                    "client certificate with --cert/--key; an operator makes a token with `mcp-runner token NAME`")
        if "token is not known" in details:
            return f"{details}. Check --token / MCP_RUNNER_TOKEN: the policy file must hold its hash"
    if code == grpc.StatusCode.UNIMPLEMENTED and details.lower().startswith("method not found"):
        return f"the service at {address} does not know this request: it is older than this CLI; upgrade the service"
    return details


def _unreachable(details: str, address: str, tls: bool, client_cert: bool) -> str | None:
    """What a transport failure means, or None when it is the service's own UNAVAILABLE (its backend down).

    Only gRPC's own details are read: the service's UNAVAILABLE may quote its backend's failure ("Docker engine
    unreachable: … Connection refused"), which says nothing about the connection to the service.
    """
    elsewhere = f"--address HOST:PORT or {ADDRESS_ENV}"
    if details.startswith(_RESOLVER_FAILURES):
        return f"cannot resolve the host of {address}: check {elsewhere}"
    if not details.startswith(_CONNECT_FAILURE):
        return None
    if "Connection refused" in details:
        return (f"no service is listening at {address}. Start one with `make run` or `mcp-runner serve`, or point "
                f"the CLI at yours: {elsewhere}")
    if "WRONG_VERSION_NUMBER" in details:
        return (f"the service at {address} does not speak TLS, but the CLI used it: drop --ca/--cert/--key "
                "(and MCP_RUNNER_CA/_CERT/_KEY)")
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return (f"the TLS certificate of the service at {address} is not signed by the CA given with --ca "
                "(MCP_RUNNER_CA): give the CA that signed it (`mcp-runner certs` wrote it as ca.pem)")
    if "Peer name" in details or "not in peer certificate" in details:
        return (f"the service's TLS certificate does not name the host in {address}: connect by a name it was made "
                "for (`mcp-runner certs --server-name`)")
    if "Socket closed" in details or "Connection reset" in details:
        if not tls:
            return (f"the service at {address} closed the connection: it expects TLS. Pass --ca FILE (the CA that "
                    "signed its certificate), and --cert/--key if it asks for client certificates")
        if not client_cert:
            return (f"the service at {address} refused the TLS connection: it asks for a client certificate. Pass "
                    "--cert FILE --key FILE, signed by the CA the service trusts")
        return (f"the service at {address} refused the client certificate: it must be signed by the CA the service "
                "trusts (its settings' tls.client_ca)")
    return f"cannot connect to {address} ({details}); check {elsewhere}"
