"""Deliberately malicious or broken MCP servers (tests/servers/scripted_server.py) in real sandboxes.

Each must end with a clear gRPC status, never harm another session, and never
let an invalid result through.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.client import Progress, RunnerClient, ToolResult
from tests.integration.conftest import Service, start_service, stop_service
from tests.kubernetes_cluster import ensure_images_loaded

pytestmark = [pytest.mark.integration, pytest.mark.hostile, pytest.mark.backends("docker", "kubernetes")]


def code_of(caught: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return caught.value.code()  # type: ignore[no-any-return]


def details_of(caught: pytest.ExceptionInfo[grpc.RpcError]) -> str:
    return caught.value.details() or ""  # type: ignore[no-any-return]


@pytest.fixture
def bystander(client: RunnerClient) -> str:
    """A healthy session that must keep working while its neighbour misbehaves."""
    opened = client.open_session("scripted")
    yield opened.session_id
    assert client.call_tool(opened.session_id, "echo", {"text": "still here"}).structured_content == {
        "text": "still here"
    }
    client.close_session(opened.session_id)


def test_unknown_profile_session_tool(client: RunnerClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.open_session("no-such-profile")
    assert code_of(caught) == grpc.StatusCode.NOT_FOUND
    assert "profiles you may open" in details_of(caught)
    with pytest.raises(grpc.RpcError) as caught:
        client.call_tool("0123456789abcdef", "echo", {})
    assert code_of(caught) == grpc.StatusCode.NOT_FOUND
    with client.session("scripted") as opened, pytest.raises(grpc.RpcError) as caught:
        client.call_tool(opened.session_id, "no_such_tool", {})
    assert code_of(caught) == grpc.StatusCode.NOT_FOUND
    assert "echo" in details_of(caught)


def test_arguments_break_input_schema(client: RunnerClient) -> None:
    with client.session("scripted") as opened:
        with pytest.raises(grpc.RpcError) as caught:
            client.call_tool(opened.session_id, "add", {"a": 1, "b": "two"})
        assert code_of(caught) == grpc.StatusCode.INVALID_ARGUMENT
        assert "$.b" in details_of(caught)
        assert client.call_tool(opened.session_id, "add", {"a": 1, "b": 2}).structured_content == {"sum": 3}


def test_server_dies_at_start(client: RunnerClient, service: Service) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.open_session("crash_at_start")
    assert code_of(caught) == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot load config" in details_of(caught)
    assert all(s.labels.get("mcp-runner.profile") != "crash_at_start" for s in service.sandboxes())


def test_server_dies_mid_call(client: RunnerClient, bystander: str) -> None:
    opened = client.open_session("crash_on_call")
    with pytest.raises(grpc.RpcError) as caught:
        client.call_tool(opened.session_id, "echo", {"text": "x"})
    assert code_of(caught) == grpc.StatusCode.FAILED_PRECONDITION
    assert "boom: segfault simulated" in details_of(caught)
    assert client.get_session(opened.session_id).state == pb.SESSION_STATE_FAILED


def test_hanging_call_times_out_and_session_still_works(client: RunnerClient) -> None:
    with client.session("hang") as opened:
        with pytest.raises(grpc.RpcError) as caught:
            client.call_tool(opened.session_id, "echo", {"text": "x"}, timeout_ms=500)
        assert code_of(caught) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "still usable" in details_of(caught)
        assert client.call_tool(opened.session_id, "add", {"a": 2, "b": 2}).structured_content == {"sum": 4}


def test_caller_deadline_is_honoured(client: RunnerClient) -> None:
    with client.session("hang") as opened:
        with pytest.raises(grpc.RpcError) as caught:
            client.call_tool(opened.session_id, "echo", {"text": "x"}, timeout=1.0)
        assert code_of(caught) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_frozen_server_is_ended_after_timeout(client: RunnerClient, bystander: str) -> None:
    opened = client.open_session("hang_hard")
    with pytest.raises(grpc.RpcError) as caught:
        client.call_tool(opened.session_id, "echo", {"text": "x"}, timeout_ms=500)
    assert code_of(caught) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "stopped answering" in details_of(caught)
    assert client.get_session(opened.session_id).state == pb.SESSION_STATE_FAILED


def test_memory_hog_is_killed_for_memory(client: RunnerClient, bystander: str) -> None:
    opened = client.open_session("memory_hog")
    with pytest.raises(grpc.RpcError) as caught:
        client.call_tool(opened.session_id, "echo", {"text": "x"})
    assert code_of(caught) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "memory" in details_of(caught)
    [exited] = client.query_audit(session_id=opened.session_id, kinds=["exit"])
    assert json.loads(exited.data_json)["oom_killed"] is True
    [request] = client.query_audit(session_id=opened.session_id, kinds=["request"])
    assert json.loads(request.data_json)["error"] == {"status": "RESOURCE_EXHAUSTED", "message": details_of(caught)}


def test_fork_bomb_is_contained(client: RunnerClient, service: Service, bystander: str) -> None:
    if service.backend == "kubernetes":
        _fork_bomb_on_a_pod(client, service)
    else:
        with client.session("fork_bomb") as opened:
            said = client.call_tool(opened.session_id, "echo", {"text": "x"}, timeout_ms=30_000)
        text = said.structured_content["text"]
        counts = dict(part.split("=") for part in text.removeprefix("survived: ").split())
        # The profile's pids limit is 48, and tini, the agent and the server already use some of it.
        assert int(counts["children"]) < 48, text
        assert int(counts["refused"]) > 0, text
    with client.session("scripted") as fresh:
        assert client.call_tool(fresh.session_id, "add", {"a": 1, "b": 1}).structured_content == {"sum": 2}


def _fork_bomb_on_a_pod(client: RunnerClient, service: Service) -> None:
    """Kubernetes 1.20 has no pids limit per pod: the kubelet caps every pod (--pod-max-pids, 1024 on the test
    cluster) in the pod's pids cgroup. The bomb's children share the pod's 0.08 CPU and its memory limit with its
    server, so the server may answer with fewer children than the cap, not answer within the call's timeout (then
    the runner ends that session), or be killed by the kernel when the children fill the pod's memory: all three
    are contained. (The memory kill may hit the pod's cgroup, whose limit also counts the pause container, before
    the container's: then the runtime does not mark the container OOMKilled and the runner reports the server's
    SIGKILL as a crash.) What must hold is the cap itself, and the other sessions (below)."""
    contained = {
        grpc.StatusCode.DEADLINE_EXCEEDED: "was ended",
        grpc.StatusCode.RESOURCE_EXHAUSTED: "memory",
        grpc.StatusCode.FAILED_PRECONDITION: "killed by SIGKILL",
    }
    with client.session("fork_bomb") as opened:
        pod_cap = _pod_pids_max(service, opened.session_id)
        assert 0 < pod_cap <= 4096, pod_cap
        try:
            said = client.call_tool(opened.session_id, "echo", {"text": "x"}, timeout_ms=30_000)
        except grpc.RpcError as exc:
            assert exc.code() in contained, exc
            assert contained[exc.code()] in (exc.details() or ""), exc.details()
            return
    text = said.structured_content["text"]
    counts = dict(part.split("=") for part in text.removeprefix("survived: ").split())
    assert int(counts["children"]) < pod_cap, text


def _pod_pids_max(service: Service, session_id: str) -> int:
    """The pids cap of the session's pod, read from its pids cgroup: the test cluster's one node is this machine."""
    from tests.kubernetes_cluster import NAMESPACE, core_api

    (sandbox,) = [s for s in service.sandboxes() if s.labels["mcp-runner.session"] == session_id]
    uid = core_api().read_namespaced_pod(sandbox.id, NAMESPACE).metadata.uid
    (limit,) = Path("/sys/fs/cgroup/pids/kubepods").glob(f"**/pod{uid}/pids.max")
    return int(limit.read_text())


@pytest.mark.parametrize(
    ("profile", "status", "needle"),
    [
        ("stdout_flood", None, ""),
        ("oversized", grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than the 4 MiB cap"),
        ("malformed", grpc.StatusCode.FAILED_PRECONDITION, ""),
        ("wrong_id", None, ""),
        ("impersonate_agent", grpc.StatusCode.FAILED_PRECONDITION, ""),
    ],
)
def test_protocol_abuse_ends_only_that_session(
    client: RunnerClient, service: Service, bystander: str, profile: str, status: grpc.StatusCode | None, needle: str
) -> None:
    opened = client.open_session(profile)
    with pytest.raises(grpc.RpcError) as caught:
        client.call_tool(opened.session_id, "echo", {"text": "x"}, timeout_ms=10_000)
    if status is not None:
        assert code_of(caught) == status, details_of(caught)
    else:
        assert code_of(caught) in (
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ), details_of(caught)
    assert needle in details_of(caught)
    assert "forged" not in details_of(caught)
    session = client.get_session(opened.session_id)
    if session.state != pb.SESSION_STATE_READY:
        assert not [s for s in service.sandboxes() if s.labels["mcp-runner.session"] == opened.session_id]
    else:
        # Only a timed-out call may leave the session open, and then it must still answer correctly.
        assert code_of(caught) == grpc.StatusCode.DEADLINE_EXCEEDED
        client.close_session(opened.session_id)


@pytest.mark.parametrize(
    ("profile", "needle"),
    [("bad_output", "breaks its outputSchema at $.sum"), ("missing_structured", "no structuredContent")],
)
def test_invalid_output_is_never_passed_on(client: RunnerClient, profile: str, needle: str) -> None:
    with client.session(profile) as opened:
        with pytest.raises(grpc.RpcError) as caught:
            client.call_tool(opened.session_id, "add", {"a": 1, "b": 2})
        assert code_of(caught) == grpc.StatusCode.FAILED_PRECONDITION
        assert needle in details_of(caught)
        assert client.get_session(opened.session_id).state == pb.SESSION_STATE_READY


@pytest.mark.parametrize(
    ("tool", "needle"),
    [("many_blocks", "its lists hold more than 4096 items"), ("choice_bomb", "structuredContent took too long")],
)
def test_a_result_costly_to_check_is_refused_within_the_budget(
    client: RunnerClient, bystander: str, tool: str, needle: str
) -> None:
    """60 000 content blocks (within the value cap) and an outputSchema of 2**22 branches: refused, not checked
    for minutes holding the service's GIL; the neighbour keeps working (the bystander fixture checks)."""
    with client.session("costly_results") as opened:
        with pytest.raises(grpc.RpcError) as caught:
            client.call_tool(opened.session_id, tool, {}, timeout_ms=60_000)
        assert code_of(caught) == grpc.StatusCode.FAILED_PRECONDITION, details_of(caught)
        assert needle in details_of(caught)
        assert client.call_tool(opened.session_id, "echo", {"text": "x"}).structured_content == {"text": "x"}


