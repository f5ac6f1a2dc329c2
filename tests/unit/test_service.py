"""Start-up refusals of the service: unsafe settings and a running instance stop it before the engine is touched."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner import service
from runner.config import AuditConfig, AuthConfig, ConfigError, Settings, TlsConfig
from runner.errors import FailedPrecondition
from runner.service import InstanceLock, run_service

MTLS = TlsConfig(cert=Path("server.pem"), key=Path("server-key.pem"), client_ca=Path("ca.pem"))


@pytest.fixture(autouse=True)
def _no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refusal here must come before the service reaches for Docker (and its orphan sweep)."""

    def reached(**_: object) -> None:
        raise AssertionError("the service reached the engine")

    monkeypatch.setattr(service, "DockerBackend", reached)


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
            await run_service(settings(tmp_path, audit="second.sqlite3", listen="127.0.0.1:50052"))
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
