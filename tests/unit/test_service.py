"""Start-up refusals of the service: unsafe settings and a running instance stop it before the engine is touched;
an address in use stops it too, and the port it binds is never shared."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from runner import service
from runner.api.auth import Authenticator
from runner.api.server import RunningServer, start_server
from runner.config import AuditConfig, AuthConfig, ConfigError, LogConfig, Settings, TlsConfig
from runner.errors import FailedPrecondition, Unavailable
from runner.sandbox.base import OWNER_LABEL, SandboxSpec
from runner.sandbox.docker import DockerBackend
from runner.service import InstanceLock, run_service

MTLS = TlsConfig(cert=Path("server.pem"), key=Path("server-key.pem"), client_ca=Path("ca.pem"))


@pytest.fixture(autouse=True)
def _no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refusal here must come before the service reaches for Docker (and its orphan sweep)."""

    def reached(*_: object, **__: object) -> None:
        raise AssertionError("the service reached the engine")

    monkeypatch.setattr(service, "backend_for", reached)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def settings(tmp_path: Path, audit: str = "audit.sqlite3", **changes: object) -> Settings:
    base = Settings(state_dir=tmp_path / "state", instance="blue", audit=AuditConfig(path=tmp_path / audit))
    return Settings(**{**base.__dict__, **changes})


async def test_an_authenticated_service_without_a_policy_file_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="refusing to start without a policy file: callers authenticate with client"):
        await run_service(settings(tmp_path, tls=MTLS, auth=AuthConfig(mtls=True)))
    assert not (tmp_path / "state").exists()  # refused before even the instance lock


async def test_a_second_service_of_an_instance_refuses_to_start_whatever_its_audit_path(tmp_path: Path) -> None:
    first = settings(tmp_path, audit="first.sqlite3")
    lock = InstanceLock.acquire(first.state_dir, first.instance, "127.0.0.1:50051")
    try:
        with pytest.raises(FailedPrecondition) as refused:
            # A port free now, not a fixed one: 50052 lies in the ephemeral range, and a client's connection held it.
            await run_service(settings(tmp_path, audit="second.sqlite3", listen=f"127.0.0.1:{free_port()}"))
    finally:
        lock.release()
    message = refused.value.message
    assert message.startswith("instance 'blue' is already running (pid ")
    assert f"pid {os.getpid()}, listening on 127.0.0.1:50051, since 20" in message
    assert str(tmp_path / "state" / "instance-blue.lock") in message
    assert not (tmp_path / "second.sqlite3").exists()  # stopped before opening its audit log, too


def test_the_lock_is_per_instance_and_free_again_once_released(tmp_path: Path) -> None:
    blue = InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:1")
    InstanceLock.acquire(tmp_path, "green", "127.0.0.1:2").release()
    with pytest.raises(FailedPrecondition, match="'blue' is already running"):
        InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:3")
    blue.note("127.0.0.1:4000")  # the bound port, once known
    holder = json.loads((tmp_path / "instance-blue.lock").read_text())
    assert (holder["pid"], holder["listen"]) == (os.getpid(), "127.0.0.1:4000")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", holder["started"])
    blue.release()
    InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:5").release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    hold = (
        "import sys, time; from pathlib import Path; from runner.service import InstanceLock; "
        f"InstanceLock.acquire(Path({str(tmp_path)!r}), 'blue', '127.0.0.1:7'); print('held', flush=True); "
        "time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(FailedPrecondition, match=f"pid {holder.pid}, listening on 127.0.0.1:7"):
            InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:8")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:8").release()  # the kernel dropped the dead holder's lock


def test_an_unwritable_state_directory_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match="MCP_RUNNER_STATE_DIR"):
        InstanceLock.acquire(tmp_path / "file" / "state", "blue", "127.0.0.1:1")


# ------------------------------------------------------------------------------- whose sandboxes the sweep removes