def test_late_answer_after_timeout_does_not_end_session(client: RunnerClient) -> None:
    with client.session("scripted") as opened:
        with pytest.raises(grpc.RpcError) as caught:
            client.call_tool(opened.session_id, "slow", {"steps": 3, "delay_ms": 400}, timeout_ms=300)
        assert code_of(caught) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "still usable" in details_of(caught)
        time.sleep(1.5)  # the server finishes the abandoned call meanwhile
        assert client.get_session(opened.session_id).state == pb.SESSION_STATE_READY
        assert client.call_tool(opened.session_id, "add", {"a": 5, "b": 6}).structured_content == {"sum": 11}


def test_open_abandoned_at_deadline_leaves_no_container(client: RunnerClient, service: Service) -> None:
    before = {s.id for s in service.sandboxes()}
    with pytest.raises(grpc.RpcError) as caught:
        client.open_session("scripted", timeout=0.15)
    assert code_of(caught) == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and {s.id for s in service.sandboxes()} != before:
        time.sleep(0.2)
    assert {s.id for s in service.sandboxes()} == before


# -- a server cannot stall or bloat the service: line caps and floods, on a service with a 2 MiB cap ----------

CAPPED_TIMEOUT_S = 20
FLOOD_TIMEOUT_MS = 180_000
SERVERS = Path(__file__).resolve().parents[1] / "servers"


