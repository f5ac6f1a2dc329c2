"""The service image run as deploy/compose/compose.yaml and as deploy/systemd/mcp-runner.service say, for real.

Each file is read into ``docker run`` options by tests/unit/test_deploy_units.py (compose key by key, the unit's
``ExecStart`` with its environment file's variables); this module starts that container on this machine's engine
with only what a test must change: its own container and volume names, free loopback ports instead of 50051/50052,
a copy of deploy/compose/config whose policy lists this test's token, its own instance name (so that its sandboxes
are told apart from anyone else's), and a label. The unit's command runs in the foreground, as systemd runs it.
Then: ``mcp-runner health`` inside reports SERVING, Docker's own health check turns healthy, a caller on the host
makes one call through the published port (its session a sibling container on the same engine), and the stop the
file prescribes removes every sandbox and leaves an intact audit log in the state volume.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest
import yaml

from runner.api.auth import hash_token, new_token
from runner.client import RunnerClient
from runner.sandbox.base import INSTANCE_LABEL
from tests.integration.conftest import free_port
from tests.unit.test_deploy_units import CONFIG, DockerRun, compose_run, unit_command, unit_run

pytestmark = pytest.mark.integration

TEST_LABEL = "mcp-runner.test"
DOCKER_SOCKET = Path("/var/run/docker.sock")
READY_TIMEOUT_S = 120.0
HEALTHY_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def service_image(images: dict[str, str]) -> str:
    from runner.images import ensure_images

    return ensure_images(["service"])["service"]


def for_this_run(run: DockerRun, changes: dict[tuple[str, str], str], extra: list[tuple[str, str]]) -> DockerRun:
    """``run`` with the ``(option, value)`` pairs in ``changes`` given new values, every one of them found (a file
    that changed under the test fails here, not somewhere later), and ``extra`` options added."""
    left = dict(changes)
    options = []
    for option, value in run.options:
        options.append((option, left.pop((option, value), value)))
    assert not left, f"not in the file any more: {sorted(left)}"
    return DockerRun((*extra, *options), run.image, run.command)


@dataclass
class Running:
    name: str
    address: str
    token: str
    instance: str
    volume: str
    image: str
    process: subprocess.Popen[bytes] | None
    """The unit's attached ``docker run``, as systemd would hold it; None for compose (detached)."""
    log: Path

    def output(self) -> str:
        if self.process is not None:
            return self.log.read_text(errors="replace")
        done = subprocess.run(["docker", "logs", "--tail", "60", self.name], capture_output=True, text=True)
        return done.stdout + done.stderr

    def inspect(self) -> dict[str, Any] | None:
        done = subprocess.run(["docker", "inspect", self.name], capture_output=True, text=True)
        if done.returncode != 0:
            return None
        found: dict[str, Any] = json.loads(done.stdout)[0]
        return found

    def sandboxes(self) -> list[Any]:
        return docker.from_env().containers.list(all=True, filters={"label": f"{INSTANCE_LABEL}={self.instance}"})


def _config_copy(tmp: Path, token: str) -> Path:
    """deploy/compose/config with the test caller's digest in the policy, readable by the image's user 10001."""
    config = tmp / "config"
    shutil.copytree(CONFIG, config)
    policy = yaml.safe_load((config / "policy.yaml").read_text())
    assert policy["callers"]["agent"]["tokens"] == []
    policy["callers"]["agent"]["tokens"] = [hash_token(token)]
    (config / "policy.yaml").write_text(yaml.safe_dump(policy))
    config.chmod(0o755)
    for path in config.iterdir():
        path.chmod(0o644)
    return config


