"""gRPC health that follows the sandbox backend: NOT_SERVING while it cannot start sandboxes, SERVING once it can.

A load balancer or an orchestrator's probe then stops sending opens to a service whose engine or API server is
gone, instead of each caller learning it from an UNAVAILABLE of its own. Sessions already open are not touched:
their sandboxes may well still run.
"""

from __future__ import annotations

import asyncio
import logging

from runner.api.server import RunningServer
from runner.errors import RunnerError
from runner.sandbox.base import SandboxBackend

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 5.0
"""How often the backend is asked; a change shows in health within this (plus the backend's own timeout)."""


async def follow_backend(backend: SandboxBackend, server: RunningServer, interval_s: float = CHECK_INTERVAL_S) -> None:
    """Check the backend every ``interval_s`` and set health from the answer, logging each change once."""
    serving = True
    while True:
        await asyncio.sleep(interval_s)
        try:
            await backend.check()
        except RunnerError as exc:
            if serving:
                log.warning("health NOT_SERVING: the sandbox backend cannot start sandboxes: %s", exc.message)
                await server.set_serving(False)
                serving = False
            continue
        if not serving:
            log.info("health SERVING: the sandbox backend answers again")
            await server.set_serving(True)
            serving = True
