"""A pod's status read as the runner's outcomes, and the one mapping of client errors to runner errors."""

from __future__ import annotations

from typing import Any

import kubernetes.client as kube
import pytest
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from runner.errors import FailedPrecondition, ResourceExhausted, RunnerError, Unavailable
from runner.sandbox import kube_status
from runner.sandbox.kube_client import KubeApi, map_kube_errors

HINT = "load the images"


def pod(status: dict[str, Any], **metadata: Any) -> Any:
    return kube.V1Pod.from_dict({"metadata": {"name": "p", **metadata}, "spec": {"containers": [
        {"name": "sandbox"}], "activeDeadlineSeconds": 900}, "status": status})


def container(state: dict[str, Any], image_id: str = "") -> dict[str, Any]:
    return {"containerStatuses": [{"name": "sandbox", "image": "i", "imageID": image_id, "ready": False,
                                   "restartCount": 0, "state": state}]}


def started(read: Any) -> Any:
    return kube_status.started(read, "the sandbox", "mcp-runner/python-servers:abc", HINT)


def test_a_running_container_has_started_and_a_pending_pod_not_yet() -> None:
    assert started(pod({"phase": "Pending"})) is None
    assert started(pod(container({"waiting": {"reason": "ContainerCreating"}}))) is None
    running = started(pod({"phase": "Running", **container({"running": {}}, "sha256:ab")}))
    assert running.image_id == "sha256:ab"


def test_unschedulable_is_resource_exhausted_naming_why() -> None:
    said = "0/1 nodes are available: 1 Insufficient memory."
    read = pod({"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": said}]})
    with pytest.raises(ResourceExhausted, match="Insufficient memory"):
        started(read)


@pytest.mark.parametrize("reason", ["ErrImageNeverPull", "ImagePullBackOff", "InvalidImageName"])
def test_a_missing_image_says_how_to_get_it(reason: str) -> None:
    with pytest.raises(FailedPrecondition, match=f"python-servers:abc.*{reason}.*{HINT}"):
        started(pod(container({"waiting": {"reason": reason, "message": "not present"}})))


def test_a_container_that_cannot_start_or_ended_early_or_a_pod_deleted_while_starting() -> None:
    with pytest.raises(FailedPrecondition, match="CreateContainerConfigError"):
        started(pod(container({"waiting": {"reason": "CreateContainerConfigError", "message": "no secret"}})))
    with pytest.raises(Unavailable, match="exit status 127"):
        started(pod(container({"terminated": {"exitCode": 127, "reason": "Error"}})))
    with pytest.raises(Unavailable, match="deleted"):
        started(None)
    with pytest.raises(Unavailable, match="deleted"):
        started(pod({"phase": "Pending"}, deletionTimestamp="2026-01-01T00:00:00Z"))


@pytest.mark.parametrize("message", [
    "failed to sync secret cache: timed out waiting for the condition",
    "context deadline exceeded",
])
def test_a_passing_kubelet_state_keeps_the_start_waiting(message: str) -> None:
    for reason in ("CreateContainerConfigError", "CreateContainerError"):
        assert started(pod(container({"waiting": {"reason": reason, "message": message}}))) is None


def test_how_a_sandbox_ended() -> None:
    assert kube_status.exit_of(pod({"phase": "Running", **container({"running": {}})}), False) is None
    oom = kube_status.exit_of(pod(container({"terminated": {"exitCode": 137, "reason": "OOMKilled"}})), False)
    assert oom is not None and oom.oom_killed and oom.exit_code == 137
    gone = kube_status.exit_of(None, removed_by_us=False)
    assert gone is not None and gone.reason == kube_status.DELETED_OUTSIDE and gone.exit_code is None
    ours = kube_status.exit_of(None, removed_by_us=True)
    assert ours is not None and ours.reason == ""
    deleting = pod({"phase": "Running", **container({"running": {}})}, deletionTimestamp="2026-01-01T00:00:00Z")
    assert kube_status.exit_of(deleting, False) == kube_status.SandboxExit(None, reason=kube_status.DELETED_OUTSIDE)
    late = kube_status.exit_of(pod({"phase": "Failed", "reason": "DeadlineExceeded"}), False)
    assert late is not None and "deadline (900 s" in late.reason