def test_another_state_directorys_running_service_keeps_its_sandboxes(tmp_path: Path) -> None:
    """Same instance name, another state directory: two locks, so the sweep must ask the owner's lock."""
    mine = InstanceLock.acquire(tmp_path / "mine", "blue", "127.0.0.1:1")
    theirs = InstanceLock.acquire(tmp_path / "their state", "blue", "127.0.0.1:2")
    try:
        assert mine.owner != theirs.owner
        assert not mine.abandoned(theirs.label)  # theirs runs: its sandboxes stay
        assert mine.abandoned(mine.label)  # an earlier run of this lock left them
        assert mine.abandoned(None)  # made before sandboxes named their owner
        away = json.loads(theirs.label) | {"seen_from": "another-host mnt:[1]"}
        assert not mine.abandoned(json.dumps(away))  # a lock path elsewhere cannot be checked from here
        assert not mine.abandoned("not json")
    finally:
        theirs.release()
    assert mine.abandoned(theirs.label)  # nobody holds it any more
    (tmp_path / "their state" / "instance-blue.lock").unlink()
    assert not mine.abandoned(theirs.label)  # gone: whoever held it may hold it still, so it cannot be asked
    mine.release()


def test_a_lock_file_removed_under_its_running_holder_still_protects_its_sandboxes(tmp_path: Path) -> None:
    """The state directory cleaned while the service runs: the next service locks a new file at the same path."""
    first = InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:1")
    (tmp_path / "instance-blue.lock").unlink()
    second = InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:2")
    try:
        assert not second.abandoned(first.label)
    finally:
        second.release()
        first.release()


def test_a_killed_owners_sandboxes_are_abandoned(tmp_path: Path) -> None:
    hold = (
        "import sys, time; from pathlib import Path; from runner.service import InstanceLock; "
        f"lock = InstanceLock.acquire(Path({str(tmp_path / 'theirs')!r}), 'blue', '127.0.0.1:7'); "
        "print(lock.label, flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE)
    mine = InstanceLock.acquire(tmp_path / "mine", "blue", "127.0.0.1:8")
    try:
        assert holder.stdout is not None
        label = holder.stdout.readline().decode().strip()
        assert not mine.abandoned(label)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert mine.abandoned(label)
    mine.release()


def test_the_owner_id_outlives_the_run_so_a_restart_elsewhere_sweeps_its_own(tmp_path: Path) -> None:
    """A service run in a new container each time keeps its state directory but not its host name."""
    first = InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:1")
    label, owner = first.label, first.owner
    first.release()
    again = InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:1")
    assert again.owner == owner
    assert again.abandoned(json.dumps(json.loads(label) | {"seen_from": "old-container mnt:[2]"}))
    again.release()


def test_an_earlier_runs_sandboxes_are_swept_even_if_the_lock_file_lost_its_owner_id(tmp_path: Path) -> None:
    first = InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:1")
    label = first.label
    first.release()
    (tmp_path / "instance-blue.lock").write_bytes(b"")  # emptied, say by a disk full or a hand
    again = InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:1")
    assert again.owner != first.owner
    assert again.abandoned(label)  # still this very lock file: this service holds it now
    again.release()


def test_a_holder_record_cut_short_by_a_crash_keeps_the_owner_id(tmp_path: Path) -> None:
    first = InstanceLock.acquire(tmp_path, "blue", "[::1]:" + "1" * 40)
    shorter = {"owner": first.owner, "pid": 1, "listen": "127.0.0.1:1", "started": "2026"}
    with (tmp_path / "instance-blue.lock").open("r+b") as recorded:
        recorded.write(json.dumps(shorter).encode())  # what a crash between the write and the cut leaves
    first.release()
    again = InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:2")
    assert again.owner == first.owner
    again.release()


def test_a_copied_state_directory_running_here_keeps_its_sandboxes(tmp_path: Path) -> None:
    first = InstanceLock.acquire(tmp_path / "a", "blue", "127.0.0.1:1")
    first.release()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "instance-blue.lock").write_bytes((tmp_path / "a" / "instance-blue.lock").read_bytes())
    mine = InstanceLock.acquire(tmp_path / "a", "blue", "127.0.0.1:1")
    copy = InstanceLock.acquire(tmp_path / "b", "blue", "127.0.0.1:2")
    try:
        assert mine.owner == copy.owner
        assert not mine.abandoned(copy.label)
    finally:
        copy.release()
        mine.release()


def test_a_sweep_probing_the_lock_does_not_refuse_its_owners_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:1").release()
    probe = os.open(tmp_path / "instance-blue.lock", os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH)  # what another service's sweep holds, for microseconds
    waits: list[float] = []

    def probe_done(seconds: float) -> None:  # the probe ends while the owner waits to try again
        if not waits:
            os.close(probe)
        waits.append(seconds)

    monkeypatch.setattr(service.time, "sleep", probe_done)
    InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:1").release()
    assert len(waits) == 1


