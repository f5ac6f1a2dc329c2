"""A profile's writable ``/workspace`` and writable mounts: settings, the Docker container and the Kubernetes pod."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import kubernetes.client as kube
import pytest

from runner.config import WORKSPACE_ENV, WORKSPACE_PATH, ConfigError, Limits, Mount
from runner.sandbox.base import SandboxSpec
from runner.sandbox.docker import DockerBackend, sandbox_tmpfs
from runner.sandbox.kube_objects import sandbox_pod
from runner.settings_file import load_settings

MIB = 1024**2
IMAGE = "sha256:" + "0" * 64


def settings_file(tmp_path: Path, profile: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text("builtin_profiles: false\nprofiles:\n  p:\n    image: python-servers\n    command: [c]\n"
                    + textwrap.indent(textwrap.dedent(profile), "    "))
    return path


def test_workspace_and_writable_mounts_are_read_from_the_profile(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    path = settings_file(tmp_path, """\
        workspace: 64m
        mounts: [{source: data, target: /data, writable: true}, {source: data, target: /ro}]
    """)
    profile = load_settings(path).profiles["p"]
    assert profile.limits.workspace_bytes == 64 * MIB
    assert profile.mounts == (Mount(str(tmp_path / "data"), "/data", True), Mount(str(tmp_path / "data"), "/ro"))


def test_without_workspace_there_is_none(tmp_path: Path) -> None:
    assert load_settings(settings_file(tmp_path, "env: {}\n")).profiles["p"].limits.workspace_bytes == 0


@pytest.mark.parametrize(("size", "fragment"), [("2g", "between 1m and 1g"), ("512k", "between 1m and 1g"),
                                                ("lots", "not a size")])
def test_a_workspace_out_of_bounds_is_refused_naming_the_key(tmp_path: Path, size: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(settings_file(tmp_path, f"workspace: {size}\n"))
    assert "profiles.p.workspace" in caught.value.message and fragment in caught.value.message


def test_docker_tmpfs_has_a_sized_workspace_owned_by_the_sandbox_user() -> None:
    assert set(sandbox_tmpfs(Limits())) == {"/tmp"}
    options = sandbox_tmpfs(Limits(workspace_bytes=64 * MIB))[WORKSPACE_PATH].split(",")
    assert {"rw", "nosuid", "nodev", f"size={64 * MIB}", "mode=0700", "uid=10001", "gid=10001"} == set(options)


class _RecordingApi:
    """The docker-py calls ``_create_and_attach`` makes, recorded; nothing reaches an engine."""

    def __init__(self) -> None:
        self.host_config: dict[str, Any] = {}
        self.container: dict[str, Any] = {}

    def create_host_config(self, **kwargs: Any) -> dict[str, Any]:
        self.host_config = kwargs
        return kwargs

    def create_container(self, image: str, **kwargs: Any) -> dict[str, str]:
        self.container = {"image": image, **kwargs}
        return {"Id": "c1"}

    def attach_socket(self, *_: Any, **__: Any) -> object:
        return object()

    def start(self, *_: Any) -> None:
        return None


def docker_create(spec: SandboxSpec) -> _RecordingApi:
    backend = DockerBackend()
    api = _RecordingApi()
    backend._client = api
    try:
        backend._create_and_attach(spec, None)
    finally:
        backend.close()
    return api


def spec(limits: Limits | None = None, mounts: tuple[Mount, ...] = ()) -> SandboxSpec:
    return SandboxSpec(session_id="s1", instance="t", image=IMAGE, command=("c",), env={"A": "1"},
                       limits=limits or Limits(), mounts=mounts)


def test_docker_binds_mounts_read_only_unless_writable_and_names_the_workspace_in_env() -> None:
    api = docker_create(spec(Limits(workspace_bytes=8 * MIB), (Mount("/src", "/ro"), Mount("/w", "/rw", True))))
    assert api.host_config["binds"] == {"/src": {"bind": "/ro", "mode": "ro"}, "/w": {"bind": "/rw", "mode": "rw"}}
    assert WORKSPACE_PATH in api.host_config["tmpfs"] and api.host_config["read_only"] is True
    assert api.container["environment"] == {"A": "1", WORKSPACE_ENV: WORKSPACE_PATH}


def test_docker_without_workspace_sets_no_env_and_no_tmpfs_for_it() -> None:
    api = docker_create(spec())
    assert set(api.host_config["tmpfs"]) == {"/tmp"} and api.container["environment"] == {"A": "1"}


def pod(session: SandboxSpec) -> dict[str, Any]:
    manifest = sandbox_pod(session, name="p", image="img", pull_policy="Never", owner=None, runtime_class=None,
                           env_secret="p", proxy_env={})
    kube.V1Pod.from_dict(manifest)  # every field one the API knows
    return manifest


def test_kubernetes_workspace_is_a_sized_memory_empty_dir_and_mounts_follow_writable(tmp_path: Path) -> None:
    file = tmp_path / "one.txt"
    file.write_text("x")
    mounts = (Mount(str(tmp_path), "/ro"), Mount(str(tmp_path), "/rw", True), Mount(str(file), "/f.txt"))
    manifest = pod(spec(Limits(workspace_bytes=16 * MIB), mounts))
    volumes = {v["name"]: v for v in manifest["spec"]["volumes"]}
    assert volumes["workspace"]["emptyDir"] == {"medium": "Memory", "sizeLimit": str(16 * MIB)}
    # No check: the service's own filesystem says nothing of the node's (the service may run in a pod)
    assert [volumes[f"mount-{i}"]["hostPath"] for i in range(3)] == [
        {"path": str(tmp_path), "type": ""}, {"path": str(tmp_path), "type": ""}, {"path": str(file), "type": ""}
    ]
    container = manifest["spec"]["containers"][0]
    mounted = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounted[WORKSPACE_PATH]["name"] == "workspace" and not mounted[WORKSPACE_PATH].get("readOnly")
    assert [mounted[path]["readOnly"] for path in ("/ro", "/rw", "/f.txt")] == [True, False, True]
    assert {"name": WORKSPACE_ENV, "value": WORKSPACE_PATH} in container["env"]


def test_kubernetes_without_workspace_has_no_volume_or_env_for_it() -> None:
    manifest = pod(spec())
    assert [v["name"] for v in manifest["spec"]["volumes"]] == ["tmp"]
    assert "env" not in manifest["spec"]["containers"][0]