API = KubeApi(namespace="mcp-runner", host="https://10.0.0.1:6443", timeout=1.0, configuration=None, core=None,
              networking=None, node=None, custom=None, apis=None)


def mapped(exc: Exception) -> RunnerError:
    with pytest.raises(RunnerError) as caught, map_kube_errors("creating the pod", API):
        raise exc
    return caught.value


def api_error(status: int, message: str) -> ApiException:
    return ApiException(status=status, reason="r", body=f'{{"kind": "Status", "message": {message!r}}}'.replace(
        "'", '"'))


def _in(image: str, state: dict[str, Any]) -> Any:
    read = pod(container(state))
    read.spec.containers[0].image = image
    return read


NO_AGENT = "image user/srv:1 has no mcp-runner agent: build it with `mcp-runner images add` or set `inject_agent: true`"


def test_a_container_the_runtime_cannot_exec_says_its_image_has_no_agent_quoting_the_runtime() -> None:
    said = ('failed to create containerd task: OCI runtime create failed: container_linux.go:370: starting container '
            'process caused: exec: "/bin/sh": stat /bin/sh: no such file or directory: unknown')
    with pytest.raises(FailedPrecondition) as caught:
        kube_status.started(pod(container({"terminated": {"exitCode": 128, "reason": "StartError", "message": said}})),
                            "the sandbox", "user/srv:1", HINT)
    assert NO_AGENT in caught.value.message
    assert 'exit status 128, StartError: failed to create containerd task' in caught.value.message
    assert 'exec: "/bin/sh": stat /bin/sh: no such file or directory' in caught.value.message


def test_a_start_error_that_is_no_exec_failure_is_not_blamed_on_the_image() -> None:
    said = "error mounting \"/srv/x\" to rootfs: no such file or directory"
    with pytest.raises(Unavailable) as caught:
        started(pod(container({"terminated": {"exitCode": 128, "reason": "StartError", "message": said}})))
    assert "no mcp-runner agent" not in caught.value.message
    assert "StartError: error mounting" in caught.value.message


def test_a_sandbox_that_could_not_exec_its_agent_ends_saying_the_image_has_none() -> None:
    for code in (126, 127):
        ended = kube_status.exit_of(_in("user/srv:1", {"terminated": {"exitCode": code, "reason": "Error"}}), False)
        assert ended is not None and ended.exit_code == code
        assert ended.reason.startswith(f"its agent command could not be run, so {NO_AGENT}")
    for code in (0, 1, 2, 137):  # the agent's own endings, or a kill: nothing inferred
        ended = kube_status.exit_of(_in("user/srv:1", {"terminated": {"exitCode": code, "reason": "Error"}}), False)
        assert ended == kube_status.SandboxExit(code, reason="")


def test_client_errors_become_runner_errors_in_one_place() -> None:
    forbidden = mapped(api_error(403, 'pods is forbidden: User "x" cannot create resource "pods/attach" in API '
                                      'group "" in the namespace "mcp-runner"'))
    assert isinstance(forbidden, FailedPrecondition)
    assert "verb 'create' on 'pods/attach'" in forbidden.message and "deploy/kubernetes" in forbidden.message
    missing = mapped(api_error(404, 'namespaces "mcp-runner" not found'))
    assert isinstance(missing, FailedPrecondition) and "kubectl create namespace mcp-runner" in missing.message
    taken = mapped(api_error(409, 'pods "mcp-runner-default-ab" already exists'))
    assert isinstance(taken, FailedPrecondition) and "already exists" in taken.message
    assert isinstance(mapped(api_error(500, "etcd down")), Unavailable)
    assert isinstance(mapped(api_error(401, "Unauthorized")), Unavailable)
    unreachable = mapped(urllib3.exceptions.MaxRetryError(None, "/version", "refused"))  # type: ignore[arg-type]
    assert isinstance(unreachable, Unavailable) and "unreachable at https://10.0.0.1:6443" in unreachable.message
    assert isinstance(mapped(TimeoutError()), Unavailable)
    assert isinstance(mapped(ConnectionRefusedError()), Unavailable)
