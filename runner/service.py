"""The embedded default service: Docker (or Kubernetes) backend, built-in profiles, SQLite audit, gRPC on :50051.

Start-up first refuses configurations that would expose the runner or hand the embedded default policy to
authenticated callers, and an address already in use, then takes the instance lock: an instance is one
running service, so a second service of the same instance name (whatever its audit path or port) stops
here, naming the first, before its orphan sweep could remove the first one's live sandboxes. Then it
opens the guard's memory (pins, approvals, rate buckets of earlier runs: ``runner.guard.memory``) and the
audit log (it refuses to start if either cannot be written: a service that cannot record must not answer),
checks the engine and sweeps this instance's orphaned containers (a previous run killed with sessions
open), leaving those of any other running service of the same name, say one with another state directory
(``InstanceLock.abandoned``). Shutdown on SIGINT/SIGTERM is graceful: health NOT_SERVING,
``server.stop(grace)``, then the warm pool is emptied and every session's container is removed and its close
recorded, then the audit log is closed, queued trace spans get a few seconds to reach the collector, and the lock
is released.
"""

from __future__ import annotations

import asyncio
import datetime
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runner.api.auth import Authenticator, check_listen_safety, check_policy_required, is_loopback
from runner.api.backend_health import follow_backend
from runner.api.server import refuse_address_in_use, start_server
from runner.audit.replay import Replayer
from runner.audit.retention import keep_retention
from runner.audit.service import AuditService
from runner.audit.store import AuditStore
from runner.config import ConfigError, Settings
from runner.config_check import refuse_problems
from runner.door.http import DoorApp, RunningDoor, start_door
from runner.door.identity import HttpAuthenticator
from runner.errors import FailedPrecondition
from runner.guard.memory import GuardMemory, memory_path
from runner.image_profiles import ensure_profile_images, load_profile_images_into_cluster
from runner.observe import logs
from runner.observe.metrics import RunnerMetrics
from runner.observe.scrape import MetricsEndpoint
from runner.observe.tracing import Tracing
from runner.policy import PolicyStore
from runner.sandbox.backends import backend_for, describe
from runner.sessions.journal import Journal, Observer
from runner.sessions.manager import SessionManager

log = logging.getLogger("runner")

_LOCK_TRIES = 5
"""Tries at the instance lock, 20 ms apart: another service's sweep may hold it shared for a moment."""


