"""Two services on one machine never harm each other, and an authenticated service starts only with a policy file.

Each case starts real services (subprocesses) and checks both sides: the refused service exits non-zero saying
why, and the running one keeps serving its sessions.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from runner.certs import make_dev_certs
from runner.cli_exit import Exit
from tests.integration.conftest import PROFILES, Service, free_port, start_service, stop_service

pytestmark = pytest.mark.integration

NOW = {"timezone": "UTC"}


def directory(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def refused(
    tmp: Path, instance: str, *, port: int | None = None, state_dir: Path | None = None, config: Path = PROFILES,
    exit_code: int = Exit.USAGE,
) -> str:
    """Run a service that must not start (as ``start_service`` would) until it exits; what it said, as text.

    Not ``start_service``: on a port in use, the health check it waits for is answered by the other service.
    """
    env = {
        **os.environ,
        "MCP_RUNNER_INSTANCE": instance,
        "MCP_RUNNER_AUDIT_DB": str(directory(tmp) / f"audit-{instance}.sqlite3"),
        "MCP_RUNNER_STATE_DIR": str(state_dir or tmp / "state"),
        "MCP_RUNNER_MCP_LISTEN": "",  # no door: what it refuses must be the gRPC side's, not a taken 50052
    }
    listen = f"127.0.0.1:{port or free_port()}"
    command = [sys.executable, "-m", "runner.cli", "serve", "--listen", listen, "--config", str(config)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == exit_code, done.stdout + done.stderr  # the CLI's exit-code table
    return done.stdout + done.stderr


def still_serves(service: Service, session_id: str) -> None:
    assert service.process.poll() is None and service.healthy()
    with service.client() as client:
        result = client.call_tool(session_id, "get_current_time", NOW)
    assert not result.is_error and "UTC" in result.text


def test_a_second_service_of_the_instance_refuses_to_start_and_leaves_the_first_ones_sandboxes(
    images: dict[str, str], tmp_path: Path
) -> None:
    instance = f"it-lock-{secrets.token_hex(3)}"
    first = start_service(directory(tmp_path / "first"), instance)
    try:
        with first.client() as client:
            session_id = client.open_session("time").session_id
        (container,) = first.containers()
        # Same instance name and state directory, another audit log and port: before the lock, this one's
        # orphan sweep removed the first service's live sandbox.
        log = refused(tmp_path / "second", instance, state_dir=first.state_dir, exit_code=Exit.PRECONDITION)
        assert f"instance {instance!r} is already running (pid {first.process.pid}, listening on {first.address}" in log
        assert "continuing at seq" not in log and "mcp-runner listening" not in log  # stopped before its audit log
        container.reload()
        assert container.status == "running"
        still_serves(first, session_id)
    finally:
        stop_service(first)


def test_a_service_of_the_instance_with_another_state_directory_leaves_the_first_ones_sandboxes(
    images: dict[str, str], tmp_path: Path
) -> None:
    instance = f"it-owner-{secrets.token_hex(3)}"
    first = start_service(directory(tmp_path / "first"), instance)
    second: Service | None = None
    try:
        with first.client() as client:
            session_id = client.open_session("time").session_id
        (container,) = first.containers()
        # Another state directory holds another instance lock: before owner labels, this one's orphan sweep
        # removed the first service's live sandbox.
        second = start_service(directory(tmp_path / "second"), instance)
        assert "kept 1 sandbox(es) of instance" in second.log()
        container.reload()
        assert container.status == "running"
        still_serves(first, session_id)
        with second.client() as client:
            client.open_session("time")
        assert len(first.containers()) == 2
        first.process.kill()  # its sandbox is an orphan now: the next start of either service removes it
        first.process.wait()
        second.process.terminate()  # not stop_service: that removes every sandbox of the instance name
        assert second.process.wait(30) == 0
        assert len(first.containers()) == 1  # the second one removed its own sandbox only
        second = start_service(tmp_path / "second", instance)
        assert "removed 1 orphaned sandbox(es)" in second.log()
        assert not second.containers()
    finally:
        for service in (first, second):
            if service is not None:
                stop_service(service)


def test_a_service_on_a_port_in_use_refuses_to_start_and_the_first_keeps_its_calls(
    images: dict[str, str], tmp_path: Path
) -> None:
    first = start_service(directory(tmp_path / "first"), f"it-port-{secrets.token_hex(3)}")
    try:
        with first.client() as client:
            session_id = client.open_session("time").session_id
        port = int(first.address.rsplit(":", 1)[1])
        log = refused(tmp_path / "second", f"it-port-{secrets.token_hex(3)}", port=port, exit_code=Exit.UNAVAILABLE)
        assert f"cannot listen on 127.0.0.1:{port}: 127.0.0.1 port {port} is already in use" in log
        assert "continuing at seq" not in log  # refused before its audit log, its lock and its orphan sweep
        for _ in range(5):  # before, calls to the shared port landed on either service
            still_serves(first, session_id)
    finally:
        stop_service(first)


def test_an_mtls_service_without_a_policy_file_refuses_to_start(images: dict[str, str], tmp_path: Path) -> None:
    made = make_dev_certs(tmp_path / "ca")
    config = tmp_path / "settings.yaml"
    config.write_text(
        f"tls: {{cert: {made.server_cert}, key: {made.server_key}, client_ca: {made.ca_cert}}}\n", encoding="utf-8"
    )
    log = refused(tmp_path, f"it-nopolicy-{secrets.token_hex(3)}", config=config)
    assert "refusing to start without a policy file: callers authenticate with client certificates" in log
    assert not (tmp_path / "state").exists()  # refused before the instance lock, the audit log and the engine


def test_a_policy_files_unknown_key_stops_serve_naming_the_key_meant(images: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("callers:\n  alice: {profile: [time]}\n", encoding="utf-8")
    config = tmp_path / "settings.yaml"
    config.write_text("policy: policy.yaml\n", encoding="utf-8")
    env = {
        **os.environ, "MCP_RUNNER_INSTANCE": f"it-policykey-{secrets.token_hex(3)}", "MCP_RUNNER_MCP_LISTEN": "",
        "MCP_RUNNER_AUDIT_DB": str(tmp_path / "audit.sqlite3"), "MCP_RUNNER_STATE_DIR": str(tmp_path / "state"),
    }  # fmt: skip
    command = [sys.executable, "-m", "runner.cli", "serve", "--listen", f"127.0.0.1:{free_port()}", "--config",
               str(config)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr  # a file it names is wrong: the unit does not restart
    meant = "callers.alice.profile: Extra inputs are not permitted (unknown key); did you mean `profiles`?"
    assert meant in done.stderr
