"""The service under test: started as its own process (as callers meet it) or in this process (to see its pool).

Every service the bench starts has its own instance name, state directory and audit database in a temporary
directory: two services cannot share an instance or a database, and the bench's records do not belong in the
operator's log. Its settings are the user's file (or none) with the section's changes, written as a YAML file
beside the user's (so relative paths in it still resolve) and removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from runner.api.auth import Authenticator
from runner.api.server import start_server
from runner.audit.store import AuditStore
from runner.client import AsyncRunnerClient
from runner.config_document import read_document
from runner.errors import Unavailable
from runner.policy import PolicyStore
from runner.sandbox.docker import DockerBackend
from runner.service import bound_address, journal_for
from runner.sessions.manager import SessionManager
from runner.settings_file import load_settings

BENCH_INSTANCE = "bench"
BENCH_CALLER_POLICY = "bench-policy.yaml"
OPEN_DEADLINE_S = 600.0
"""Opens queue for a boot slot; many at once on a small machine take minutes, not forever."""


def instance_name() -> str:
    return f"{BENCH_INSTANCE}-{secrets.token_hex(3)}"


def derived_settings(document: Mapping[str, Any], *, replace: Mapping[str, Any] | None = None,
                     audit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``document`` with the top-level keys in ``replace`` replaced and the keys in ``audit`` merged into its audit."""
    out = {**document, **(replace or {})}
    if audit:
        out["audit"] = {**(document.get("audit") or {}), **audit}
    return out


@contextlib.contextmanager
def settings_file(config: str | None, *, replace: Mapping[str, Any] | None = None,
                  audit: Mapping[str, Any] | None = None) -> Iterator[str]:
    """A settings file: ``config`` (or no settings at all) changed by ``derived_settings``, removed afterwards."""
    with contextlib.ExitStack() as stack:
        if config is None:
            document: dict[str, Any] = {}
            directory, stem = stack.enter_context(tempfile.TemporaryDirectory()), "settings"
        else:
            source = Path(config)
            document = read_document(source, "settings file")
            directory, stem = str(source.resolve().parent), source.stem
        fd, name = tempfile.mkstemp(prefix=f".{stem}-bench-", suffix=".yaml", dir=directory)
        stack.callback(os.unlink, name)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            yaml.safe_dump(derived_settings(document, replace=replace, audit=audit), out)
        yield name


def capacity(sessions: int, directory: Path) -> dict[str, Any]:
    """Settings for a service one caller can hold ``sessions`` sessions in, at any pace.

    The service's own cap is raised to ``sessions``, and a policy file of the bench's own replaces whatever
    policy the settings name: any caller may open any profile, with no cap on its sessions and no rate (the
    embedded default policy has neither, but a user's policy file may).
    """
    policy = directory / BENCH_CALLER_POLICY
    policy.write_text(yaml.safe_dump({"default_caller": {"profiles": ["*"]}}), encoding="utf-8")
    return {"max_sessions": sessions, "policy": str(policy)}


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


async def _listening(address: str, process: asyncio.subprocess.Process) -> None:
    """Returns once ``address`` accepts a connection, or the process exited (its caller reports that)."""
    host, _, port = address.rpartition(":")
    for _ in range(150):
        if process.returncode is not None:
            return
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            await writer.wait_closed()
            return
        await asyncio.sleep(0.2)
    raise Unavailable(f"the service's MCP door did not listen on {address} within 30 s")


@dataclass(frozen=True)
class Served:
    """A service running in its own process."""

    address: str
    instance: str
    pid: int
    door: str = ""
    """The MCP door's ``host:port`` when started with one, else ""."""