class InstanceLock:
    """An exclusive ``flock`` on ``<state_dir>/instance-<name>.lock``, held for the life of the service.

    Keyed by the instance name alone, because the instance name is what the orphan sweep and container
    labels go by. The kernel drops the lock when the process ends, however it ends (SIGKILL included), so a
    crash never leaves a stale lock behind; the file keeps its holder's pid, address and start time, so a
    refused start can name who holds it.

    Two state directories hold two locks, so two services of one instance name can still both run. The
    lock therefore also names the sandboxes' owner: the file keeps a random owner id across runs, every
    container and network is labelled with it (``label``), and the start-up sweep removes only what
    ``abandoned`` says: an earlier run's of this very lock, or a lock that nobody holds any more.
    """

    def __init__(self, path: Path, fd: int, owner: str) -> None:
        self.path = path
        self.owner = owner
        self._fd = fd
        self._file = _file_id(os.fstat(fd))
        self._started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")

    @classmethod
    def acquire(cls, state_dir: Path, instance: str, listen: str) -> InstanceLock:
        """Take the lock and record this process as holder; ``FailedPrecondition`` naming the holder if taken."""
        path = state_dir / f"instance-{instance}.lock"
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the instance lock {path}: {exc.strerror or exc}; set a writable state directory "
                "(`state_dir:` or MCP_RUNNER_STATE_DIR)"
            ) from None
        for attempt in range(_LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt + 1 < _LOCK_TRIES:
                    time.sleep(0.02)  # another service's sweep may be checking this lock, for microseconds
                    continue
                holder = _describe_holder(os.pread(fd, 4096, 0))
                os.close(fd)
                raise FailedPrecondition(
                    f"instance {instance!r} is already running ({holder}; lock {path}): stop that service first, "
                    "or give this one another instance name (`instance:` or MCP_RUNNER_INSTANCE)"
                ) from None
            except OSError as exc:  # a file system without locks: nothing would keep a second service out
                os.close(fd)
                raise ConfigError(
                    f"cannot lock the instance lock {path}: {exc.strerror or exc}; put the state directory "
                    "(`state_dir:` or MCP_RUNNER_STATE_DIR) on a local file system"
                ) from None
        lock = cls(path, fd, _recorded_owner(os.pread(fd, 4096, 0)) or secrets.token_hex(16))
        lock.note(listen)
        return lock

    def note(self, listen: str) -> None:
        """Record this process as the holder, serving ``listen`` (rewritten once the bound port is known)."""
        holder = {"owner": self.owner, "pid": os.getpid(), "listen": listen, "started": self._started}
        recorded = json.dumps(holder).encode() + b"\n"
        os.pwrite(self._fd, recorded, 0)  # then cut: a crash in between leaves the owner id readable
        os.ftruncate(self._fd, len(recorded))

    @property
    def label(self) -> str:
        """The owner label of this service's sandboxes: the owner id, and where its lock can be checked."""
        where = {
            "owner": self.owner, "lock": str(self.path.resolve()), "file": self._file, "seen_from": _file_system_view()
        }
        return json.dumps(where, sort_keys=True)

    def abandoned(self, label: str | None) -> bool:
        """Whether a sandbox with this owner ``label`` may be swept: nobody can be using it any more.

        Without a label it predates owner labels (an earlier run of this instance). With this lock's owner id
        it is an earlier run's of this lock, whatever machine or container ran it. Another owner's lock is
        checked only from the same file-system view (a path means nothing elsewhere): abandoned if nobody
        holds it. Anything that cannot be checked is kept, a lock file removed or replaced since included
        (its holder may still run, holding the old file).
        """
        if label is None:
            return True
        try:
            claim = json.loads(label)
            owner, lock, file, seen_from = claim["owner"], claim["lock"], claim["file"], claim["seen_from"]
        except (ValueError, KeyError, TypeError):
            return False
        here = seen_from == _file_system_view() and isinstance(lock, str)
        if owner == self.owner:  # unless a copy of this state directory, running elsewhere here, holds it
            return not (here and file != self._file and _held(lock, file))
        if not here:
            return False
        return file == self._file or not _held(lock, file)  # this very file: its owner id was lost, not its lock

    def release(self) -> None:
        os.close(self._fd)  # closing the only descriptor drops the flock


def _file_system_view() -> str:
    """This machine and mount namespace: where a lock path in an owner label means the same file as here."""
    try:
        namespace = os.readlink("/proc/self/ns/mnt")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()} {namespace}"


def _file_id(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}"


def _held(path: str, file: object) -> bool:
    """Whether the instance lock at ``path`` may be held: a shared probe, dropped at once.

    Only the very file the label names can be asked; one removed or replaced since (its holder may still
    hold the old one) or that this user cannot open counts as held.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        if _file_id(os.fstat(fd)) != file:
            return True
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # drops the probe's shared lock
    return False


def _recorded_owner(recorded: bytes) -> str | None:
    """The owner id an earlier holder of the lock recorded, so this run sweeps the sandboxes it left."""
    try:
        owner = _first_value(recorded)["owner"]
    except (ValueError, KeyError, TypeError):
        return None
    return owner if isinstance(owner, str) and owner else None


def _first_value(recorded: bytes) -> Any:
    """The holder's record, even with the tail of a longer earlier one after it (``note`` writes, then cuts)."""
    return json.JSONDecoder().raw_decode(recorded.decode())[0]


def _describe_holder(recorded: bytes) -> str:
    """The holder as the lock file names it; a lock being taken this very moment may not name one yet."""
    try:
        holder = _first_value(recorded)
        return f"pid {int(holder['pid'])}, listening on {holder['listen']}, since {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "its holder has not recorded itself yet"


