"""Nothing the guard knows is forgotten when the service is SIGKILLed and started again on the same state directory.

The first service pins the rug profile's tools, holds an approval pending and
empties its caller's rate bucket; then it is killed. Its successor serves a
rug profile whose server changed ``echo``'s description while the service was
down (the scripted server with its rug-pull description from the first
listing): the change is held back against the pin taken before the kill, the
pending approval is listed as expired with the reason, and the bucket is still
empty.
"""

from __future__ import annotations

import secrets
import textwrap
from pathlib import Path

import grpc
import pytest

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.guard.memory import memory_path
from runner.sessions.gate import RESTARTED
from tests.integration.conftest import start_service, stop_service
from tests.kubernetes_cluster import ensure_images_loaded

pytestmark = [pytest.mark.integration, pytest.mark.backends("docker", "kubernetes")]

SERVERS = Path(__file__).resolve().parent.parent / "servers"
# The scripted server, changed while the service was down: echo lists the rug-pull description from the start.
CHANGED_SERVER = (
    "import sys; sys.path.insert(0, '/srv/servers'); import scripted_server as s; "
    "s.TOOLS[0] = {**s.TOOLS[0], 'description': s.RUG_PULL_DESCRIPTION}; sys.argv[1:] = ['good']; s.main()"
)


def _config(tmp: Path, name: str, command: list[str]) -> Path:
    (tmp / "policy.yaml").write_text(
        textwrap.dedent("""
            approvals: {timeout_s: 600}
            callers:
              anonymous:
                roles: [approver]
                profiles: [rug]
                rates: {calls_per_s: 0.001, call_burst: 3}
                profile_tools: {rug: {approval: [add]}}
        """),
        encoding="utf-8",
    )
    config = tmp / name
    config.write_text(
        textwrap.dedent(f"""
            builtin_profiles: false
            policy: policy.yaml
            profiles:
              rug: {{image: python-servers, command: {command}, mounts: [{{source: {SERVERS}, target: /srv/servers}}]}}
        """),
        encoding="utf-8",
    )
    return config


def test_pins_approvals_and_rate_buckets_survive_a_sigkill(
    images: dict[str, str], backend: str, tmp_path: Path
) -> None:
    if backend == "kubernetes":
        ensure_images_loaded()
    instance = f"guard-restart-{secrets.token_hex(4)}"
    before = _config(tmp_path, "before.yaml", ["python3", "/srv/servers/scripted_server.py", "rug_pull"])
    first = start_service(tmp_path, instance, config=before, backend=backend)
    try:
        with first.client() as client:
            opened = client.open_session("rug")
            assert "echo" in [t.name for t in opened.tools]  # pinned as first seen
            pending = client.call_tool(opened.session_id, "add", {"a": 1, "b": 2})
            assert pending.pending and pending.approval is not None
            approval_id = pending.approval.approval_id
            client.call_tool(opened.session_id, "echo", {"text": "one"})
            client.call_tool(opened.session_id, "echo", {"text": "two"})
            with pytest.raises(grpc.RpcError) as limited:
                client.call_tool(opened.session_id, "echo", {"text": "three"})
            assert limited.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        first.process.kill()
        first.process.wait(10)
    finally:
        if first.process.poll() is None:
            first.process.kill()
    assert memory_path(first.state_dir, instance).exists()

    after = _config(tmp_path, "after.yaml", ["python3", "-c", CHANGED_SERVER])
    second = start_service(tmp_path, instance, config=after, backend=backend)
    try:
        with second.client() as client:
            listed = client.list_approvals(include_decided=True)
            assert [(a.approval_id, a.state) for a in listed] == [(approval_id, pb.APPROVAL_STATE_EXPIRED)]
            assert listed[0].reason == RESTARTED
            with client.session("rug") as fresh:
                assert "echo" not in [t.name for t in fresh.tools]
                findings = {(f.kind, f.action, f.where) for f in fresh.findings}
                assert ("tool_changed", "blocked", "tools[echo]") in findings
                with pytest.raises(grpc.RpcError) as still_limited:
                    client.call_tool(fresh.session_id, "whoami", {})
                assert still_limited.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "calls/s" in (still_limited.value.details() or "")
        assert "changed its definition since it was pinned (first seen)" in second.log()
    finally:
        stop_service(second)
