"""Bring your own server, for real: images built from a PyPI and an npm package (real registries, real Docker),
used through ``package:`` profiles on a real service; the agent injected into a plain image with python3; an
image without the agent refused at once with a message that says so. The service tests run on both backends: on
the test cluster the service itself loads the profiles' images into the nodes' containerd at start-up.

The packages are small on purpose (CI starts from an empty cache): ``mcp-server-calculator`` (PyPI) and
``@modelcontextprotocol/server-sequential-thinking`` (npm), neither shipped in the runner's own images.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import grpc
import pytest
import yaml

from runner.images import image_ref
from tests.integration.conftest import Service, start_service, stop_service

pytestmark = [pytest.mark.integration, pytest.mark.backends("docker", "kubernetes")]

PYPI = "pypi:mcp-server-calculator"
NPM = "npm:@modelcontextprotocol/server-sequential-thinking"


def _labels(ref: str) -> dict[str, str]:
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", ref],
                         capture_output=True, text=True, check=True).stdout
    labels: dict[str, str] = json.loads(out)
    return labels


def _add(spec: str) -> tuple[str, str]:
    """``mcp-runner images add SPEC``: the image reference it printed, and the pinned spec of its snippet."""
    done = subprocess.run([sys.executable, "-m", "runner.cli", "images", "add", "-q", spec],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    ref = done.stdout.splitlines()[0]
    pinned = re.search(r'^    package: "(.+)"$', done.stdout, re.MULTILINE)
    assert pinned is not None, done.stdout
    return ref, pinned.group(1)


@pytest.fixture(scope="module")
def added(images: dict[str, str]) -> dict[str, tuple[str, str]]:
    return {spec: _add(spec) for spec in (PYPI, NPM)}


@pytest.fixture(scope="module")
def plain_image(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server image without the agent: the root filesystem with mcp-server-time as its ENTRYPOINT."""
    ref = f"mcp-runner-test/plain-time:{secrets.token_hex(4)}"
    ctx = tmp_path_factory.mktemp("plain")
    (ctx / "Dockerfile").write_text(
        f"FROM {image_ref('python-servers')} AS servers\n"
        f"FROM {image_ref('rootfs')}\n"
        "COPY --from=servers /opt/servers /opt/servers\n"
        'ENTRYPOINT ["/opt/servers/bin/mcp-server-time"]\n'
    )
    subprocess.run(["docker", "build", "--network", "none", "-q", "-t", ref, str(ctx)], check=True,
                   capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    yield ref
    derived = subprocess.run(["docker", "image", "ls", "--filter", f"label=mcp-runner.base={ref}", "--format",
                              "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True).stdout.split()
    subprocess.run(["docker", "rmi", "-f", ref, *derived], capture_output=True)
    from runner.image_transfer import TEST_CLUSTER_RUN_DIR, containerd_name

    if derived and TEST_CLUSTER_RUN_DIR.is_dir():  # the Kubernetes run's start-up loaded them there

        _ctr("images", "rm", *(containerd_name(name) for name in derived))


def test_images_add_builds_pinned_images_with_the_agent(added: dict[str, tuple[str, str]]) -> None:
    (pypi_ref, pypi_pinned), (npm_ref, npm_pinned) = added[PYPI], added[NPM]
    assert re.fullmatch(r"mcp-runner/pypi-mcp-server-calculator:[0-9a-f]{12}", pypi_ref)
    assert re.fullmatch(r"mcp-runner/npm-modelcontextprotocol-server-sequential-thinking:[0-9a-f]{12}", npm_ref)
    assert re.fullmatch(r"pypi:mcp-server-calculator==\d+(\.\d+)+", pypi_pinned)  # the latest, pinned
    assert re.fullmatch(r"npm:@modelcontextprotocol/server-sequential-thinking@\d+\.\d+\.\d+", npm_pinned)
    for ref, pinned, base, command in ((pypi_ref, pypi_pinned, "python-servers", "mcp-server-calculator"),
                                       (npm_ref, npm_pinned, "node-servers", "mcp-server-sequential-thinking")):
        labels = _labels(ref)
        assert labels["mcp-runner.image"] == "package"
        assert labels["mcp-runner.package"] == pinned
        assert labels["mcp-runner.from"] == image_ref(base)  # FROM today's image: today's agent
        assert labels["mcp-runner.command"] == command
    # Added again, pinned: found here by its labels, no new image.
    assert _add(pypi_pinned) == (pypi_ref, pypi_pinned)
    listed = subprocess.run([sys.executable, "-m", "runner.cli", "images", "list", "--json"],
                            capture_output=True, text=True, check=True).stdout
    assert {"name": pypi_pinned, "ref": pypi_ref, "state": "present"} in json.loads(listed)


@pytest.mark.parametrize(("spec", "says"), [
    ("pypi:mcp-server-calculator==999.0.0", "PyPI has no such version 999.0.0"),
    ("npm:@modelcontextprotocol/server-sequential-thinking@0.0.999", "npm has no such version 0.0.999"),
    ("npm:left-pad@1.3.0", "has no executable (no bin)"),
])  # fmt: skip
def test_images_add_refuses_what_cannot_be_a_server(spec: str, says: str, images: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "runner.cli", "images", "add", "-q", spec],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert says in done.stderr
    assert done.stdout == ""


def test_images_add_usage_error_exits_2() -> None:
    done = subprocess.run([sys.executable, "-m", "runner.cli", "images", "add", "cargo:ripgrep"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "ECOSYSTEM pypi or npm" in done.stderr


def _ctr(*args: str, stdin: IO[bytes] | None = None) -> subprocess.CompletedProcess[str]:
    from runner.image_transfer import CONTAINERD_NAMESPACE, find_containerd_socket

    return subprocess.run(["ctr", "--address", str(find_containerd_socket()), "--namespace", CONTAINERD_NAMESPACE,
                           *args], stdin=stdin, capture_output=True, text=True, timeout=300)


def _on_cluster() -> set[str]:
    return set(_ctr("images", "list", "--quiet").stdout.split())


@pytest.fixture
def byo_service(added: dict[str, tuple[str, str]], plain_image: str, backend: str, tmp_path: Path
                ) -> Iterator[Service]:
    if backend == "kubernetes":
        from runner.image_transfer import containerd_name
        from tests.kubernetes_cluster import ensure_images_loaded

        ensure_images_loaded()  # the runner's images, as `make run BACKEND=kubernetes` loads them
        # The PyPI package's image leaves the cluster, so the service's start-up is what brings it back (with the
        # injected image, new with each plain image); the npm one stays, so it is found there.
        _ctr("images", "rm", containerd_name(added[PYPI][0]))
        assert containerd_name(added[PYPI][0]) not in _on_cluster()
    config = tmp_path / "byo.yaml"
    config.write_text(yaml.safe_dump({"profiles": {
        "calc": {"package": PYPI},  # unpinned: the newest image built here
        "thinking": {"package": added[NPM][1]},
        "injected": {"image": plain_image, "inject_agent": True},  # built at the service's start
        "no-agent": {"image": plain_image, "command": ["/opt/servers/bin/mcp-server-time"]},
    }}))  # fmt: skip
    service = start_service(tmp_path, f"it-byo-{secrets.token_hex(3)}", config=config, backend=backend)
    try:
        yield service
    finally:
        stop_service(service)


def test_package_and_injected_profiles_serve_and_an_agentless_image_fails_fast(
    byo_service: Service, added: dict[str, tuple[str, str]]
) -> None:
    with byo_service.client() as client:
        calc = client.open_session("calc", timeout=120)
        assert "calculate" in [t.name for t in calc.tools]
        result = client.call_tool(calc.session_id, "calculate", {"expression": "6*7"}, timeout=60)
        assert not result.is_error and "42" in json.dumps([str(c) for c in result.content])
        client.close_session(calc.session_id)

        thinking = client.open_session("thinking", timeout=120)
        result = client.call_tool(thinking.session_id, "sequentialthinking", {
            "thought": "one step", "nextThoughtNeeded": False, "thoughtNumber": 1, "totalThoughts": 1,
        }, timeout=60)  # fmt: skip
        assert not result.is_error
        client.close_session(thinking.session_id)

        injected = client.open_session("injected", timeout=120)
        result = client.call_tool(injected.session_id, "get_current_time", {"timezone": "UTC"}, timeout=60)
        assert not result.is_error and "UTC" in json.dumps([str(c) for c in result.content])
        client.close_session(injected.session_id)

        with pytest.raises(grpc.RpcError) as refused:
            client.open_session("no-agent", timeout=120)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.value.details() or ""
    assert "has no mcp-runner agent: build it with `mcp-runner images add` or set `inject_agent: true`" in details
    assert "mcp-runner-test/plain-time:" in details
    assert "no-agent" in byo_service.log() and "its sessions will not open" in byo_service.log()
    if byo_service.backend == "kubernetes":
        from runner.image_transfer import containerd_name

        log = byo_service.log()
        pypi_ref, npm_ref = added[PYPI][0], added[NPM][0]
        assert f"loading {pypi_ref} into the cluster's containerd" in log
        assert f"{npm_ref} is in the cluster's containerd" in log
        # Loaded at this start, or by `images load` before it when the Docker run had built it already.
        derived = re.search(r"(?:loading )?(mcp-runner/with-agent:[0-9a-f]{12}) (?:into|is in) the cluster's", log)
        assert derived is not None, log
        assert {containerd_name(pypi_ref), containerd_name(derived.group(1))} <= _on_cluster()


@pytest.fixture
def cluster_only_images(images: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two images without the agent that only the cluster's containerd holds (so the host's engine cannot vouch for
    them): one whose agent command is missing (tini there, /opt/agent not), one without even the gate's shell."""
    from runner.image_transfer import containerd_name

    tag = secrets.token_hex(4)
    refs = (f"mcp-runner-test/cluster-no-agent:{tag}", f"mcp-runner-test/cluster-no-shell:{tag}")
    (tmp_path / "Dockerfile").write_text(
        f"FROM {image_ref('python-servers')} AS servers\n"
        f"FROM {image_ref('rootfs')} AS plain\n"
        "COPY --from=servers /opt/servers /opt/servers\n"
        "FROM plain AS shell-less\n"
        'RUN ["/bin/rm", "/bin/sh"]\n'
    )
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    for ref, target in zip(refs, ("plain", "shell-less"), strict=True):
        subprocess.run(["docker", "build", "--network", "none", "-q", "--target", target, "-t", ref, str(tmp_path)],
                       check=True, capture_output=True, env=env)
    try:
        save = subprocess.Popen(["docker", "save", *refs], stdout=subprocess.PIPE)
        imported = _ctr("images", "import", "-", stdin=save.stdout)
        assert save.wait() == 0 and imported.returncode == 0, imported.stderr
    finally:
        subprocess.run(["docker", "rmi", "-f", *refs], capture_output=True)
    yield refs
    _ctr("images", "rm", *(containerd_name(ref) for ref in refs))


@pytest.mark.backends("kubernetes")
def test_an_image_only_the_cluster_holds_without_the_agent_fails_saying_so(
    cluster_only_images: tuple[str, str], backend: str, tmp_path: Path
) -> None:
    no_agent, no_shell = cluster_only_images
    config = tmp_path / "cluster-only.yaml"
    server = ["/opt/servers/bin/mcp-server-time"]
    config.write_text(yaml.safe_dump({"profiles": {"no-agent": {"image": no_agent, "command": server},
                                                   "no-shell": {"image": no_shell, "command": server}}}))
    service = start_service(tmp_path, f"it-byo-{secrets.token_hex(3)}", config=config, backend=backend)
    try:
        with service.client() as client:
            for profile, image, runtime_said in (("no-agent", no_agent, "exit status 127"),
                                                 ("no-shell", no_shell, "/bin/sh")):
                with pytest.raises(grpc.RpcError) as refused:
                    client.open_session(profile, timeout=120)
                assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, profile
                details = refused.value.details() or ""
                assert f"image {image} has no mcp-runner agent: build it with `mcp-runner images add`" in details
                assert runtime_said in details
    finally:
        stop_service(service)
