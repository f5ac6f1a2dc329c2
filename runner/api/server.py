"""The gRPC server: the Runner servicer, standard health checking and server reflection.

Graceful shutdown is health NOT_SERVING first (load balancers stop sending new
sessions), then ``server.stop(grace)`` lets calls in flight finish; the caller
reaps containers afterwards. ``RunningServer.stop`` does the first two steps.
"""

from __future__ import annotations

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

    async def set_not_serving(self) -> None:
        """Tell health checkers to stop sending work (first step of a graceful shutdown)."""
        for service in (OVERALL, RUNNER_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, then stop accepting RPCs and give calls in flight ``grace`` seconds."""
        await self.set_not_serving()
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

    Refuses an address beyond loopback unless callers must authenticate. ``grace`` is the default drain
    time of ``RunningServer.stop``. Health and reflection need no credentials (load balancers and
    tooling probe them); every Runner RPC does. Without ``audit`` the audit RPCs answer FAILED_PRECONDITION.
    """
    check_listen_safety(listen, tls, authenticator.config)
    credentials = server_credentials(tls) if tls is not None else None
    server = grpc.aio.server(interceptors=(DecodeErrors(),))  # undecodable requests: INVALID_ARGUMENT
    runner_pb2_grpc.add_RunnerServicer_to_server(RunnerServicer(manager, authenticator, audit), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection([RUNNER_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME], server)
    try:
        port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise Unavailable(f"cannot listen on {listen}: {exc}") from None
    if port == 0:
        raise Unavailable(f"cannot listen on {listen}")
    await server.start()
    for service in (OVERALL, RUNNER_SERVICE):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=port, health=health, grace=grace)
