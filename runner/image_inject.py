"""``image: REF`` with ``inject_agent: true``: a derived image that adds the runner's agent to a user's image.

The user's image needs only ``python3`` (3.10 or newer, glibc, x86_64): the agent's wheels (``agent.txt`` under
``constraints.txt``) are fetched on the host for that interpreter and unpacked there into a directory the
agent alone puts on its ``sys.path`` (``python3 -I boot.py``: the server's Python never sees it, and the image's
``PYTHONPATH`` never reaches the agent). Nothing is installed with the image's own tools, so the derived image is
built with ``docker build --network none`` from a context of plain files.

The image's ENTRYPOINT and CMD become the derived image's CMD: a profile without ``command`` runs what the image
ran. The tag hashes the base image's id and the agent's inputs, so a new base or a new agent is a new image.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.image_checks import ImageBuildError, Log, run
from runner.images import (
    CACHE_DIR,
    IMAGES_DIR,
    LABEL,
    REPOSITORY,
    WHEEL_TARGET,
    digest,
    docker_env,
    image_input,
    image_present,
    runner_code,
)
from runner.text import printable

__all__ = [
    "ENTRYPOINT", "KIND", "START_GATE", "check_onbuild", "ensure_injected", "image_command", "injected_ref",
    "pod_command",
]

RECIPE = "1"
KIND = "with-agent"
"""The ``mcp-runner.image`` label of derived images."""
LABEL_BASE = "mcp-runner.base"
AGENT_ROOT = "/opt/mcp-runner-agent"
START_GATE = "--start-gate"
BOOT = f'''"""mcp-runner agent launcher: its own libraries first on sys.path, then ``python -m runner.agent``.

