"""Real service, real sandboxes (Docker containers and Kubernetes pods), real MCP servers from PyPI and npm."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import docker
import grpc
import pytest

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.client import Progress, RunnerClient, ToolResult
from tests.integration.conftest import Service

pytestmark = [pytest.mark.integration, pytest.mark.backends("docker", "kubernetes")]


def test_time_server_end_to_end(client: RunnerClient, service: Service) -> None:
    opened = client.open_session("time", labels={"purpose": "it"})
    try:
        assert opened.server.name
        assert opened.server.protocol_version
        names = {t.name for t in opened.tools}
        assert {"get_current_time", "convert_time"} <= names
        tool = next(t for t in opened.tools if t.name == "get_current_time")
        assert json.loads(tool.input_schema_json)["type"] == "object"
        result = client.call_tool(opened.session_id, "get_current_time", {"timezone": "Europe/Paris"})
        assert not result.is_error
        assert "Europe/Paris" in result.text
        assert [s.session_id for s in client.list_sessions()].count(opened.session_id) == 1
    finally:
        final = client.close_session(opened.session_id)
    assert final.usage.calls == 1
    assert final.usage.wall_ms > 0
    assert not service.sandboxes(), "the session's container must be removed on close"


@pytest.mark.backends("docker")
def test_sandbox_is_hardened(client: RunnerClient, service: Service) -> None:
    opened = client.open_session("scripted")
    try:
        (container,) = service.containers()
        attrs = container.attrs
        host = attrs["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["Memory"] == host["MemorySwap"] > 0
        assert host["PidsLimit"] > 0
        assert host["NanoCpus"] > 0
        assert host["LogConfig"]["Type"] == "none"  # nothing of what it says is kept on the host's disk
        assert "/tmp" in host["Tmpfs"] and "size=" in host["Tmpfs"]["/tmp"]
        assert attrs["Config"]["User"] == "10001:10001"
        assert attrs["Config"]["Labels"]["mcp-runner.session"] == opened.session_id
        # Seen from inside: not root, root filesystem read-only, only loopback.
        result = client.call_tool(opened.session_id, "inspect_sandbox", {})
        seen = result.structured_content
        assert seen["uid"] == 10001
        assert seen["root_writable"] is False
        assert seen["interfaces"] == ["lo"]
    finally:
        client.close_session(opened.session_id)


def test_everything_server_tools_resources_prompts_progress(client: RunnerClient) -> None:
    opened = client.open_session("everything")
    sid = opened.session_id
    try:
        names = {t.name for t in opened.tools}
        assert "echo" in names
        assert client.call_tool(sid, "echo", {"message": "hi there"}).text.endswith("hi there")
        resources = client.list_resources(sid)
        assert resources
        contents = client.read_resource(sid, resources[0].uri)
        assert contents and contents[0].uri
        prompts = client.list_prompts(sid)
        assert prompts
        long_running = next((n for n in names if "long" in n.lower()), None)
        assert long_running, names
        events = list(client.call_tool_stream(sid, long_running, {"duration": 1, "steps": 3}))
        assert any(isinstance(e, Progress) for e in events)
        assert isinstance(events[-1], ToolResult)
    finally:
        client.close_session(sid)


def test_filesystem_server_reads_readonly_mount(client: RunnerClient) -> None:
    with client.session("files") as opened:
        tool = "read_text_file" if any(t.name == "read_text_file" for t in opened.tools) else "read_file"
        result = client.call_tool(opened.session_id, tool, {"path": "/data/note.txt"})
        assert "hello from the host" in result.text
        write = client.call_tool(opened.session_id, "write_file", {"path": "/data/new.txt", "content": "x"})
        assert write.is_error, "the mount is read-only"


def test_scripted_resources_prompts_and_progress(client: RunnerClient) -> None:
    with client.session("scripted") as opened:
        sid = opened.session_id
        assert [c.text for c in client.read_resource(sid, "mem://greeting")] == ["hello"]
        prompt = client.get_prompt(sid, "greet", {"name": "Ada"})
        assert "Ada" in str(prompt)
        events = list(client.call_tool_stream(sid, "slow", {"steps": 3, "delay_ms": 10}))
        assert [e.progress for e in events if isinstance(e, Progress)] == [1, 2, 3]
        assert isinstance(events[-1], ToolResult)


def test_twenty_parallel_sessions_no_crosstalk(service: Service) -> None:
    def one(n: int) -> list[str]:
        with service.client() as client, client.session("scripted") as opened:
            return [
                client.call_tool(opened.session_id, "echo", {"text": f"caller-{n}-call-{i}"}).structured_content["text"]
                for i in range(5)
            ]

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(one, range(20)))
    for n, got in enumerate(answers):
        assert got == [f"caller-{n}-call-{i}" for i in range(5)]
    assert not service.sandboxes()


def test_idle_session_is_reaped(client: RunnerClient, service: Service) -> None:
    opened = client.open_session("idle")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and client.get_session(opened.session_id).state == pb.SESSION_STATE_READY:
        time.sleep(0.3)
    session = client.get_session(opened.session_id)
    assert session.state == pb.SESSION_STATE_CLOSED
    assert "idle" in session.failure
    with pytest.raises(grpc.RpcError) as caught:
        client.call_tool(opened.session_id, "echo", {"text": "x"})
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    def still_there() -> bool:
        return any(c.labels["mcp-runner.session"] == opened.session_id for c in service.sandboxes())

    # The reaper marks the session closed first, then removes its container.
    while time.monotonic() < deadline and still_there():
        time.sleep(0.2)
    assert not still_there()


def test_health_and_reflection(service: Service) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(service.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status = stub.Check(health_pb2.HealthCheckRequest(service="mcp_runner.v1.Runner"), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.backends("kubernetes")
def test_pod_is_hardened(client: RunnerClient, service: Service) -> None:
    from tests.kubernetes_cluster import NAMESPACE, core_api

    opened = client.open_session("scripted")
    try:
        (sandbox,) = service.sandboxes()
        pod = core_api().read_namespaced_pod(sandbox.id, NAMESPACE)
        spec = pod.spec
        assert spec.automount_service_account_token is False
        assert spec.enable_service_links is False
        assert not (spec.host_network or spec.host_pid or spec.host_ipc)
        assert spec.restart_policy == "Never"
        assert spec.active_deadline_seconds and spec.active_deadline_seconds > 0
        assert spec.security_context.run_as_non_root is True
        assert spec.security_context.run_as_user == 10001
        assert spec.security_context.seccomp_profile.type == "RuntimeDefault"
        (container,) = spec.containers
        context = container.security_context
        assert context.read_only_root_filesystem is True
        assert context.allow_privilege_escalation is False
        assert context.capabilities.drop == ["ALL"]
        assert container.resources.limits == container.resources.requests
        assert {"cpu", "memory"} <= set(container.resources.limits)
        assert not container.env or all(e.value_from is not None for e in container.env)  # nothing in clear
        tmp = next(v for v in spec.volumes if v.empty_dir is not None)
        assert tmp.empty_dir.medium == "Memory" and tmp.empty_dir.size_limit
        assert pod.metadata.labels["mcp-runner.session"] == opened.session_id
        assert pod.metadata.labels["mcp-runner.profile"] == "scripted"
        # Seen from inside: not root, root filesystem read-only.
        seen = client.call_tool(opened.session_id, "inspect_sandbox", {}).structured_content
        assert seen["uid"] == 10001
        assert seen["root_writable"] is False
    finally:
        client.close_session(opened.session_id)


def test_docker_engine_is_real() -> None:
    assert docker.from_env().version()["Version"]