@pytest.fixture(scope="module")
def capped(images: dict[str, str], backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service whose max_message_bytes (2 MiB) is not the agent's default (4 MiB): it must reach the agent."""
    if backend == "kubernetes":
        ensure_images_loaded()
    tmp = tmp_path_factory.mktemp("capped")
    profiles = {
        behaviour: {
            "image": "python-servers",
            "command": ["python3", "/srv/servers/scripted_server.py", behaviour],
            "mounts": [{"source": str(SERVERS), "target": "/srv/servers"}],
        }
        for behaviour in ("good", "huge_line", "huge_answer", "progress_flood", "request_flood")
    }
    # 50 000 notifications take a while to relay on a busy machine: a generous deadline, never a measured one.
    profiles["progress_flood"]["limits"] = {"call_timeout_s": FLOOD_TIMEOUT_MS / 1000}
    config = tmp / "capped.yaml"
    config.write_text(yaml.safe_dump({
        "max_message_bytes": "2MiB", "defaults": {"call_timeout_s": CAPPED_TIMEOUT_S}, "profiles": profiles,
        "pool": {},
    }))  # fmt: skip
    service = start_service(tmp, f"it-capped-{secrets.token_hex(3)}", config=config, backend=backend)
    yield service
    stop_service(service)


@pytest.fixture
def capped_client(capped: Service) -> Iterator[RunnerClient]:
    with capped.client() as client:
        yield client


@pytest.mark.parametrize("profile", ["huge_line", "huge_answer"])
def test_a_message_past_the_cap_ends_the_session_at_once(
    capped: Service, capped_client: RunnerClient, profile: str
) -> None:
    client = capped_client
    neighbour = client.open_session("good")
    opened = client.open_session(profile)
    with pytest.raises(grpc.RpcError) as caught:
        # The old agent read the line to its end (1 GiB, or 64 MiB through a quadratic join): DEADLINE_EXCEEDED
        # after the whole call timeout, and a session said to be "still usable" that was not.
        client.call_tool(opened.session_id, "echo", {"text": "x"}, timeout_ms=CAPPED_TIMEOUT_S * 1000)
    assert code_of(caught) == grpc.StatusCode.RESOURCE_EXHAUSTED, details_of(caught)
    # Cut by the agent, at the cap the host handed it (its own default is 4 MiB), and said once, consistently.
    assert details_of(caught) == (
        f"session {opened.session_id} was ended: MCP server wrote a message larger than the 2 MiB cap"
    )
    assert client.get_session(opened.session_id).state == pb.SESSION_STATE_FAILED
    assert not [s for s in capped.sandboxes() if s.labels["mcp-runner.session"] == opened.session_id]
    assert client.call_tool(neighbour.session_id, "echo", {"text": "fine"}).structured_content == {"text": "fine"}
    assert capped.healthy()
    client.close_session(neighbour.session_id)


def test_requests_to_the_client_left_unread_end_the_session(capped: Service, capped_client: RunnerClient) -> None:
    client = capped_client
    opened = client.open_session("request_flood")
    with pytest.raises(grpc.RpcError) as caught:
        # The agent answered each of 200 000 roots/list requests in a task of its own, none of them ever written:
        # ~70 MiB a second of the sandbox's memory until the call's deadline.
        client.call_tool(opened.session_id, "echo", {"text": "x"}, timeout_ms=CAPPED_TIMEOUT_S * 1000)
    assert code_of(caught) == grpc.StatusCode.FAILED_PRECONDITION, details_of(caught)
    assert "it sent more than 64 requests without reading the answers" in details_of(caught)
    assert client.get_session(opened.session_id).state == pb.SESSION_STATE_FAILED
    assert capped.healthy()


def answered(client: RunnerClient, session_id: str) -> bool:
    """Whether the session's tools/call has its outcome on record: it is, before its answer leaves the service."""
    records = client.query_audit(session_id=session_id, kinds=["request"])
    return any(json.loads(record.data_json).get("method") == "tools/call" for record in records)


def test_a_progress_flood_to_a_slow_reader_is_coalesced(capped: Service, capped_client: RunnerClient) -> None:
    client = capped_client
    with client.session("progress_flood") as opened:
        stream = client.call_tool_stream(opened.session_id, "echo", {"text": "x"}, timeout_ms=FLOOD_TIMEOUT_MS)
        items = [next(stream)]
        # The reader stops reading while the server sends its 50 000 notifications of 2 KiB and answers. The old
        # queue kept every one for it (RSS 87 -> 319 MiB); now what waits is gRPC's flow-control window (a few MiB
        # at most: a few thousand of these) and the latest 64.
        deadline = time.monotonic() + FLOOD_TIMEOUT_MS / 1000
        while not answered(client, opened.session_id) and time.monotonic() < deadline:
            time.sleep(0.5)
        items += list(stream)
        assert capped.healthy()
    progress = [item for item in items if isinstance(item, Progress)]
    assert isinstance(items[-1], ToolResult)
    assert items[-1].structured_content == {"text": "flooded 50000 progress notifications"}, len(progress)
    assert len(progress) < 25_000, len(progress)
    assert progress[-1].progress == 50_000  # the latest is never the one that gives way
    assert progress == sorted(progress, key=lambda p: p.progress)