``{START_GATE}`` first (a pod's command): wait for one line on stdin before starting, read a byte at a time so
nothing past it is consumed; the image may have no shell to hold that gate.
"""
import os
import runpy
import sys

if sys.argv[1:2] == ["{START_GATE}"]:
    del sys.argv[1]
    while os.read(0, 1) not in (b"\\n", b""):
        pass
sys.path[:0] = ["{AGENT_ROOT}/lib"]
runpy.run_module("runner.agent", run_name="__main__", alter_sys=True)
'''
ENTRYPOINT = ("python3", "-I", f"{AGENT_ROOT}/boot.py")
"""The derived image's ENTRYPOINT, before its ``--``."""
_PROBED = re.compile(r"(\d{1,2}) (\d{1,3}) ([\w-]{1,32}) ([\w-]{1,32})")
_USER = re.compile(r"[A-Za-z0-9._-]{1,64}(?::[A-Za-z0-9._-]{1,64})?")
RUN_LIMIT = 120
"""Seconds a check run in the user's image (its python3 asked its version, the agent imported) may take."""
PROBE = ("import platform, sys; "
         "print(sys.version_info[0], sys.version_info[1], platform.machine(), platform.libc_ver()[0] or 'none')")


def _inspect(image: str) -> dict[str, Any]:
    done = subprocess.run(["docker", "image", "inspect", "--format", "{{json .}}", image],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ImageBuildError(f"image {image!r} is not on this Docker engine: pull or build it first "
                              f"(inject_agent derives an image from a local one)\n{done.stderr.strip()}")
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def _base_config(image: str) -> dict[str, Any]:
    """``image``'s inspection, refused when it has ONBUILD triggers: they would run in the build that adds the agent,
    a ``RUN`` as root and an ``ADD <url>`` fetched by the host's Docker daemon (``--network none`` covers the build's
    containers, not the daemon's own downloads)."""
    info = _inspect(image)
    check_onbuild(image, info.get("Config") or {})
    return info


def check_onbuild(image: str, config: Mapping[str, Any]) -> None:
    """ImageBuildError naming the ONBUILD triggers of ``config`` (``image``'s, as ``docker inspect`` gives it)."""
    triggers = _argv(config.get("OnBuild"))
    if triggers:
        named = "; ".join(" ".join(printable(t, 120).split()) for t in triggers[:5]) + ("; …" * (len(triggers) > 5))
        raise ImageBuildError(f"image {image!r} has ONBUILD triggers ({named}), which would run in the build that "
                              "adds the agent: build your own image FROM it (so they run in your build, where you "
                              "see them), or rebuild it without ONBUILD, and name that image")


def _argv(value: object) -> list[str]:
    return [str(a) for a in value] if isinstance(value, list) else []


def _dockerfile(config: dict[str, Any]) -> bytes:
    """The derived image's Dockerfile. What it takes from the image's config is the image author's, not ours: the
    argv goes in as JSON, and a user that is not a plain ``name[:group]`` is not carried over (it could carry a
    line break, that is, an instruction of its own); the sandbox sets its own user anyway."""
    ran = [*_argv(config.get("Entrypoint")), *_argv(config.get("Cmd"))]
    user = str(config.get("User") or "0")
    user = user if _USER.fullmatch(user) else "0"
    lines = [
        f"# {KIND}: the mcp-runner agent added to a user's image (runner/image_inject.py)",
        "ARG BASE", "FROM ${BASE}", f"COPY agent/ {AGENT_ROOT}/", "USER 0",
        # Compiled here: the sandbox's root is read-only, so otherwise every session compiles the agent again.
        f'RUN ["python3", "-m", "compileall", "-q", "{AGENT_ROOT}"]', f"USER {user}",
        "ENV PYTHONUNBUFFERED=1",
        f"ENTRYPOINT {json.dumps([*ENTRYPOINT, '--'])}",
        f"CMD {json.dumps(ran)}" if ran else "CMD []",
    ]
    return ("\n".join(lines) + "\n").encode()


def _agent_inputs() -> list[tuple[str, bytes]]:
    return [image_input("agent.txt"), image_input("constraints.txt"), ("boot", BOOT.encode()),
            *((f"agent/{fn}", data) for fn, data in runner_code().agent)]


def _ref_of(info: dict[str, Any]) -> str:
    items = [("recipe", RECIPE.encode()), ("base-id", str(info["Id"]).encode()),
             ("Dockerfile", _dockerfile(info.get("Config") or {})), *_agent_inputs()]
    return f"{REPOSITORY}/{KIND}:{digest(items)[:12]}"


def injected_ref(image: str) -> str:
    """``mcp-runner/with-agent:<hash12>`` for ``image`` as this engine holds it; needs Docker, not the network."""
    return _ref_of(_base_config(image))


def _run_in(image: str, what: str, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """``docker run --rm --name … argv`` (argv: options, then the image and its arguments) bounded by RUN_LIMIT; on
    timeout the container is removed (killing the CLI would leave it running) and ImageBuildError names ``image``."""
    name = f"mcp-runner-check-{uuid.uuid4().hex[:12]}"
    try:
        return subprocess.run(["docker", "run", "--rm", "--name", name, *argv], capture_output=True, text=True,
                              errors="replace", timeout=RUN_LIMIT)
    except subprocess.TimeoutExpired:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        raise ImageBuildError(f"image {image!r}: {what} did not finish within {RUN_LIMIT} s, so it was stopped "
                              "and no image was built") from None


def _python_of(image: str, image_id: str) -> tuple[int, int]:
    """The python3 of ``image`` (run by its ``image_id``) as (major, minor), asked hardened as a sandbox is (its
    output is the image's word)."""
    done = _run_in(image, "its python3 asked for its version", [
        "--network", "none", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--user", "10001:10001", "--entrypoint", "python3", image_id, "-c", PROBE])
    said = done.stdout.strip()[:200]
    if done.returncode != 0:
        raise ImageBuildError(f"image {image!r} has no python3 the agent can run on (inject_agent needs python3 "
                              f">= 3.10 on its PATH): {printable(done.stderr.strip()[-500:] or said, 500)}")
    found = _PROBED.fullmatch(said)
    if found is None:
        raise ImageBuildError(f"image {image!r}: its python3 did not say its version ({printable(said, 200)!r})")
    major, minor, machine, libc = int(found[1]), int(found[2]), found[3], found[4]
    if (major, minor) < (3, 10) or machine != "x86_64" or libc != "glibc":
        raise ImageBuildError(f"image {image!r} has Python {major}.{minor} on {machine} ({libc}); the agent needs "
                              "CPython >= 3.10 on x86_64 with glibc")
    return major, minor


def _target(python: tuple[int, int]) -> list[str]:
    version, abi = f"{python[0]}.{python[1]}", f"cp{python[0]}{python[1]}"
    return [version if a == "3.11" else abi if a == "cp311" else a for a in WHEEL_TARGET]


def _agent_lib(python: tuple[int, int], log: Log) -> Path:
    """The agent's dependencies unpacked for ``python`` (a wheel is a zip of its site-packages files)."""
    target = _target(python)
    items = [("target", "\0".join(target).encode()), image_input("agent.txt"), image_input("constraints.txt")]
    dest = CACHE_DIR / "agent-lib" / digest(items)[:16]
    if (dest / ".complete").exists():
        return dest / "lib"
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "wheels").mkdir(parents=True)
    run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar", "off", *target,
         "-d", str(dest / "wheels"), "-c", str(IMAGES_DIR / "constraints.txt"), "-r", str(IMAGES_DIR / "agent.txt")],
        f"pip download of the agent's wheels for Python {python[0]}.{python[1]} (on the host)", log, prefix="pip")
    lib = dest / "lib"
    for wheel in sorted((dest / "wheels").glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(lib)
    for data in lib.glob("*.data"):  # purelib/platlib belong in site-packages; scripts and headers are not needed
        for kind in ("purelib", "platlib"):
            for item in (data / kind).glob("*") if (data / kind).is_dir() else ():
                shutil.move(str(item), str(lib / item.name))
        shutil.rmtree(data)
    (dest / ".complete").write_text("ok\n")
    return lib


def ensure_injected(image: str, log: Log = print, *, force: bool = False) -> str:
    """The derived image of ``image`` with the agent: present, or built (offline) and returned."""
    info = _base_config(image)  # once: the tag hashes this Id, and the build runs FROM it, not the tag
    ref, base_id = _ref_of(info), str(info["Id"])
    if image_present(ref) and not force:
        log(f"{ref} is present (the agent added to {image})")
        return ref
    lib = _agent_lib(_python_of(image, base_id), log)
    (CACHE_DIR / "build").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="with-agent-", dir=CACHE_DIR / "build") as tmp:
        ctx = Path(tmp)
        (ctx / "Dockerfile").write_bytes(_dockerfile(info.get("Config") or {}))
        shutil.copytree(lib, ctx / "agent" / "lib")
        (ctx / "agent" / "lib" / "runner" / "agent").mkdir(parents=True)
        (ctx / "agent" / "lib" / "runner" / "__init__.py").write_bytes(b"")  # the host's pulls heavy deps
        for fn, data in runner_code().agent:
            (ctx / "agent" / "lib" / "runner" / "agent" / fn).write_bytes(data)
        (ctx / "agent" / "boot.py").write_text(BOOT)
        labels = {LABEL: KIND, "mcp-runner.ref": ref, LABEL_BASE: image, f"{LABEL_BASE}-id": base_id}
        cmd = ["docker", "build", "--network", "none", "--force-rm", "--build-arg", f"BASE={base_id}",
               *(a for k, v in labels.items() for a in ("--label", f"{k}={v}")), "-t", ref, tmp]
        run(cmd, f"docker build of {ref} (the agent added to {image})", log, prefix="docker", env=docker_env())
    imports = f"import sys; sys.path[:0] = ['{AGENT_ROOT}/lib']; import mcp, runner.agent.stdio"
    try:
        check = _run_in(image, f"the agent's import check in {ref}", [
            "--network", "none", "--user", "10001:10001", "--read-only", "--entrypoint", "python3", ref,
            "-I", "-c", imports])
    except ImageBuildError:
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)  # a broken tag must not look "present"
        raise
    if check.returncode != 0:
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)
        raise ImageBuildError(f"the agent does not start in {ref} (derived from {image}):\n"
                              f"{printable(check.stderr[-2000:])}")
    log(f"built {ref}: the agent added to {image}")
    return ref


def pod_command(command: Sequence[str]) -> tuple[str, ...]:
    """A pod's command for a derived image: it replaces the image's ENTRYPOINT, so it names the launcher again, which
    holds the start gate itself (the runner images' gate is a shell's ``read``; the user's image may have no shell)."""
    return (*ENTRYPOINT, START_GATE, "--", *command)


def image_command(ref: str) -> tuple[str, ...]:
    """The derived image's CMD (what the user's image ran): a pod's command drops it, so the backend names it."""
    return tuple(_argv((_inspect(ref).get("Config") or {}).get("Cmd")))
