"""Running the image build's external tools, and checking a built image before it is kept.

Leaf of the image modules (``runner.images``, ``runner.service_image`` import it): a tool's output streams
through ``log`` and a failure raises ``ImageBuildError`` naming the step with the output's tail; the smoke
checks start a new image hardened as in production and expect an MCP initialize (a server image) or a proxy's
ready line (the egress image).
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from runner.egress.rules import ProxyConfig

Log = Callable[[str], None]


class ImageBuildError(Exception):
    """A build step failed; the message names the step and ends with its output's tail."""


# Every server the images ship, checked with an MCP initialize after a build.
SMOKE_COMMANDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "python-servers": (("mcp-server-time",), ("mcp-server-fetch",), ("mcp-server-git",)),
    "node-servers": (("mcp-server-everything",), ("mcp-server-filesystem", "/tmp"), ("mcp-server-memory",)),
}
INITIALIZE_LINE = json.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "mcp-runner-image-check", "version": "0"}},
})


def run(cmd: Sequence[str], step: str, log: Log, *, prefix: str, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> None:
    """Run ``cmd``, stream its output through ``log``, raise ImageBuildError with its tail."""
    tail: deque[str] = deque(maxlen=40)
    try:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace", cwd=cwd,
                                env=env)
    except FileNotFoundError as e:
        raise ImageBuildError(f"{step}: {cmd[0]!r} is not installed or not on PATH") from e
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail.append(line)
        log(f"  [{prefix}] {line}")
    rc = proc.wait()
    if rc != 0:
        raise ImageBuildError(failure(step, rc, cmd, tail))


def failure(step: str, rc: int, cmd: Sequence[str], tail: Iterable[str]) -> str:
    shown = " ".join(cmd) if len(cmd) < 12 else " ".join([*cmd[:11], "..."])
    return f"{step} failed (exit {rc}): {shown}\n--- last output ---\n" + "\n".join(tail)


def smoke_check_egress(ref: str, log: Log, timeout: float = 30.0) -> None:
    """The proxy, hardened and without network, must take a configuration and say it listens."""
    cmd = ["docker", "run", "--rm", "-i", "--network", "none", "--read-only", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges", ref]
    config = json.dumps(ProxyConfig(rules=(), listen_host="127.0.0.1").to_wire())
    try:
        done = subprocess.run(cmd, input=config + "\n", capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(failure(f"smoke check of {ref}", -1, cmd, [str(exc)])) from None
    first = done.stdout.splitlines()[:1]
    if done.returncode != 0 or not first or json.loads(first[0]).get("type") != "ready":
        raise ImageBuildError(failure(f"smoke check of {ref} (proxy ready line)", done.returncode, cmd,
                                       (done.stdout + done.stderr).splitlines()[-20:]))
    log(f"  [check] egress proxy: ready ({first[0]})")


def smoke_check(ref: str, argv: Sequence[str], log: Log, timeout: float = 60.0) -> None:
    """Start ``argv`` in ``ref`` hardened as in production; it must answer an MCP initialize."""
    cname = f"mcp-runner-imagecheck-{uuid.uuid4().hex[:10]}"
    cmd = ["docker", "run", "--rm", "-i", "--name", cname, "--network", "none", "--read-only",
           "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "--user", "10001:10001", "--entrypoint", argv[0], ref, *argv[1:]]
    rm = ["docker", "rm", "-f", cname]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    assert proc.stdin is not None and proc.stdout is not None
    timer = threading.Timer(timeout, lambda: subprocess.run(rm, capture_output=True))
    timer.start()
    seen: deque[str] = deque(maxlen=40)
    try:
        proc.stdin.write(INITIALIZE_LINE + "\n")
        proc.stdin.flush()  # stdin stays open: some servers drop in-flight requests on EOF
        for line in proc.stdout:
            seen.append(line.rstrip())
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # diagnostics (stderr is merged in)
            if isinstance(msg, dict) and msg.get("id") == 1 and isinstance(msg.get("result"), dict):
                info = msg["result"].get("serverInfo", {})
                log(f"  [check] {argv[0]}: initialize ok ({info.get('name')} {info.get('version')})")
                return
    except OSError:
        pass  # the container died before reading stdin; reported below
    finally:
        timer.cancel()
        subprocess.run(rm, capture_output=True)
        proc.stdin.close()
        proc.wait()
    raise ImageBuildError(failure(f"smoke check of {argv[0]} in {ref} (MCP initialize within {timeout:.0f} s)",
                                   proc.returncode, cmd, seen))
