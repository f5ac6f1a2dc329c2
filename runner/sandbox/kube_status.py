"""What a pod's status means for the runner: started, failing to start (and why), or ended (and why).

Pure functions of a ``V1Pod`` (or None once it is gone), so every case is testable without a cluster.
"""

from __future__ import annotations

from typing import Any

from runner.errors import FailedPrecondition, ResourceExhausted, Unavailable
from runner.sandbox.base import SandboxExit
from runner.text import printable

DELETED_OUTSIDE = "its pod was deleted from outside the runner"
_IMAGE_MISSING = ("ErrImageNeverPull", "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ImageInspectError",
                  "RegistryUnavailable")
_NODE_FULL = ("OutOfcpu", "OutOfmemory", "OutOfpods", "OutOfephemeral-storage")
"""Reasons the kubelet's admission gives a pod it rejects for want of room on its node."""
_CANNOT_CREATE = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
_PASSING = ("failed to sync", "timed out waiting for the condition", "context deadline exceeded")
"""Messages of a ``_CANNOT_CREATE`` state that the kubelet retries and that pass (its secret cache not yet synced
on a busy node, a slow runtime): the start keeps waiting, within its budget, instead of failing a session that
was about to run. Any other message (a missing key, an image that runs as root) stays as it is."""
_RUNTIME_SAID = ("StartError", "ContainerCannotRun")
"""Terminated reasons whose message the runtime wrote: the container's process never ran."""
_EXEC_MARKS = ('exec: "', "executable file not found", "exec format error")
"""What a runtime's message says when it could not exec a container's command (runc: ``exec: "/bin/sh": stat
/bin/sh: no such file or directory``); any other start error (a mount, a cgroup) is not the image's lack."""
_EXEC_FAILED = (126, 127)
"""The exit status of a sandbox whose agent command could not be run: the start gate's shell (not found, not
executable) or tini (its exec of the agent failed). The agent itself never ends so: it exits 0, 1 or 2."""
_MESSAGE_CAP = 300


class Unschedulable(ResourceExhausted):
    """No node can take the pod now: its limits are above every node's, or the nodes are full for the moment."""


def _text(value: object) -> str:
    return printable(" ".join(str(value or "").split()), _MESSAGE_CAP)


def _container(pod: Any) -> Any:
    statuses = (pod.status.container_statuses or []) if pod.status is not None else []
    return statuses[0] if statuses else None


def started(pod: Any, what: str, image: str, load_hint: str) -> Any | None:
    """The running container's status once ``pod`` runs; None while it may still start; raises why it cannot."""
    if pod is None or pod.metadata.deletion_timestamp is not None:
        raise Unavailable(f"{what}: its pod was deleted while it started")
    status = pod.status
    for condition in (status.conditions or []) if status is not None else []:
        if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
            raise Unschedulable(f"{what}: the cluster cannot place its pod: {_text(condition.message)}")
    container = _container(pod)
    state = container.state if container is not None else None
    if status is not None and status.phase in ("Failed", "Succeeded") and (state is None or state.terminated is None):
        # Ended as a whole while its container still waited (a deadline, an eviction, the node's admission):
        # nothing will start it again (restartPolicy Never), so the start fails now, not at its budget's end.
        error = ResourceExhausted if str(status.reason or "") in _NODE_FULL else Unavailable
        raise error(f"{what}: its pod ended before it ran ({_text(status.reason)}: {_text(status.message)})")
    if state is None:
        return None
    if state.running is not None:
        return container
    waiting, terminated = state.waiting, state.terminated
    if waiting is not None and waiting.reason in _IMAGE_MISSING:
        raise FailedPrecondition(
            f"{what}: the image {image} is not available on the cluster's nodes ({waiting.reason}: "
            f"{_text(waiting.message)}); {load_hint}"
        )
    if waiting is not None and waiting.reason in _CANNOT_CREATE and not _passing(waiting.message):
        raise FailedPrecondition(f"{what}: its container cannot start ({waiting.reason}: {_text(waiting.message)})")
    if terminated is not None and terminated.reason in _RUNTIME_SAID and _exec_failed(terminated.message):
        # The runtime could not exec the pod's command (the gate's shell, then the agent): it says which, quoted.
        raise FailedPrecondition(f"{what}: {_no_agent(image).message} (its container could not start: exit status "
                                 f"{terminated.exit_code}, {terminated.reason}: {_text(terminated.message)})")
    if terminated is not None:
        # Its message is quoted only when the runtime wrote it: a process that ran may have written its own
        # (/dev/termination-log), which no sanitizer has seen.
        said = f": {_text(terminated.message)}" if terminated.reason in _RUNTIME_SAID else ""
        raise Unavailable(
            f"{what}: its container ended before the runner attached (exit status {terminated.exit_code}, "
            f"{_text(terminated.reason)}{said})"
        )
    return None


def _exec_failed(message: object) -> bool:
    said = str(message or "").lower()
    return any(mark in said for mark in _EXEC_MARKS)


def _passing(message: object) -> bool:
    said = str(message or "").lower()
    return any(mark in said for mark in _PASSING)


def exit_of(pod: Any, removed_by_us: bool) -> SandboxExit | None:
    """How the sandbox in ``pod`` (None: gone) ended, or None while it runs."""
    if pod is None:
        return SandboxExit(exit_code=None, reason="" if removed_by_us else DELETED_OUTSIDE)
    reason = _reason(pod, removed_by_us)
    container = _container(pod)
    terminated = container.state.terminated if container is not None and container.state is not None else None
    if terminated is not None:
        if not reason and terminated.exit_code in _EXEC_FAILED:
            reason = (f"its agent command could not be run, so {_no_agent(_image(pod)).message} (or build it FROM "
                      "mcp-runner/python-servers)")
        return SandboxExit(exit_code=terminated.exit_code, oom_killed=terminated.reason == "OOMKilled", reason=reason)
    if reason:  # being deleted, or failed as a whole: its container is going, its exit status may never show
        return SandboxExit(exit_code=None, reason=reason)
    return None


def _reason(pod: Any, removed_by_us: bool) -> str:
    status = pod.status
    if status is not None and status.reason == "DeadlineExceeded":
        return f"its pod reached its deadline ({pod.spec.active_deadline_seconds} s, activeDeadlineSeconds)"
    if status is not None and status.reason == "Evicted":
        return f"the node evicted its pod: {_text(status.message)}"
    if pod.metadata.deletion_timestamp is not None and not removed_by_us:
        return DELETED_OUTSIDE
    return ""


def _image(pod: Any) -> str:
    containers = pod.spec.containers if pod.spec is not None else None
    return str(containers[0].image) if containers else "(unknown)"


def _no_agent(image: str) -> FailedPrecondition:
    from runner.image_profiles import no_agent  # the Docker backend's words; the image modules only when needed

    return no_agent(image)
