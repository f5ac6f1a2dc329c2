"""The session's Kubernetes manifests: hardening, names, labels, secrets out of the pod spec, network policies."""

from __future__ import annotations

import kubernetes.client as kube

from runner import image_inject
from runner.config import Limits
from runner.egress.rules import Rule
from runner.sandbox import kubernetes as kube_backend
from runner.sandbox.base import INSTANCE_LABEL, OWNER_LABEL, SESSION_LABEL, SandboxNetwork, SandboxSpec
from runner.sandbox.kube_objects import (
    AGENT_ENTRYPOINT,
    OWNER_ANNOTATION,
    PIDS_ANNOTATION,
    SHELL_GATE,
    env_secret,
    instance_selector,
    label_value,
    network_policies,
    object_name,
    proxy_pod,
    sandbox_pod,
)

OWNER = '{"owner": "' + "f" * 32 + '", "lock": "/var/lib/x/instance.lock", "file": "1:2", "seen_from": "h mnt:[1]"}'


def spec(**fields: object) -> SandboxSpec:
    base: dict[str, object] = {
        "session_id": "0123456789abcdef", "instance": "default", "image": "python-servers",
        "command": ("mcp-server-time",), "env": {"TOKEN": "s3cret", "PLAIN": "1"},
        "limits": Limits(memory_bytes=256 * 1024**2, cpus=0.5, pids=99, tmpfs_bytes=32 * 1024**2),
        "labels": {"mcp-runner.profile": "time"}, "lifetime_s": 3600.0,
    }
    return SandboxSpec(**{**base, **fields})  # type: ignore[arg-type]


def pod(session: SandboxSpec | None = None, **kwargs: object) -> dict:  # type: ignore[type-arg]
    args: dict[str, object] = {"name": "p", "image": "mcp-runner/python-servers:abc", "pull_policy": "Never",
                               "owner": OWNER, "runtime_class": None, "env_secret": "p", "proxy_env": {}}
    return sandbox_pod(session or spec(), **{**args, **kwargs})  # type: ignore[arg-type]