@contextlib.asynccontextmanager
async def served(config: str | None, *, backend: str | None = None, door: bool = False) -> AsyncIterator[Served]:
    """The real service in its own process on a free loopback port, as callers meet it; ``backend`` is passed as
    ``--backend``, which outranks env MCP_RUNNER_BACKEND (None: the service chooses as it would for a user);
    ``door``: its MCP door too, on a free loopback port of its own."""
    address = free_address()
    # The door only when asked for, never on 50052: services side by side (or a developer's own) would contend for it.
    door_address = free_address() if door else ""
    command = [sys.executable, "-m", "runner.cli", "serve", "--listen", address, "--mcp-listen", door_address]
    if config:
        command += ["--config", config]
    if backend:
        command += ["--backend", backend]
    instance = instance_name()
    with tempfile.TemporaryFile() as log, tempfile.TemporaryDirectory() as state:
        env = {
            **os.environ,
            "MCP_RUNNER_INSTANCE": instance,
            "MCP_RUNNER_STATE_DIR": state,
            "MCP_RUNNER_AUDIT_DB": f"{state}/audit.sqlite3",
        }
        process = await asyncio.create_subprocess_exec(*command, stdout=log, stderr=log, env=env)
        try:
            async with AsyncRunnerClient(address) as client:
                for _ in range(300):
                    if process.returncode is not None:
                        break
                    with contextlib.suppress(grpc.RpcError):
                        await client.list_sessions(timeout=1)
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise Unavailable(f"the service did not answer on {address} within 60 s")
            if door_address:
                await _listening(door_address, process)  # it starts after gRPC
            if process.returncode is not None:
                log.seek(0)
                raise Unavailable(f"the service exited: {log.read()[-2000:].decode(errors='replace')}")
            yield Served(address, instance, process.pid, door_address)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await process.wait()


async def open_all(client: AsyncRunnerClient, profile: str, count: int) -> list[str | BaseException]:
    """``count`` sessions asked for at once: each one's id, or what its open raised."""
    opened = await asyncio.gather(
        *(client.open_session(profile, timeout=OPEN_DEADLINE_S) for _ in range(count)), return_exceptions=True
    )
    return [item.session_id if not isinstance(item, BaseException) else item for item in opened]


async def close_all(client: AsyncRunnerClient, session_ids: Sequence[str]) -> list[BaseException]:
    """Close every session at once; what the closes raised."""
    closed = await asyncio.gather(*(client.close_session(s) for s in session_ids), return_exceptions=True)
    return [item for item in closed if isinstance(item, BaseException)]


@dataclass(frozen=True)
class InProcess:
    """A service in this process: its address, and its session manager for what gRPC does not show."""

    address: str
    manager: SessionManager


@contextlib.asynccontextmanager
async def in_process(config: str) -> AsyncIterator[InProcess]:
    """The service wired as ``runner.service`` wires it (Docker backend, policy, audit log, gRPC on a free loopback
    port), in this event loop. Without the instance lock (its instance name is fresh, nobody else can hold it) and
    without the guard's memory across restarts (pins and rate buckets live as long as it does).
    """
    with tempfile.TemporaryDirectory() as state:
        loaded = load_settings(config)
        settings = dataclasses.replace(
            loaded, listen="127.0.0.1:0", instance=instance_name(), state_dir=Path(state),
            audit=dataclasses.replace(loaded.audit, path=Path(state) / "audit.sqlite3"),
        )
        policy = PolicyStore(settings.policy)
        store = AuditStore(settings.audit.path) if settings.audit.enabled else None
        if store is not None:
            store.open()
        backend = DockerBackend(stderr_tail_bytes=settings.stderr_tail_bytes)
        manager = SessionManager(backend, settings, policy, journal_for(settings, store))
        try:
            await manager.start()
            authenticator = Authenticator(settings.auth, lambda digest: policy.current.token_owner(digest))
            server = await start_server(manager, settings.listen, authenticator=authenticator, tls=settings.tls)
            try:
                yield InProcess(bound_address(settings.listen, server.port), manager)
            finally:
                await server.stop(0)
        finally:
            await manager.shutdown()
            await backend.settle()
            # Whatever the shutdown left (a sandbox still booting for the pool, say) goes too: the instance is ours.
            await backend.sweep_orphans(settings.instance)
            backend.close()
            if store is not None:
                store.close()
