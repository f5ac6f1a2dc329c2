"""The service image's inputs (its tag covers the whole runner package) and ``mcp-runner health``, the probe."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from runner import cli, images, service_image


def test_service_is_built_but_not_a_sandbox_image() -> None:
    assert images.SERVICE_IMAGE == "service"
    assert images.SERVICE_IMAGE not in images.IMAGE_NAMES
    assert images.ALL_IMAGE_NAMES[-1] == "service"
    assert images.ALL_IMAGE_NAMES[:-1] == images.IMAGE_NAMES
    assert images.image_ref("service").startswith("mcp-runner/service:")


def test_service_files_are_the_package_source_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "runner"
    (package / "api" / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "api" / "stub.pyi").write_text("x: int\n")
    (package / "api" / "__pycache__" / "stub.cpython-311.pyc").write_bytes(b"\0")
    (package / "api" / "__pycache__" / "stale.py").write_text("")
    (package / "profiles.yaml").write_text("a: 1\n")
    (package / "notes.swp").write_text("editor")
    monkeypatch.setattr(service_image, "PACKAGE_DIR", package)
    assert [path for path, _ in service_image.service_files()] == ["__init__.py", "api/stub.pyi", "profiles.yaml"]


def test_service_tag_follows_the_runner_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "runner"
    package.mkdir()
    (package / "cli.py").write_text("A = 1\n")
    monkeypatch.setattr(service_image, "PACKAGE_DIR", package)
    before = {n: images.image_ref(n) for n in images.ALL_IMAGE_NAMES}
    (package / "cli.py").write_text("A = 2\n")
    after = {n: images.image_ref(n) for n in images.ALL_IMAGE_NAMES}
    assert [n for n in before if before[n] != after[n]] == ["service"]


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def test_health_exit_status(
    health_server: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert cli.main(["health", "--address", address]) == 0
    assert cli.main(["--address", address, "health"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{address}: SERVING"] * 2
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert cli.main(["health", "--address", address]) == 1
    assert cli.main(["health", "--address", address, "--live"]) == 0
    assert cli.main(["health", "--address", address, "--service", "nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_health_without_a_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        assert cli.main(["health", "--address", address, "--timeout", "0.5", "--live"]) == 1


def test_the_service_names_sandbox_images_from_the_file_it_carries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dockerfile = (images.IMAGES_DIR / "service" / "Dockerfile").read_text()
    assert f"{images.IMAGE_REFS_ENV}=/opt/service/image-refs.json" in dockerfile
    computed = images.image_ref("python-servers")
    refs = tmp_path / "image-refs.json"
    refs.write_text('{"python-servers": "mcp-runner/python-servers:0123456789ab"}')
    monkeypatch.setenv(images.IMAGE_REFS_ENV, str(refs))
    assert images.image_ref("python-servers") == "mcp-runner/python-servers:0123456789ab"
    assert images.image_ref("egress") == images._ref("egress", images.runner_code())  # not in the file: computed
    monkeypatch.delenv(images.IMAGE_REFS_ENV)
    assert images.image_ref("python-servers") == computed


def test_a_new_sandbox_image_means_a_new_service_image() -> None:
    files = service_image.service_files()
    one = service_image.service_inputs(files, {"python-servers": "mcp-runner/python-servers:1"})
    two = service_image.service_inputs(files, {"python-servers": "mcp-runner/python-servers:2"})
    assert images.digest(one) != images.digest(two)
