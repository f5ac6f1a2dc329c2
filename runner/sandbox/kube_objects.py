"""The Kubernetes objects of one session, as plain manifests: its pod, its env Secret, its NetworkPolicies.

Functions of the ``SandboxSpec`` (and of whether a mount's source is a file), so the hardening can be read and
tested without a cluster. The pod carries the Docker sandbox's defaults (DESIGN.md) in the fields Kubernetes 1.20
has for them:

- non-root uid/gid 10001, ``seccompProfile: RuntimeDefault``, read-only root, no privilege escalation,
  capabilities drop ALL, not privileged, no service-account token, no service links, no host namespaces;
- CPU and memory limits equal to their requests; ``/tmp`` an ``emptyDir`` in memory, sized, and so is the
  profile's ``/workspace`` when it asks for one; host mounts read-only unless the profile says ``writable``;
- pids: a pod spec has no pids limit; the nodes' kubelet caps every pod with ``--pod-max-pids`` (the test
  cluster's does), and the profile's figure is kept in the ``mcp-runner.limits.pids`` annotation. Open files
  (``nofile``) cannot be set per pod either: the container runtime's default applies;
- ``activeDeadlineSeconds``: a backstop past the session's lifetime, for a runner that is gone (the manager
  itself ends a session at its lifetime, counted from its hand-over).

Secrets never appear in the pod spec: the whole of ``spec.env`` (the profile's env and secret values, which
the session mixes) goes into a per-session Secret the container reads with ``envFrom``.

NetworkPolicies are what a policy-capable CNI enforces; the project's test cluster (CNI ``bridge``) accepts
them but does NOT enforce them, so there isolation rests on the egress proxy's own checks alone.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from runner.config import WORKSPACE_ENV, WORKSPACE_PATH
from runner.sandbox.base import INSTANCE_LABEL, OWNER_LABEL, SESSION_LABEL, SandboxNetwork, SandboxSpec
from runner.sandbox.egress import PROXY_PORT, ROLE_LABEL

SANDBOX_CONTAINER = "sandbox"
PROXY_CONTAINER = "egress"
SANDBOX_ROLE = "sandbox"
PROXY_ROLE = "egress-proxy"
OWNER_ANNOTATION = OWNER_LABEL
"""The owner lock label in full (JSON, too long for a label value); the label holds its hash."""
PIDS_ANNOTATION = "mcp-runner.limits.pids"
SANDBOX_UID = 10001
AGENT_ENTRYPOINT = ("/usr/bin/tini", "--", "/opt/agent/bin/python", "-m", "runner.agent", "--")
"""The ENTRYPOINT of the runner's server images (sandbox_images/*/Dockerfile): a pod's ``command`` replaces it, so
the shell gate below must name it again. A profile's own image must keep this entrypoint (build it FROM ours), or
set ``inject_agent: true``: its pod names the derived image's launcher instead (``runner.image_inject.pod_command``),
given to ``sandbox_pod`` as its ``entrypoint``."""
SHELL_GATE = ("/bin/sh", "-c", 'read -r _ && exec "$@"', "sh")
"""Holds the container until the host has attached and sent one newline: output written before the attach
would be lost (the agent says "ready" at once). The shell's ``read`` takes stdin a byte at a time, so nothing
past the newline is consumed, and ``exec`` leaves tini as the container's first process."""
GATED_AGENT = (*SHELL_GATE, *AGENT_ENTRYPOINT)
"""A runner image's pod command before the server's: the start gate, then the image's own entrypoint."""
DEADLINE_MARGIN_S = 300
"""How long past its lifetime a session's pod may live: its boot and the manager's reap interval fit in it."""
WORKSPACE_VOLUME = "workspace"
PROXY_MEMORY = "64Mi"
PROXY_CPU = "500m"
PROXY_TMPFS = "8Mi"
PRIVATE_V4 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10", "127.0.0.0/8")
PRIVATE_V6 = ("::1/128", "fc00::/7", "fe80::/10")

