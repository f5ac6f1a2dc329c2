"""The embedded default service: Docker backend, built-in profiles, gRPC on 127.0.0.1:50051.

Start-up checks the engine and sweeps this instance's orphaned containers (a
previous run killed with sessions open). Shutdown on SIGINT/SIGTERM is graceful:
health NOT_SERVING, ``server.stop(grace)``, then every session's container is
removed.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from runner.api.auth import Authenticator
from runner.api.server import start_server
from runner.config import Settings
from runner.policy import PolicyStore
from runner.sandbox.docker import DockerBackend
from runner.sessions.manager import SessionManager

log = logging.getLogger("runner")


async def run_service(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM; SIGHUP (or a change of the file) reloads the policy."""
    policy = PolicyStore(settings.policy)
    authenticator = Authenticator(settings.auth, lambda digest: policy.current.token_owner(digest))
    backend = DockerBackend(stderr_tail_bytes=settings.stderr_tail_bytes)
    manager = SessionManager(backend, settings, policy)
    watcher: asyncio.Task[None] | None = None
    try:
        removed = await manager.start()
        if removed:
            log.info("removed %d orphaned sandbox(es) of instance %r", removed, settings.instance)
        server = await start_server(
            manager, settings.listen, authenticator=authenticator, tls=settings.tls, grace=settings.shutdown_grace_s
        )
        host = settings.listen.rsplit(":", 1)[0]
        methods = [name for name, on in (("mTLS", settings.auth.mtls), ("bearer tokens", settings.auth.tokens)) if on]
        log.info(
            "mcp-runner listening on %s:%d (%s; %s; policy: %s; instance %r, profiles: %s)",
            host, server.port, "TLS" if settings.tls else "plaintext",
            " + ".join(methods) or "no authentication (loopback only)", policy.current.source,
            settings.instance, ", ".join(sorted(settings.profiles)),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if settings.policy is not None:
            loop.add_signal_handler(signal.SIGHUP, policy.reload)
            watcher = asyncio.create_task(policy.watch(), name="policy-watch")
        await stop.wait()
        log.info("shutting down: draining calls for up to %.0f s, then removing sandboxes", settings.shutdown_grace_s)
        await server.stop()
        await manager.shutdown()
    finally:
        if watcher is not None:
            watcher.cancel()
        backend.close()