@pytest.fixture(params=["compose", "systemd"])
def running(request: pytest.FixtureRequest, service_image: str, tmp_path: Path) -> Iterator[Running]:
    tag = secrets.token_hex(4)
    name, volume, instance = f"mcpr-test-{tag}-service", f"mcpr-test-{tag}-state", f"svc-{tag}"
    token = new_token()
    config = _config_copy(tmp_path, token)
    grpc_port, door_port = free_port(), free_port()
    env = {"MCP_RUNNER_IMAGE": service_image, "DOCKER_GID": str(DOCKER_SOCKET.stat().st_gid)}
    published = {
        ("--publish", "127.0.0.1:50051:50051"): f"127.0.0.1:{grpc_port}:50051",
        ("--publish", "127.0.0.1:50052:50052"): f"127.0.0.1:{door_port}:50052",
    }
    extra = [("--label", f"{TEST_LABEL}=service-container"), ("--env", f"MCP_RUNNER_INSTANCE={instance}")]
    log = tmp_path / "service.log"
    process = None
    if request.param == "compose":
        run = for_this_run(compose_run(env), {
            **published,
            ("--volume", f"{CONFIG}:/etc/mcp-runner:ro"): f"{config}:/etc/mcp-runner:ro",
            ("--volume", "mcp-runner_state:/var/lib/mcp-runner"): f"{volume}:/var/lib/mcp-runner",
        }, [("--detach", ""), ("--name", name), *extra])
        started = subprocess.run(run.argv(), capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
    else:
        pre = unit_command("ExecStartPre", env)
        assert pre[-1] == "mcp-runner"
        subprocess.run([*pre[:-1], name], capture_output=True, timeout=60)  # as systemd would, on our name
        run = for_this_run(unit_run(env), {
            **published,
            ("--name", "mcp-runner"): name,
            ("--volume", "/etc/mcp-runner:/etc/mcp-runner:ro"): f"{config}:/etc/mcp-runner:ro",
            ("--volume", "mcp-runner_state:/var/lib/mcp-runner"): f"{volume}:/var/lib/mcp-runner",
        }, extra)
        with log.open("wb") as out:
            process = subprocess.Popen(["/usr/bin/docker", *run.argv()[1:]], stdout=out, stderr=subprocess.STDOUT)
    started_run = Running(name, f"127.0.0.1:{grpc_port}", token, instance, volume, service_image, process, log)
    try:
        yield started_run
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, timeout=60)
        if process is not None:
            process.wait(60)
        for container in started_run.sandboxes():
            container.remove(force=True)
        subprocess.run(["docker", "volume", "rm", "--force", volume], capture_output=True, timeout=60)


def _wait_serving(service: Running) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    said = ""
    while time.monotonic() < deadline:
        state = service.inspect()
        if state is not None and not state["State"]["Running"] and state["State"]["Status"] != "created":
            pytest.fail(f"the service container stopped ({state['State']}):\n{service.output()}")
        if state is not None:
            probe = subprocess.run(
                ["docker", "exec", service.name, "mcp-runner", "health", "--address", "127.0.0.1:50051",
                 "--timeout", "4"], capture_output=True, text=True, timeout=30,
            )
            said = probe.stdout + probe.stderr
            if probe.returncode == 0:
                assert "SERVING" in probe.stdout, said
                return
        time.sleep(1)
    pytest.fail(f"`mcp-runner health` never reported SERVING (last: {said!r}):\n{service.output()}")


def _wait_healthy(service: Running) -> None:
    """Docker's own health check, as the file declares it, must pass too."""
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = service.inspect()
        assert state is not None, service.output()
        health = state["State"].get("Health") or {}
        if health.get("Status") == "healthy":
            return
        time.sleep(1)
    pytest.fail(f"Docker never found the container healthy: {health}")


def test_the_service_container_serves_and_stops_clean(running: Running) -> None:
    _wait_serving(running)
    state = running.inspect()
    assert state is not None
    host = state["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert any(opt.startswith("no-new-privileges") for opt in host["SecurityOpt"])
    assert host["GroupAdd"] == [str(DOCKER_SOCKET.stat().st_gid)] and state["Config"]["User"] == "10001:10001"
    _wait_healthy(running)

    with RunnerClient(running.address) as anonymous, pytest.raises(grpc.RpcError) as refused:
        anonymous.list_sessions(timeout=10)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with RunnerClient(running.address, token=running.token) as client, client.session("time") as opened:
        result = client.call_tool(opened.session_id, "get_current_time", {"timezone": "UTC"}, timeout=60)
        assert not result.is_error and "UTC" in result.text, result.text
        sessions = {c.labels.get("mcp-runner.session") for c in running.sandboxes()}
        assert opened.session_id in sessions, "the session's sandbox is a sibling container on the host's engine"

    stop = ["docker", "stop", "--time", "30", running.name]  # the unit's ExecStop; compose stops the same way
    assert subprocess.run(stop, capture_output=True, timeout=90).returncode == 0
    if running.process is not None:
        assert running.process.wait(60) == 0, running.output()  # a graceful exit: the unit is not restarted
        assert running.inspect() is None, "--rm removed the container"
    assert running.sandboxes() == [], "the service removed every sandbox (warm ones too) when it stopped"
    verified = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
         "--volume", f"{running.volume}:/var/lib/mcp-runner", running.image,
         "audit", "verify", "--db", f"/var/lib/mcp-runner/audit-{running.instance}.sqlite3"],
        capture_output=True, text=True, timeout=120,
    )
    assert verified.returncode == 0 and "intact" in verified.stdout, verified
