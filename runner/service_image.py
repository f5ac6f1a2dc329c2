"""The service's own image, ``mcp-runner/service:<hash>``: the runner package and its dependencies, to run in a cluster.

Built like the sandbox images (``runner.images``): FROM the project's root filesystem, wheels fetched on the host
for the image's interpreter, ``docker build --network none``. Its tag hashes the whole runner package's source
(``*.py``, ``*.pyi``, ``*.yaml``, ``py.typed``) with the pins and the Dockerfile, so an image whose tag exists runs
exactly the checkout's code. Sandboxes never need it: it is not one of ``IMAGE_NAMES``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from runner.image_checks import ImageBuildError, Log, run
from runner.images import (
    CACHE_DIR,
    IMAGES_DIR,
    REPO_ROOT,
    WHEEL_TARGET,
    Files,
    Inputs,
    docker_env,
    fetch_wheels,
    image_input,
    image_labels,
    link_or_copy,
)

__all__ = ["SERVICE_CHECK", "build_service_image", "service_files", "service_inputs"]

PACKAGE_DIR = REPO_ROOT / "runner"
SOURCE_SUFFIXES = frozenset({".py", ".pyi", ".yaml", ".typed"})
REQUIREMENTS = "service/requirements.txt"
SERVICE_CHECK = ("health", "--help")
"""Run in the built image: the CLI must import with everything it needs (and know the probe's command)."""


def service_files() -> Files:
    """The runner package's source as ``(path under runner/, bytes)``; caches and editor leftovers excluded."""
    found = (p for p in PACKAGE_DIR.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES)
    return tuple(
        (p.relative_to(PACKAGE_DIR).as_posix(), p.read_bytes())
        for p in sorted(found)
        if "__pycache__" not in p.parts
    )


def _refs_file(sandbox_refs: Mapping[str, str]) -> bytes:
    return json.dumps(dict(sorted(sandbox_refs.items())), indent=1).encode() + b"\n"


def service_inputs(files: Files, sandbox_refs: Mapping[str, str]) -> Inputs:
    """What goes into the image besides its base: the tag is hashed over these.

    ``sandbox_refs`` (name -> ref of each sandbox image) go in as ``image-refs.json``: inside the image the
    sandbox images' build inputs are absent, so the service names its sessions' images from that file
    (``runner.images.IMAGE_REFS_ENV``), and a new sandbox image means a new service image.
    """
    return [
        ("image-refs.json", _refs_file(sandbox_refs)),
        image_input("service/Dockerfile"),
        image_input(REQUIREMENTS),
        ("wheel-target", "\0".join(WHEEL_TARGET).encode()),
        *((f"runner/{path}", data) for path, data in files),
    ]


def build_service_image(ref: str, sandbox_refs: Mapping[str, str], files: Files, *, force: bool, log: Log) -> None:
    """Build ``ref`` FROM the rootfs of ``sandbox_refs`` with exactly ``files`` and ``sandbox_refs`` (what its tag
    was hashed over), then check it."""
    wheels = fetch_wheels([REQUIREMENTS], log, constrained=False, label="the service")
    (CACHE_DIR / "build").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="service-", dir=CACHE_DIR / "build") as tmp:
        ctx = Path(tmp)
        shutil.copy2(IMAGES_DIR / "service" / "Dockerfile", ctx / "Dockerfile")
        (ctx / "req").mkdir()
        shutil.copy2(IMAGES_DIR / REQUIREMENTS, ctx / "req" / "requirements.txt")
        (ctx / "wheels").mkdir()
        for whl in wheels.glob("*.whl"):
            link_or_copy(str(whl), str(ctx / "wheels" / whl.name))
        (ctx / "image-refs.json").write_bytes(_refs_file(sandbox_refs))
        for path, data in files:
            target = ctx / "pkg" / "runner" / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        cmd = ["docker", "build", "--network", "none", "--force-rm", "--build-arg", f"ROOTFS={sandbox_refs['rootfs']}",
               *(a for lb in image_labels("service", ref) for a in ("--label", lb)), "-t", ref, str(ctx)]
        if force:
            cmd.insert(2, "--no-cache")
        run(cmd, f"docker build of {ref}", log, prefix="docker", env=docker_env())
    check = ["docker", "run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges", ref, *SERVICE_CHECK]
    try:
        run(check, f"check of {ref} (mcp-runner {' '.join(SERVICE_CHECK)})", log, prefix="check")
    except ImageBuildError:
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)  # a broken tag must not look "present"
        raise
    log(f"  [check] {ref}: mcp-runner starts (read-only root, no network, all capabilities dropped)")

