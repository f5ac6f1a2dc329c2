"""The gRPC server: the Runner servicer, standard health checking and server reflection.

Graceful shutdown is health NOT_SERVING first (load balancers stop sending new
sessions), then ``server.stop(grace)`` lets calls in flight finish; the caller
reaps containers afterwards. ``RunningServer.stop`` does the first two steps.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from runner.api._proto.mcp_runner.v1 import runner_pb2, runner_pb2_grpc
from runner.api.auth import Authenticator, check_listen_safety, server_credentials
from runner.api.decoding import DecodeErrors
from runner.api.servicer import AuditAccess, RunnerServicer, SessionService
from runner.config import TlsConfig
from runner.errors import Unavailable

RUNNER_SERVICE: str = runner_pb2.DESCRIPTOR.services_by_name["Runner"].full_name
HEALTH_SERVICE = "grpc.health.v1.Health"
OVERALL = ""


@dataclass
class RunningServer:
    """A started gRPC server with its health service; ``stop()`` shuts it down gracefully."""

    server: grpc.aio.Server
    port: int
    health: Any
    grace: float

    stopping: bool = False

    async def set_serving(self, serving: bool) -> None:
        """Tell health checkers whether to send work; once stopping, it stays NOT_SERVING."""
        status = health_pb2.HealthCheckResponse.SERVING if serving and not self.stopping else (
            health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in (OVERALL, RUNNER_SERVICE):
            await self.health.set(service, status)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, then stop accepting RPCs and give calls in flight ``grace`` seconds."""
        self.stopping = True
        await self.set_serving(False)
        await self.server.stop(self.grace if grace is None else grace)


async def start_server(
    manager: SessionService,
    listen: str,
    *,
    authenticator: Authenticator,
    tls: TlsConfig | None = None,
    grace: float = 5.0,
    audit: AuditAccess | None = None,
) -> RunningServer:
    """Bind ``listen`` (``host:port``; port 0 picks one), with TLS when ``tls`` is given, and start serving.

    Refuses an address beyond loopback unless callers must authenticate, and an address in use: the port is
    never shared (no SO_REUSEPORT), so two services cannot split each other's calls. ``grace`` is the default drain
    time of ``RunningServer.stop``. Health and reflection need no credentials (load balancers and
    tooling probe them); every Runner RPC does. Without ``audit`` the audit RPCs answer FAILED_PRECONDITION.
    """
    check_listen_safety(listen, tls, authenticator.config)
    credentials = server_credentials(tls) if tls is not None else None
    refuse_address_in_use(listen)
    # gRPC sets SO_REUSEPORT by default: a second service would share the port, and calls land on either.
    server = grpc.aio.server(
        interceptors=(DecodeErrors(),),  # undecodable requests: INVALID_ARGUMENT
        options=(("grpc.so_reuseport", 0),),
    )
    runner_pb2_grpc.add_RunnerServicer_to_server(RunnerServicer(manager, authenticator, audit), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection([RUNNER_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME], server)
    try:
        port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise Unavailable(f"cannot listen on {listen}: in use, or not an address of this machine ({exc})") from None
    if port == 0:
        raise Unavailable(f"cannot listen on {listen}")
    await server.start()
    for service in (OVERALL, RUNNER_SERVICE):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=port, health=health, grace=grace)


def refuse_address_in_use(listen: str) -> None:
    """``Unavailable`` when any address ``listen`` resolves to is taken: probe each with a plain bind.

    gRPC binds every address a name resolves to and is content when one of them works: ``localhost:50051``
    with 127.0.0.1:50051 taken binds ::1 alone, and IPv4 callers reach the other program. Its own bind still
    decides (a probe is only a probe); this catches the half-bound case and names the address. gRPC's
    resolver gives ``localhost`` both loopback addresses (RFC 6761) even where the system's resolver knows
    only one, so both are probed. A Unix socket path is probed by connecting, since gRPC's bind would unlink
    a live socket there and take its callers over.
    """
    if listen.startswith("unix:"):
        _refuse_unix_socket_in_use(listen)
        return
    host, colon, port_text = listen.rpartition(":")
    if not colon or listen.startswith("unix-abstract:") or not port_text.isdigit() or not int(port_text):
        return  # port 0 is always free; an abstract name's bind fails when taken; what gRPC cannot parse, it reports
    host = host.strip("[]")
    try:
        addresses = [
            (family, address)
            for family, _, _, _, address in socket.getaddrinfo(
                host or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        ]
    except (socket.gaierror, UnicodeError):
        return
    if host.lower() == "localhost":
        addresses += [(socket.AF_INET, ("127.0.0.1", int(port_text))), (socket.AF_INET6, ("::1", int(port_text)))]
    for family, address in addresses:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no owner
                probe.bind(address)
        except OSError as exc:  # no IPv6 here, say: gRPC cannot bind it either, and that is its to report
            if exc.errno == errno.EADDRINUSE:
                raise Unavailable(
                    f"cannot listen on {listen}: {address[0]} port {port_text} is already in use (another "
                    "mcp-runner, or another program); stop it or choose another address"
                ) from None


def _refuse_unix_socket_in_use(listen: str) -> None:
    """``Unavailable`` when something accepts connections on the socket path (``unix:path``, ``unix:///path``)."""
    path = listen.removeprefix("unix:")
    if path.startswith("//"):
        path = path[2:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except TimeoutError:
            pass  # a listener too busy to accept is still a listener
        except OSError:
            return  # no socket, or a stale one nobody listens on (gRPC replaces it), or its bind will say why
        raise Unavailable(
            f"cannot listen on {listen}: a program is already listening on that socket (another mcp-runner, or "
            "another program); stop it or choose another path"
        )