_NAME_MAX = 63
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?")
_NOT_NAME = re.compile(r"[^a-z0-9-]+")


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def label_value(text: str) -> str:
    """``text`` if it is a valid label value, else a valid one that still tells different texts apart."""
    if _LABEL_VALUE.fullmatch(text):
        return text
    kept = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:40].strip("-_.")
    return f"{kept}-{_digest(text, 16)}" if kept else _digest(text, 16)


def object_name(spec: SandboxSpec, suffix: str = "") -> str:
    """A DNS-1123 label (pods are hostnames too) from instance and session id, unique to them."""
    raw = f"mcp-runner-{spec.instance}-{spec.session_id}{suffix}"
    name = _NOT_NAME.sub("-", raw.lower()).strip("-")
    if name == raw and len(name) <= _NAME_MAX:
        return name
    return f"{name[: _NAME_MAX - 13].rstrip('-')}-{_digest(raw, 12)}"


def owner_label(owner: str) -> str:
    return _digest(owner, 40)


def session_selector(session_id: str, role: str | None = None) -> dict[str, str]:
    role_part = {ROLE_LABEL: role} if role is not None else {}
    return {SESSION_LABEL: label_value(session_id), **role_part}


def instance_selector(instance: str) -> str:
    """The label selector of every object a service of ``instance`` makes for its sessions."""
    return f"{SESSION_LABEL},{INSTANCE_LABEL}={label_value(instance)}"


def metadata(spec: SandboxSpec, name: str, owner: str | None, role: str | None = None) -> dict[str, Any]:
    labels = {key: label_value(value) for key, value in spec.labels.items()}
    labels.update(session_selector(spec.session_id, role))
    labels[INSTANCE_LABEL] = label_value(spec.instance)
    annotations = {PIDS_ANNOTATION: str(spec.limits.pids)}
    if owner is not None:
        labels[OWNER_LABEL] = owner_label(owner)
        annotations[OWNER_ANNOTATION] = owner
    return {"name": name, "labels": labels, "annotations": annotations}


def _hardened_container(name: str, image: str, pull_policy: str, cpu: str, memory: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": pull_policy,
        "stdin": True,
        "stdinOnce": False,
        "tty": False,
        "resources": {"limits": {"cpu": cpu, "memory": memory}, "requests": {"cpu": cpu, "memory": memory}},
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def _hardened_pod_spec(container: dict[str, Any], tmpfs: str) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "terminationGracePeriodSeconds": 1,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SANDBOX_UID,
            "runAsGroup": SANDBOX_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": tmpfs}}],
    }


def sandbox_pod(
    spec: SandboxSpec,
    *,
    name: str,
    image: str,
    pull_policy: str,
    owner: str | None,
    runtime_class: str | None,
    env_secret: str | None,
    proxy_env: Mapping[str, str],
    entrypoint: Sequence[str] = GATED_AGENT,
) -> dict[str, Any]:
    """The session's pod: the agent and its server behind the start gate, hardened, no network of its own.
    ``entrypoint``: what runs the agent behind the gate, before the server's command (an injected image's
    launcher holds the gate itself)."""
    limits = spec.limits
    container = _hardened_container(
        SANDBOX_CONTAINER, image, pull_policy, f"{math.ceil(limits.cpus * 1000)}m", str(limits.memory_bytes)
    )
    container["command"] = [*entrypoint, *spec.command]
    if env_secret is not None:
        container["envFrom"] = [{"secretRef": {"name": env_secret}}]
    plain_env = {**proxy_env, **({WORKSPACE_ENV: WORKSPACE_PATH} if limits.workspace_bytes else {})}
    if plain_env:  # where the proxy listens, where the workspace is: no secret
        container["env"] = [{"name": key, "value": value} for key, value in plain_env.items()]
    pod_spec = _hardened_pod_spec(container, str(limits.tmpfs_bytes))
    if limits.workspace_bytes:
        # In memory like /tmp, so it counts toward the container's memory limit; removed with the pod.
        pod_spec["volumes"].append(
            {"name": WORKSPACE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": str(limits.workspace_bytes)}}
        )
        container["volumeMounts"].append({"name": WORKSPACE_VOLUME, "mountPath": WORKSPACE_PATH})
    for index, mount in enumerate(spec.mounts):
        # A host path of the node the pod runs on: on a cluster of several nodes it must exist on each.
        volume = f"mount-{index}"
        # Type "" (no check): the service may run in a pod of its own, where its filesystem is not the node's, so
        # nothing it could stat says what the source is on the node that runs the sandbox.
        pod_spec["volumes"].append({"name": volume, "hostPath": {"path": mount.source, "type": ""}})
        container["volumeMounts"].append({"name": volume, "mountPath": mount.target, "readOnly": not mount.writable})
    # Names are the proxy's business: a lookup in the sandbox fails at once instead of waiting on a resolver.
    pod_spec["dnsPolicy"] = "None"
    pod_spec["dnsConfig"] = {"nameservers": ["127.0.0.1"], "options": [{"name": "timeout", "value": "1"},
                                                                       {"name": "attempts", "value": "1"}]}
    if spec.lifetime_s is not None:
        pod_spec["activeDeadlineSeconds"] = math.ceil(spec.lifetime_s) + DEADLINE_MARGIN_S
    if runtime_class is not None:
        pod_spec["runtimeClassName"] = runtime_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata(spec, name, owner, SANDBOX_ROLE),
            "spec": pod_spec}


