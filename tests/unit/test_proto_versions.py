"""The committed gRPC stubs import under the grpcio and protobuf the service image pins and pyproject allows.

grpc_tools writes its own version into the stubs as the grpcio they demand (``GRPC_GENERATED_VERSION``), and
protoc its own as the protobuf runtime they demand: stubs made by a newer venv's tools would break the service
image's build (its requirements pin both). scripts/gen-proto.sh writes pyproject's grpcio floor instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.version import Version

from runner.api._proto.mcp_runner.v1 import runner_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "sandbox_images" / "service" / "requirements.txt"
STUB = ROOT / "runner" / "api" / "_proto" / "mcp_runner" / "v1" / "runner_pb2.py"


def pinned(package: str) -> Version:
    [version] = re.findall(rf"^{re.escape(package)}==(\S+)$", REQUIREMENTS.read_text(encoding="utf-8"), re.M)
    return Version(version)


def grpcio_floor() -> Version:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    [floor] = [d.removeprefix("grpcio>=") for d in dependencies if d.startswith("grpcio>=")]
    return Version(floor)


def protobuf_gencode(stub: Path) -> Version:
    found = re.search(r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),", stub.read_text("utf-8"))
    assert found is not None, f"{stub} has no protobuf runtime check"
    return Version(".".join(found.groups()))


def test_the_stubs_demand_no_newer_grpcio_than_the_image_pins_and_pyproject_allows() -> None:
    demanded = Version(runner_pb2_grpc.GRPC_GENERATED_VERSION)
    assert demanded <= pinned("grpcio")
    assert demanded <= grpcio_floor()


def test_the_stubs_demand_no_newer_protobuf_than_the_image_pins() -> None:
    assert protobuf_gencode(STUB) <= pinned("protobuf")


def test_gen_proto_writes_pyprojects_grpcio_floor_whatever_grpcio_tools_made_it(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    subprocess.run(["bash", "scripts/gen-proto.sh"], cwd=ROOT, env=env, check=True, capture_output=True)
    generated = (tmp_path / "mcp_runner" / "v1" / "runner_pb2_grpc.py").read_text(encoding="utf-8")
    assert f"GRPC_GENERATED_VERSION = '{grpcio_floor()}'\n" in generated
    assert protobuf_gencode(tmp_path / "mcp_runner" / "v1" / "runner_pb2.py") <= pinned("protobuf")