class FakeEngine:
    """The docker-py calls the sweep makes, over made-up containers and networks."""

    def __init__(self, owners: dict[str, str | None]) -> None:
        self.listed = [
            {"Id": name, "Labels": {"mcp-runner.instance": "blue"} | ({OWNER_LABEL: o} if o is not None else {})}
            for name, o in owners.items()
        ]
        self.removed: list[str] = []

    def containers(self, **_: object) -> list[dict[str, Any]]:
        return self.listed

    def networks(self, **_: object) -> list[dict[str, Any]]:
        return [n | {"Id": "net-" + n["Id"]} for n in self.listed]

    def remove_container(self, container_id: str, **_: object) -> None:
        self.removed.append(container_id)

    def remove_network(self, network_id: str) -> None:
        self.removed.append(network_id)


async def test_the_sweep_removes_only_sandboxes_of_no_running_service(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mine = InstanceLock.acquire(tmp_path / "mine", "blue", "127.0.0.1:1")
    theirs = InstanceLock.acquire(tmp_path / "theirs", "blue", "127.0.0.1:2")
    gone = InstanceLock.acquire(tmp_path / "gone", "blue", "127.0.0.1:3")
    gone.release()
    engine = FakeEngine({"earlier": mine.label, "legacy": None, "live": theirs.label, "dead": gone.label})
    backend = DockerBackend(owner=mine.label, abandoned=mine.abandoned)
    backend._client = engine
    try:
        assert await backend.sweep_orphans("blue") == 3
        assert sorted(engine.removed[:3]) == ["dead", "earlier", "legacy"]  # removed side by side, in any order
        assert engine.removed[3:] == ["net-earlier", "net-legacy", "net-dead"]
        assert "kept 1 sandbox(es) of instance 'blue'" in caplog.text
        assert str((tmp_path / "theirs" / "instance-blue.lock").resolve()) in caplog.text  # who owns them
        assert backend._labels(SandboxSpec(session_id="s", instance="blue", image="time", command=()))[
            OWNER_LABEL
        ] == mine.label
    finally:
        backend.close()
        theirs.release()
        mine.release()


def test_a_state_directory_without_locks_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(service.fcntl, "flock", no_locks)
    with pytest.raises(ConfigError, match=r"cannot lock the instance lock .*: No locks available; put the state"):
        InstanceLock.acquire(tmp_path, "blue", "127.0.0.1:1")


# ------------------------------------------------------------------------------------------------ the address


async def test_a_service_on_an_address_in_use_stops_before_its_lock_and_sweep(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(Unavailable, match=f"127.0.0.1 port {port} is already in use"):
            await run_service(settings(tmp_path, listen=f"127.0.0.1:{port}"))
    assert not (tmp_path / "state").exists()



async def serve(listen: str) -> RunningServer:
    """The real gRPC server; its servicer is never called here, so it needs no session manager."""
    return await start_server(cast(Any, None), listen, authenticator=Authenticator(AuthConfig(), lambda _: None))


async def test_a_second_server_on_a_port_in_use_fails_naming_it() -> None:
    first = await serve("127.0.0.1:0")
    try:
        with pytest.raises(Unavailable, match=f"cannot listen on 127.0.0.1:{first.port}: 127.0.0.1 port .* in use"):
            await serve(f"127.0.0.1:{first.port}")
    finally:
        await first.stop(0)


async def test_a_name_that_binds_only_half_its_addresses_fails() -> None:
    with socket.socket() as other:  # another program on 127.0.0.1; gRPC alone would bind ::1 and carry on
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(Unavailable, match=f"cannot listen on localhost:{port}: 127.0.0.1 port {port} is already"):
            await serve(f"localhost:{port}")


async def test_the_bound_port_is_not_shared_with_a_later_reuseport_socket() -> None:
    running = await serve("127.0.0.1:0")
    try:
        with socket.socket() as joiner, pytest.raises(OSError) as refused:
            joiner.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # what gRPC servers do by default
            joiner.bind(("127.0.0.1", running.port))
        assert refused.value.errno == errno.EADDRINUSE
    finally:
        await running.stop(0)


async def test_localhost_is_refused_when_the_ipv6_loopback_port_is_taken() -> None:
    """gRPC's resolver gives ``localhost`` ::1 as well, even where the system's knows only 127.0.0.1."""
    first = await serve("[::1]:0")
    try:
        with pytest.raises(Unavailable, match=f"cannot listen on localhost:{first.port}: ::1 port {first.port} is"):
            await serve(f"localhost:{first.port}")
    finally:
        await first.stop(0)


@pytest.mark.parametrize("spelling", ["unix:{}", "unix://{}"])
async def test_a_unix_socket_a_service_listens_on_is_not_taken_over(tmp_path: Path, spelling: str) -> None:
    """gRPC's bind unlinks a socket file in its way: the first service would lose its callers to the second."""
    path = tmp_path / "with space" / "runner.sock"
    path.parent.mkdir()
    first = await serve(f"unix:{path}")
    try:
        inode = path.stat().st_ino
        with pytest.raises(Unavailable, match="a program is already listening on that socket"):
            await serve(spelling.format(path))
        assert path.stat().st_ino == inode
    finally:
        await first.stop(0)
    second = await serve(f"unix:{path}")  # a stale socket file, nobody listening: replaced as before
    await second.stop(0)


async def test_signals_during_start_up_are_the_services_a_stop_is_honoured_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGHUP sent while the orphan sweep ran killed the process (the default action), a SIGTERM ended it with
    the audit log unclosed; now a reload is a reload and a stop ends the start cleanly, the lock free again."""
    from runner.sandbox.fake import FakeBackend

    class SignalledDuringSweep(FakeBackend):
        async def sweep_orphans(self, instance: str) -> int:
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(5):  # the loop reads its signal pipe within a few turns
                await asyncio.sleep(0)
            return 0

        async def settle(self) -> None:
            return None

        def close(self) -> None:
            return None

    def default_action(signum: int, _: object) -> None:
        raise AssertionError(f"signal {signum} reached its default action")

    def never_bound(*_: object, **__: object) -> None:
        raise AssertionError("the server was started after a stop was asked for")

    monkeypatch.setattr(service, "backend_for", lambda *_, **__: SignalledDuringSweep(lambda _: cast(Any, None)))
    monkeypatch.setattr(service, "start_server", never_bound)
    policy = tmp_path / "policy.yaml"
    policy.write_text("default_caller: {profiles: [time]}\n")
    previous = {sig: signal.signal(sig, default_action) for sig in (signal.SIGHUP, signal.SIGTERM)}
    try:
        await run_service(settings(tmp_path, policy=policy))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    InstanceLock.acquire(tmp_path / "state", "blue", "127.0.0.1:1").release()


@pytest.mark.parametrize(
    ("listen", "port", "address"),
    [
        ("127.0.0.1:0", 4321, "127.0.0.1:4321"),
        ("[::]:0", 4321, "[::]:4321"),
        ("0.0.0.0:50051", 50051, "0.0.0.0:50051"),
        ("unix:/run/r.sock", 1, "unix:/run/r.sock"),  # was logged and recorded as "unix:1"
        ("unix:/run/r:0", 1, "unix:/run/r:0"),
        ("unix-abstract:r", 1, "unix-abstract:r"),
    ],
)
def test_the_address_logged_and_recorded_is_where_the_service_is_reached(listen: str, port: int, address: str) -> None:
    assert service.bound_address(listen, port) == address


@pytest.mark.parametrize("fsync_intents", [False, True])
def test_the_service_journal_syncs_notes_and_intents_as_its_settings_say(tmp_path: Path, fsync_intents: bool) -> None:
    from runner.audit.records import AuditEvent
    from runner.audit.store import AuditStore
    from tests.unit.test_audit_store import commit_modes

    store = AuditStore(tmp_path / "audit.sqlite3")
    store.open()
    try:
        chosen = Settings(state_dir=tmp_path / "state", audit=AuditConfig(path=store.path, fsync_intents=fsync_intents))
        journal = service.journal_for(chosen, store)
        with commit_modes(store) as modes:
            journal.note("policy", "s1", "alice", {"verdict": "allow"})
            store.submit(AuditEvent("probe", "", "", {}), durable=False).result(timeout=10)  # after the note's commit
    finally:
        store.close()
    assert modes[0] == ("FULL" if fsync_intents else "NORMAL")


async def test_a_service_leaves_the_processs_logging_alone(tmp_path: Path) -> None:
    """``serve`` sets the log up once; a second service in one process must not replace the first's handlers."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with pytest.raises(ConfigError):
        await run_service(settings(tmp_path, tls=MTLS, auth=AuthConfig(mtls=True), log=LogConfig("error", "json")))
    assert root.handlers == handlers and root.level == level