def test_the_sandbox_pod_carries_the_docker_sandbox_hardening() -> None:
    manifest = pod()
    kube.V1Pod.from_dict(manifest)  # every field is one the API knows (the models forbid extras)
    body = manifest["spec"]
    [container] = body["containers"]
    assert body["restartPolicy"] == "Never"
    assert body["automountServiceAccountToken"] is False and body["enableServiceLinks"] is False
    assert not (body["hostNetwork"] or body["hostPID"] or body["hostIPC"])
    assert body["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert not security["privileged"] and security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"] == container["resources"]["requests"] == {
        "cpu": "500m", "memory": str(256 * 1024**2)}
    assert body["volumes"][0] == {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": str(32 * 1024**2)}}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert body["activeDeadlineSeconds"] >= 3600
    assert (container["stdin"], container["stdinOnce"], container["tty"]) == (True, False, False)
    assert manifest["metadata"]["annotations"][PIDS_ANNOTATION] == "99"
    assert "runtimeClassName" not in body


def test_the_start_gate_wraps_the_image_entrypoint_and_the_server_command() -> None:
    assert pod()["spec"]["containers"][0]["command"] == [*SHELL_GATE, *AGENT_ENTRYPOINT, "mcp-server-time"]


def test_an_injected_images_launcher_replaces_the_gate_and_the_runner_entrypoint() -> None:
    launcher = ("python3", "-I", "/opt/mcp-runner-agent/boot.py", "--start-gate", "--")
    assert pod(entrypoint=launcher)["spec"]["containers"][0]["command"] == [*launcher, "mcp-server-time"]
    assert kube_backend._entrypoint("with-agent:team/server:1") == image_inject.pod_command(()) == launcher
    assert kube_backend._entrypoint("python-servers") == (*SHELL_GATE, *AGENT_ENTRYPOINT)
    assert SHELL_GATE[:3] == ("/bin/sh", "-c", 'read -r _ && exec "$@"')


def test_env_goes_into_the_secret_never_the_pod_spec() -> None:
    manifest = pod()
    assert "s3cret" not in str(manifest)
    assert manifest["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "p"}}]
    secret = env_secret(spec(), name="p", owner=OWNER)
    kube.V1Secret.from_dict(secret)
    assert secret["stringData"] == {"TOKEN": "s3cret", "PLAIN": "1"}
    assert secret["metadata"]["labels"][SESSION_LABEL] == "0123456789abcdef"


def test_a_pool_sandbox_without_a_lifetime_has_no_deadline_and_runsc_names_its_runtime_class() -> None:
    body = pod(spec(lifetime_s=None), runtime_class="gvisor")["spec"]
    assert "activeDeadlineSeconds" not in body and body["runtimeClassName"] == "gvisor"


def test_labels_are_valid_and_the_long_owner_is_an_annotation() -> None:
    meta = pod()["metadata"]
    assert meta["labels"][SESSION_LABEL] == "0123456789abcdef" and meta["labels"][INSTANCE_LABEL] == "default"
    assert meta["labels"]["mcp-runner.profile"] == "time"
    assert len(meta["labels"][OWNER_LABEL]) <= 63 and meta["annotations"][OWNER_ANNOTATION] == OWNER
    assert "mcp-runner.owner" not in pod(owner=None)["metadata"]["labels"]


def test_label_values_and_names_are_made_valid_and_stay_distinct() -> None:
    assert label_value("ok-1.2_3") == "ok-1.2_3"
    odd = [label_value(text) for text in ("a b", "a/b", "x" * 80, "-lead", "")]
    for value in odd:
        assert len(value) <= 63 and (not value or (value[0].isalnum() and value[-1].isalnum()))
    assert label_value("a b") != label_value("a/b")
    assert object_name(spec()) == "mcp-runner-default-0123456789abcdef"
    long = object_name(spec(instance="My_Instance" * 6))
    assert len(long) <= 63 and long == long.lower() and long[0].isalnum() and long[-1].isalnum()
    assert long != object_name(spec(instance="my-instance" * 6))
    assert instance_selector("default") == f"{SESSION_LABEL},{INSTANCE_LABEL}=default"


def test_without_network_one_deny_all_policy() -> None:
    [policy] = network_policies(spec(), owner=OWNER)
    kube.V1NetworkPolicy.from_dict(policy)
    assert policy["spec"] == {"podSelector": {"matchLabels": {SESSION_LABEL: "0123456789abcdef"}},
                              "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}


def test_with_network_the_sandbox_reaches_its_proxy_only_and_the_proxy_the_public_world() -> None:
    network = SandboxNetwork(rules=(Rule(host="example.org", port=443),), upstream="")
    to_proxy, proxy = network_policies(spec(network=network), owner=OWNER)
    for policy in (to_proxy, proxy):
        kube.V1NetworkPolicy.from_dict(policy)
    assert to_proxy["spec"]["podSelector"]["matchLabels"]["mcp-runner.role"] == "sandbox"
    assert to_proxy["spec"]["ingress"] == []
    [out] = to_proxy["spec"]["egress"]
    assert out["to"][0]["podSelector"]["matchLabels"]["mcp-runner.role"] == "egress-proxy"
    assert out["ports"] == [{"protocol": "TCP", "port": 3128}]
    [inbound] = proxy["spec"]["ingress"]
    assert inbound["from"][0]["podSelector"]["matchLabels"]["mcp-runner.role"] == "sandbox"
    world, dns = proxy["spec"]["egress"]
    assert set(world["to"][0]["ipBlock"]["except"]) >= {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                        "169.254.0.0/16", "100.64.0.0/10", "127.0.0.0/8"}
    assert dns == {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    private = SandboxNetwork(rules=(Rule(host="db.internal", port=5432, private=True),), upstream="")
    assert "except" not in network_policies(spec(network=private), owner=None)[1]["spec"]["egress"][0]["to"][0][
        "ipBlock"]


def test_the_proxy_pod_is_hardened_and_labelled_as_the_proxy() -> None:
    manifest = proxy_pod(spec(), name="p-egress", image="mcp-runner/egress:abc", pull_policy="Never", owner=None)
    kube.V1Pod.from_dict(manifest)
    [container] = manifest["spec"]["containers"]
    assert "command" not in container  # its own entrypoint: it writes nothing before reading its configuration
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert manifest["metadata"]["labels"]["mcp-runner.role"] == "egress-proxy"
    assert "envFrom" not in container and "s3cret" not in str(manifest)