async def run_service(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM; SIGHUP (or a change of the file) reloads the policy.

    Refuses to start (``ConfigError``, ``Unavailable``, ``FailedPrecondition``) before touching the engine
    when the settings are unsafe, the address is in use or the instance is already running, and on any problem
    ``mcp-runner config check`` finds in the settings (a missing mount source; an image that is nowhere, the one
    question the engine is asked before the instance lock, and only for a profile naming an image of its own).
    The process's logging is the caller's (``mcp-runner serve`` sets it from ``settings.log``): two services in one
    process must not take each other's handlers.
    """
    check_listen_safety(settings.listen, settings.tls, settings.auth)
    check_policy_required(settings.listen, settings.auth, settings.policy)
    # Early as well as at the bind: two services left at the default port (two users on one engine, say)
    # stop here, before the orphan sweep; the bind itself still decides.
    refuse_address_in_use(settings.listen)
    door_listen = settings.mcp_http.listen
    if door_listen:
        check_listen_safety(door_listen, settings.tls, settings.auth)
        check_policy_required(door_listen, settings.auth, settings.policy)
        refuse_address_in_use(door_listen)
    refuse_problems(settings)
    lock = InstanceLock.acquire(settings.state_dir, settings.instance, settings.listen)
    try:
        # Profiles' package and agent-injected images, built by this host's engine: no session waits on a build.
        await asyncio.to_thread(ensure_profile_images, settings.profiles.values(), log.info, log.warning)
        if settings.backend == "kubernetes":  # and on the nodes (or refused, saying how), as `images load` would
            await asyncio.to_thread(load_profile_images_into_cluster, settings.profiles.values(),
                                    settings.kubernetes.registry, log.info)
        await _serve(settings, lock)
    finally:
        lock.release()


async def _serve(settings: Settings, lock: InstanceLock) -> None:
    policy = PolicyStore(settings.policy)
    # Signals are ours from the first step, not from the first call served: a SIGHUP (a reload sent while the
    # orphan sweep runs) would otherwise kill the process by default, and a SIGTERM would end it with the audit
    # log unclosed; instead a stop asked for during start-up is honoured before anyone is served.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if settings.policy is not None:
        loop.add_signal_handler(signal.SIGHUP, policy.reload)
    authenticator = Authenticator(settings.auth, lambda digest: policy.current.token_owner(digest))
    memory = GuardMemory(memory_path(settings.state_dir, settings.instance))
    memory.open()
    metrics = RunnerMetrics(settings.profiles, settings.backend)
    try:
        store = _open_audit(settings, metrics)
    except BaseException:
        memory.close()
        raise
    log.info("guard memory: %s", memory.path)
    backend = backend_for(settings, owner=lock.label, abandoned=lock.abandoned)
    log.info("sandbox backend: %s", describe(settings))
    journal = journal_for(settings, store, (metrics.observe, logs.EventLog()))
    tracer = Tracing.from_config(settings.tracing, settings.instance)
    if settings.tracing is not None:
        log.info("traces: OTLP/gRPC to %s as service %r, sampling %g", settings.tracing.endpoint,
                 settings.tracing.service_name, settings.tracing.sample_ratio)  # fmt: skip
    manager = SessionManager(backend, settings, policy, journal, memory, tracing=tracer)
    metrics.watch(manager.pool, store)
    audit = AuditService(store, policy, Replayer(manager, store)) if store is not None else None
    watcher: asyncio.Task[None] | None = None
    retention: asyncio.Task[None] | None = None
    health: asyncio.Task[None] | None = None
    door: RunningDoor | None = None
    try:
        removed = await manager.start()
        if removed:
            log.info("removed %d orphaned sandbox(es) of instance %r", removed, settings.instance)
        if stop.is_set():
            log.info("stopped during start-up, before serving")
            await manager.shutdown()
            return
        server = await start_server(
            manager, settings.listen, authenticator=authenticator, tls=settings.tls, grace=settings.shutdown_grace_s,
            audit=audit,
        )
        if store is not None and settings.audit.retention_s is not None:
            retention = asyncio.create_task(keep_retention(store, settings.audit), name="audit-retention")
        address = bound_address(settings.listen, server.port)
        if address != settings.listen:  # the holder's record names the port actually bound
            lock.note(address)
        methods = [name for name, on in (("mTLS", settings.auth.mtls), ("bearer tokens", settings.auth.tokens)) if on]
        log.info(
            "mcp-runner listening on %s (%s; %s; policy: %s; instance %r, profiles: %s)",
            address, "TLS" if settings.tls else "plaintext",
            " + ".join(methods) or "no authentication (loopback only)", policy.current.source,
            settings.instance, ", ".join(sorted(settings.profiles)),
        )
        if settings.mcp_http.listen:
            http_auth = HttpAuthenticator(settings.auth, lambda digest: policy.current.token_owner(digest))
            scrape = MetricsEndpoint(metrics, http_auth, policy, loopback=is_loopback(settings.mcp_http.listen),
                                     public=settings.metrics.public)  # fmt: skip
            door_app = DoorApp(manager, settings.mcp_http, settings.profiles, http_auth, journal.note, scrape,
                               refused=metrics.http_refused)  # fmt: skip
            door = await start_door(door_app, settings.mcp_http.listen, tls=settings.tls,
                                    grace=settings.shutdown_grace_s)  # fmt: skip
            door_url = f"{'https' if settings.tls else 'http'}://{bound_address(settings.mcp_http.listen, door.port)}"
            log.info("MCP door: %s/mcp/<profile> (Streamable HTTP, both protocol eras); Prometheus metrics: %s/metrics "
                     "(%s)", door_url, door_url, "open" if settings.metrics.public or settings.auth.anonymous else
                     "an auditor's or admin's credentials")  # fmt: skip
        pools = ", ".join(f"{name} {size}" for name, size in sorted(settings.pool.items())) or "off"
        log.info("warm pool: %s; at most %d sandboxes boot at once, an open waits for a slot up to %g s without a "
                 "deadline of its own", pools, settings.max_concurrent_boots, settings.open_queue_timeout_s)
        health = asyncio.create_task(follow_backend(backend, server), name="backend-health")
        if settings.policy is not None:
            watcher = asyncio.create_task(policy.watch(), name="policy-watch")
        await stop.wait()
        log.info("shutting down: draining calls for up to %.0f s, then removing sandboxes", settings.shutdown_grace_s)
        if door is not None:  # before the manager: its sessions' sandboxes close as the door's own
            await door.stop()
            door = None
        await server.stop()
        await manager.shutdown()
    finally:
        if door is not None:
            await door.stop()
        for task in (watcher, retention, health):
            if task is not None:
                task.cancel()
        # A boot given up at shutdown (a pooled sandbox's, say) may still be removing what it made: its network
        # outlived the service when the process ended first.
        await backend.settle()
        backend.close()
        memory.close()
        if store is not None:
            store.close()
            seq, digest = store.head
            log.info("audit log closed at seq %d, head %s", seq, digest)
        # Last: a collector that does not answer must not keep the audit log open past a container's stop grace.
        await asyncio.to_thread(tracer.shutdown)  # what is still queued goes to the collector, for a few seconds


def bound_address(listen: str, port: int) -> str:
    """Where the service is reached: ``listen`` with port 0 replaced by the bound port; a Unix socket as given.

    gRPC reports 1 as the "port" of a Unix socket, so ``unix:/run/r.sock`` was logged as listening on ``unix:1``.
    """
    if listen.startswith(("unix:", "unix-abstract:")) or not listen.endswith(":0"):
        return listen
    return f"{listen.removesuffix(':0')}:{port}"


def journal_for(settings: Settings, store: AuditStore | None, observers: Iterable[Observer] = ()) -> Journal:
    """What the manager records through, syncing as the settings say (``audit.fsync_intents``); ``observers``
    (metrics, the log's lines) see every event, audit log on or off."""
    return Journal(store, fsync_intents=settings.audit.fsync_intents, observers=observers)


def _open_audit(settings: Settings, metrics: RunnerMetrics) -> AuditStore | None:
    if not settings.audit.enabled:
        log.warning("the audit log is DISABLED (settings audit.enabled: false): nothing this service does is recorded")
        return None
    store = AuditStore(settings.audit.path, on_commit=metrics.audit_committed)
    store.open()
    retention = settings.audit.retention_s
    kept = f"records older than {retention:g} s go to {settings.audit.exports}" if retention else "kept forever"
    seq, digest = store.head
    # Logged at start and close: a copy kept elsewhere shows if the newest records are ever cut off.
    log.info("audit log: %s (%s), continuing at seq %d, head %s", settings.audit.path, kept, seq, digest)
    return store
