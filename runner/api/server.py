"""The gRPC server: the Runner servicer, standard health checking and server reflection.

Graceful shutdown is health NOT_SERVING first (load balancers stop sending new
sessions), then ``server.stop(grace)`` lets calls in flight finish; the caller
reaps containers afterwards. ``stop_server`` does the first two steps.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from runner.api._proto.mcp_runner.v1 import runner_pb2, runner_pb2_grpc
from runner.api.servicer import RunnerServicer, SessionService
from runner.errors import Unavailable

RUNNER_SERVICE: str = runner_pb2.DESCRIPTOR.services_by_name["Runner"].full_name
HEALTH_SERVICE = "grpc.health.v1.Health"
OVERALL = ""


@dataclass
class _Running:
    health: Any
    grace: float


# Per-server state, so start_server can keep its (server, port) signature.
_RUNNING: weakref.WeakKeyDictionary[grpc.aio.Server, _Running] = weakref.WeakKeyDictionary()


async def start_server(
    manager: SessionService, listen: str, *, grace: float = 5.0
) -> tuple[grpc.aio.Server, int]:
    """Bind ``listen`` (``host:port``; port 0 picks one), start serving, return the server and bound port.

    ``grace`` is the default for ``stop_server``.
    """
    server = grpc.aio.server()
    runner_pb2_grpc.add_RunnerServicer_to_server(RunnerServicer(manager), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection([RUNNER_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME], server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise Unavailable(f"cannot listen on {listen}: {exc}") from None
    if port == 0:
        raise Unavailable(f"cannot listen on {listen}")
    await server.start()
    for service in (OVERALL, RUNNER_SERVICE):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    _RUNNING[server] = _Running(health=health, grace=grace)
    return server, port


async def set_not_serving(server: grpc.aio.Server) -> None:
    """Tell health checkers to stop sending work (first step of a graceful shutdown)."""
    running = _RUNNING.get(server)
    if running is not None:
        for service in (OVERALL, RUNNER_SERVICE):
            await running.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)


async def stop_server(server: grpc.aio.Server, grace: float | None = None) -> None:
    """NOT_SERVING, then stop accepting RPCs and give calls in flight ``grace`` seconds."""
    running = _RUNNING.get(server)
    await set_not_serving(server)
    if grace is None:
        grace = running.grace if running is not None else 5.0
    await server.stop(grace)