def proxy_pod(spec: SandboxSpec, *, name: str, image: str, pull_policy: str, owner: str | None) -> dict[str, Any]:
    """The session's egress proxy: hardened like a sandbox, configured over its attach stream (no gate: it
    writes nothing before it has read its configuration)."""
    container = _hardened_container(PROXY_CONTAINER, image, pull_policy, PROXY_CPU, PROXY_MEMORY)
    pod_spec = _hardened_pod_spec(container, PROXY_TMPFS)
    if spec.lifetime_s is not None:
        pod_spec["activeDeadlineSeconds"] = math.ceil(spec.lifetime_s) + DEADLINE_MARGIN_S
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata(spec, name, owner, PROXY_ROLE),
            "spec": pod_spec}


def env_secret(spec: SandboxSpec, *, name: str, owner: str | None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata(spec, name, owner),
            "stringData": dict(spec.env)}


def _policy(spec: SandboxSpec, name: str, owner: str | None, role: str | None,
            ingress: list[dict[str, Any]], egress: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(spec, name, owner),
        "spec": {
            "podSelector": {"matchLabels": session_selector(spec.session_id, role)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def network_policies(spec: SandboxSpec, *, owner: str | None) -> list[dict[str, Any]]:
    """Without network: nothing in or out of the session's pods. With: the sandbox reaches its proxy's port
    only, and the proxy is reached by its sandbox only and reaches the world minus private ranges, and DNS."""
    name = object_name(spec)
    if spec.network is None:
        return [_policy(spec, name, owner, None, [], [])]
    to_proxy = {"podSelector": {"matchLabels": session_selector(spec.session_id, PROXY_ROLE)}}
    from_sandbox = {"podSelector": {"matchLabels": session_selector(spec.session_id, SANDBOX_ROLE)}}
    port = [{"protocol": "TCP", "port": PROXY_PORT}]
    dns = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    return [
        _policy(spec, object_name(spec, "-sandbox"), owner, SANDBOX_ROLE, [], [{"to": [to_proxy], "ports": port}]),
        _policy(spec, object_name(spec, "-egress"), owner, PROXY_ROLE, [{"from": [from_sandbox], "ports": port}],
                [{"to": _world(spec.network)}, dns]),
    ]


def _world(network: SandboxNetwork) -> list[dict[str, Any]]:
    """Where the proxy may connect. A rule allowing private addresses leaves that to the proxy's own checks."""
    if any(rule.private for rule in network.rules):
        return [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]
    return [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_V4)}},
            {"ipBlock": {"cidr": "::/0", "except": list(PRIVATE_V6)}}]
