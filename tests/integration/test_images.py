"""The sandbox images, built for real, run their servers under the production hardening."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

import runner.images as img

pytestmark = pytest.mark.integration

HARDENED = ["--network", "none", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--user", "10001:10001"]


def _docker_problem() -> str | None:
    try:
        p = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"docker unusable: {e}"
    return None if p.returncode == 0 else f"no Docker engine answers: {p.stderr.strip()}"


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    problem = _docker_problem()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {problem}")
        pytest.skip(problem)
    return img.ensure_images()


def _rpc(ref: str, argv: Sequence[str], lines: Sequence[dict[str, Any]], want: int,
         entrypoint: bool = True, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Send JSON lines to a hardened container; collect stdout JSON until one has id ``want``."""
    name = f"mcp-runner-test-images-{uuid.uuid4().hex[:8]}"
    cmd = ["docker", "run", "--rm", "-i", "--name", name, *HARDENED]
    cmd += ["--entrypoint", argv[0], ref, *argv[1:]] if entrypoint else [ref, *argv]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdin and proc.stdout
    killer = threading.Timer(timeout, lambda: subprocess.run(["docker", "rm", "-f", name], capture_output=True))
    killer.start()
    got: list[dict[str, Any]] = []
    try:
        for msg in lines:
            proc.stdin.write(json.dumps(msg) + "\n")
        proc.stdin.flush()
        for line in proc.stdout:
            got.append(json.loads(line))  # stdout must be pure JSON lines
            if got[-1].get("id") == want or (want == 0 and got[-1].get("type") in ("ready", "fatal")):
                break
    finally:
        killer.cancel()
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        proc.stdin.close()
        proc.wait()
    return got


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "test-images", "version": "0"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def test_python_image_time_server_answers_initialize(built: dict[str, str]) -> None:
    (first,) = _rpc(built["python-servers"], ["mcp-server-time"], [INIT], want=1)[:1]
    assert first["id"] == 1 and first["result"]["serverInfo"]["name"] == "mcp-time"


def test_node_image_everything_server_answers_initialize(built: dict[str, str]) -> None:
    (first,) = _rpc(built["node-servers"], ["mcp-server-everything"], [INIT], want=1)[:1]
    assert first["id"] == 1 and "everything" in first["result"]["serverInfo"]["name"]


def test_memory_server_persists_to_tmp_under_read_only_root(built: dict[str, str]) -> None:
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "create_entities", "arguments": {"entities": [
                {"name": "x", "entityType": "t", "observations": ["o"]}]}}}
    got = _rpc(built["node-servers"], ["mcp-server-memory"], [INIT, INITIALIZED, call], want=2)
    assert got[-1]["id"] == 2 and not got[-1]["result"].get("isError"), got[-1]


def test_entrypoint_runs_agent_which_reports_ready(built: dict[str, str]) -> None:
    got = _rpc(built["python-servers"], ["mcp-server-time"], [], want=0, entrypoint=False)
    assert got and got[0]["type"] == "ready", got
    assert got[0]["initialize"]["serverInfo"]["name"] == "mcp-time"


def test_image_metadata(built: dict[str, str]) -> None:
    for name, ref in built.items():
        p = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, text=True, check=True)
        cfg = json.loads(p.stdout)[0]["Config"]
        assert cfg["Labels"]["mcp-runner.image"] == name
        if name == "rootfs":
            continue
        if name == "egress":
            assert cfg["Entrypoint"] == ["/usr/bin/tini", "--", "/usr/bin/python3", "-s", "-m", "runner.egress"]
            assert cfg["User"] == "10001:10001" and not cfg["Cmd"]
            continue
        assert cfg["Entrypoint"] == ["/usr/bin/tini", "--", "/opt/agent/bin/python", "-m", "runner.agent", "--"]
        assert not cfg["Cmd"]
        assert cfg["User"] == "10001:10001" and cfg["WorkingDir"] == "/tmp"
        env = dict(e.split("=", 1) for e in cfg["Env"])
        assert env["HOME"] == "/tmp"
        assert "PYTHONPATH" not in env, "the agent's path must not leak into the servers' environment"
        assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_image_contents(built: dict[str, str]) -> None:
    script = ("set -e; test ! -s /opt/agent/pkg/runner/__init__.py; ls /opt/agent/pkg/runner/agent/*.py;"
              "/opt/agent/bin/python -c 'import runner.agent';"
              "! python3 -c 'import runner' 2>/dev/null;"
              "/opt/agent/bin/python -c 'import mcp, importlib.metadata as m; print(m.version(\"mcp\"))';"
              "command -v {bins}")
    bins = {"python-servers": "mcp-server-time mcp-server-fetch mcp-server-git",
            "node-servers": "mcp-server-everything mcp-server-filesystem mcp-server-memory"}
    for name in ("python-servers", "node-servers"):
        p = subprocess.run(["docker", "run", "--rm", *HARDENED, "--entrypoint", "sh", built[name], "-c",
                            script.format(bins=bins[name])], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "2.3.0" in p.stdout


def test_nothing_missing_after_ensure(built: dict[str, str]) -> None:
    assert img.missing_images() == []
    assert all(present for _, _, present in img.list_images())
    assert {n: r for n, r, _ in img.list_images()} == built
