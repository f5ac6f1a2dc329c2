"""Health follows the backend: NOT_SERVING while its check fails, SERVING again once it answers."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runner.api.backend_health import follow_backend
from runner.api.server import start_server
from runner.errors import Unavailable
from runner.sandbox.fake import FakeBackend
from tests.unit.test_api import FakeManager, _typed, anonymous


class FlakyBackend(FakeBackend):
    """A backend whose check fails while ``down`` is set, counting the checks made."""

    def __init__(self) -> None:
        super().__init__(lambda spec: None)  # type: ignore[arg-type,return-value]
        self.down = False
        self.checks = asyncio.Event()

    async def check(self) -> None:
        self.checks.set()
        if self.down:
            raise Unavailable("Kubernetes API server unreachable at https://127.0.0.1:1: connection refused")


async def _status(stub: health_pb2_grpc.HealthStub) -> int:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
    return int(reply.status)


async def _next_check(backend: FlakyBackend) -> None:
    """Two checks from now: the one after a change of ``down`` has surely been answered and applied."""
    for _ in range(2):
        backend.checks.clear()
        await asyncio.wait_for(backend.checks.wait(), 5)
    await asyncio.sleep(0)


async def test_health_follows_the_backend(caplog: pytest.LogCaptureFixture) -> None:
    backend = FlakyBackend()
    running = await start_server(_typed(FakeManager()), "127.0.0.1:0", authenticator=anonymous())
    follower = asyncio.create_task(follow_backend(backend, running, interval_s=0.01))
    caplog.set_level(logging.INFO, logger="runner.api.backend_health")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await _next_check(backend)
            assert await _status(stub) == health_pb2.HealthCheckResponse.SERVING
            backend.down = True
            await _next_check(backend)
            assert await _status(stub) == health_pb2.HealthCheckResponse.NOT_SERVING
            backend.down = False
            await _next_check(backend)
            assert await _status(stub) == health_pb2.HealthCheckResponse.SERVING
    finally:
        follower.cancel()
        await running.stop(0)
    changes = [r.getMessage() for r in caplog.records if r.name == "runner.api.backend_health"]
    assert len(changes) == 2, changes  # each change logged once, not once per check
    assert "NOT_SERVING" in changes[0] and "connection refused" in changes[0]
    assert "SERVING again" not in changes[0] and "answers again" in changes[1]
