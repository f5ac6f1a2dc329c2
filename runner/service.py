"""The embedded default service: Docker backend, built-in profiles, SQLite audit log, gRPC on 127.0.0.1:50051.

Start-up opens the audit log (it refuses to start if the log cannot be
written: a service that cannot record must not answer), checks the engine and
sweeps this instance's orphaned containers (a previous run killed with sessions
open). Shutdown on SIGINT/SIGTERM is graceful: health NOT_SERVING,
``server.stop(grace)``, then every session's container is removed and its
close recorded, then the audit log is closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from runner.api.auth import Authenticator
from runner.api.server import start_server
from runner.audit.replay import Replayer
from runner.audit.retention import keep_retention
from runner.audit.service import AuditService
from runner.audit.store import AuditStore
from runner.config import Settings
from runner.policy import PolicyStore
from runner.sandbox.docker import DockerBackend
from runner.sessions.journal import Journal
from runner.sessions.manager import SessionManager

log = logging.getLogger("runner")


async def run_service(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM; SIGHUP (or a change of the file) reloads the policy."""
    policy = PolicyStore(settings.policy)
    authenticator = Authenticator(settings.auth, lambda digest: policy.current.token_owner(digest))
    store = _open_audit(settings)
    backend = DockerBackend(stderr_tail_bytes=settings.stderr_tail_bytes)
    manager = SessionManager(backend, settings, policy, Journal(store))
    audit = AuditService(store, policy, Replayer(manager, store)) if store is not None else None
    watcher: asyncio.Task[None] | None = None
    retention: asyncio.Task[None] | None = None
    try:
        removed = await manager.start()
        if removed:
            log.info("removed %d orphaned sandbox(es) of instance %r", removed, settings.instance)
        server = await start_server(
            manager, settings.listen, authenticator=authenticator, tls=settings.tls, grace=settings.shutdown_grace_s,
            audit=audit,
        )
        if store is not None and settings.audit.retention_s is not None:
            retention = asyncio.create_task(keep_retention(store, settings.audit), name="audit-retention")
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
        for task in (watcher, retention):
            if task is not None:
                task.cancel()
        backend.close()
        if store is not None:
            store.close()
            seq, digest = store.head
            log.info("audit log closed at seq %d, head %s", seq, digest)


def _open_audit(settings: Settings) -> AuditStore | None:
    if not settings.audit.enabled:
        log.warning("the audit log is DISABLED (settings audit.enabled: false): nothing this service does is recorded")
        return None
    store = AuditStore(settings.audit.path)
    store.open()
    retention = settings.audit.retention_s
    kept = f"records older than {retention:g} s go to {settings.audit.exports}" if retention else "kept forever"
    seq, digest = store.head
    # Logged at start and close: a copy kept elsewhere shows if the newest records are ever cut off.
    log.info("audit log: %s (%s), continuing at seq %d, head %s", settings.audit.path, kept, seq, digest)
    return store
