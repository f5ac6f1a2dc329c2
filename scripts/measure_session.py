#!/usr/bin/env python3
"""Measure one sandbox session's cost through a real container: memory, CPU to ready, CPU per call.

Runs the image's agent under the production hardening (docker/sandbox flags as
runner/sandbox/docker.py sets them), speaks the agent protocol over
``docker start -ai``, and reads the container's cgroup (v1) from the host:

* ready CPU: ``cpuacct.usage`` when the ready frame arrives (agent + server + tini);
* memory: ``memory.usage_in_bytes`` minus ``total_inactive_file`` (what ``docker stats`` shows), after ready and
  a few calls, with ``total_rss`` (anonymous memory) beside it;
* per call: the ``cpuacct.usage`` difference over a loop of calls, divided by their number.

Usage: scripts/measure_session.py [--image REF] [--runs N] [--calls N] [--env K=V ...] [PROFILE]
PROFILE is ``time`` (default) or ``everything``. Stdlib only; the container is removed on exit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROFILES: dict[str, tuple[str, list[str], tuple[str, dict[str, Any]]]] = {
    "time": (
        "python-servers",
        ["mcp-server-time", "--local-timezone", "UTC"],
        ("get_current_time", {"timezone": "Europe/Paris"}),
    ),
    "everything": ("node-servers", ["mcp-server-everything", "stdio"], ("echo", {"message": "hi"})),
}
CGROUP = Path("/sys/fs/cgroup")


def image_ref(name: str) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from runner.images import image_ref as ref

    return ref(name)


def cgroup_read(kind: str, cid: str, name: str) -> str:
    return (CGROUP / kind / "docker" / cid / name).read_text()


def memory(cid: str) -> tuple[float, float]:
    """(usage minus inactive file, as docker stats shows it; anonymous RSS), MiB."""
    usage = int(cgroup_read("memory", cid, "memory.usage_in_bytes"))
    stat = dict(line.split() for line in cgroup_read("memory", cid, "memory.stat").splitlines())
    return (usage - int(stat["total_inactive_file"])) / 2**20, int(stat["total_rss"]) / 2**20


def cpu_s(cid: str) -> float:
    return int(cgroup_read("cpuacct", cid, "cpuacct.usage")) / 1e9


class Session:
    def __init__(self, image: str, command: list[str], env: list[str]) -> None:
        flags = [
            "--network", "none", "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m,mode=1777",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--memory", "512m",
            "--memory-swap", "512m", "--cpus", "1", "--pids-limit", "128", "--user", "10001:10001",
            "-e", "MCP_AGENT_MAX_MESSAGE_BYTES=4194304", *(a for e in env for a in ("-e", e)),
        ]  # fmt: skip
        self.cid = subprocess.run(
            ["docker", "create", "-i", *flags, image, *command], check=True, capture_output=True, text=True
        ).stdout.strip()
        self.proc = subprocess.Popen(
            ["docker", "start", "-ai", self.cid], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.next_id = 1

    def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the agent's stdout closed")
        frame: dict[str, Any] = json.loads(line)
        if frame["type"] == "fatal":
            raise RuntimeError(f"fatal: {frame['message']}")
        return frame

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        rid, self.next_id = self.next_id, self.next_id + 1
        frame = {"type": "request", "id": rid, "method": method, "params": params}
        self.proc.stdin.write(json.dumps(frame).encode() + b"\n")
        self.proc.stdin.flush()
        while (reply := self.recv())["type"] == "progress":
            pass
        if reply["type"] != "result":
            raise RuntimeError(f"{method}: {reply}")
        return reply

    def close(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.cid], capture_output=True)
        self.proc.wait()


def measure(image: str, profile: str, calls: int, env: list[str]) -> dict[str, float]:
    _, command, (tool, arguments) = PROFILES[profile]
    session = Session(image, command, env)
    try:
        started = time.monotonic()
        ready = session.recv()
        ready_s, ready_cpu = time.monotonic() - started, cpu_s(session.cid)
        assert ready["type"] == "ready", ready
        session.call("tools/list", {})
        for _ in range(3):
            session.call("tools/call", {"name": tool, "arguments": arguments})
        time.sleep(0.5)
        mem, anon = memory(session.cid)
        before = cpu_s(session.cid)
        for _ in range(calls):
            session.call("tools/call", {"name": tool, "arguments": arguments})
        per_call_ms = (cpu_s(session.cid) - before) / calls * 1000
        return {"ready_cpu_s": ready_cpu, "ready_wall_s": ready_s, "mem_mib": mem, "anon_mib": anon,
                "call_cpu_ms": per_call_ms}  # fmt: skip
    finally:
        session.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", nargs="?", default="time", choices=sorted(PROFILES))
    parser.add_argument("--image", help="image reference (default: the tree's content-hashed tag)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--env", action="append", default=[], help="K=V for the sandbox's environment")
    args = parser.parse_args()
    image = args.image or image_ref(PROFILES[args.profile][0])
    runs = [measure(image, args.profile, args.calls, args.env) for _ in range(args.runs)]
    runs_said = f"{args.runs} runs, {args.calls} calls each"
    print(f"{args.profile} on {image} {' '.join(args.env)} ({runs_said}): median [min-max]")
    for key in runs[0]:
        values = [run[key] for run in runs]
        print(f"  {key:13} {statistics.median(values):8.3f}  [{min(values):.3f}-{max(values):.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
