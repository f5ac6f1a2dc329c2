"""Sandbox images: content-addressed tags and an offline build.

Every image tag is the first 12 hex digits of a sha256 over everything that
goes into the image (Dockerfile text, pin files, the agent's source bytes, the
tag of the image it is built FROM, ``BASE_IMAGE``). So a tag that exists
locally is, by construction, up to date, and the agent inside an image always
matches the host's ``runner/agent`` code: nothing is ever rebuilt "just in
case", and nothing stale is ever run.

No registry is needed: the root filesystem is bootstrapped from Debian
packages with ``mmdebstrap`` (mirror taken from the host's apt configuration),
wheels and npm packages are fetched on the host and the server images are
built with ``docker build --network none``. Where a registry is reachable,
``BASE_IMAGE=debian:bookworm-slim`` builds the root filesystem from it instead.

External tools run through ``subprocess`` (docker CLI, mmdebstrap, pip, npm),
their output streamed through ``log``, so a person sees what is happening.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from runner.image_checks import SMOKE_COMMANDS, ImageBuildError, Log, failure, run, smoke_check, smoke_check_egress

__all__ = [
    "ALL_IMAGE_NAMES", "IMAGE_NAMES", "SERVICE_IMAGE", "ImageBuildError", "ensure_images", "image_ref", "list_images",
    "missing_images",
]

IMAGE_NAMES: tuple[str, ...] = ("rootfs", "python-servers", "node-servers", "egress")
SERVICE_IMAGE = "service"
"""The service's own image (runner.service_image), for clusters; sandboxes never use it."""
ALL_IMAGE_NAMES: tuple[str, ...] = (*IMAGE_NAMES, SERVICE_IMAGE)
IMAGE_REFS_ENV = "MCP_RUNNER_IMAGE_REFS"

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGES_DIR = REPO_ROOT / "sandbox_images"
AGENT_DIR = REPO_ROOT / "runner" / "agent"
EGRESS_DIR = REPO_ROOT / "runner" / "egress"
CACHE_ENV = "MCP_RUNNER_CACHE_DIR"
CACHE_DIR = Path(os.environ.get(CACHE_ENV) or REPO_ROOT / ".cache")
"""Where images are built from (downloads, build contexts): env MCP_RUNNER_CACHE_DIR where the checkout is not
writable (a service in a read-only image), else the checkout's ``.cache``."""

REPOSITORY = "mcp-runner"
LABEL = "mcp-runner.image"
SUITE = "bookworm"
# Host apt configuration used as the mmdebstrap mirror (first that exists), so
# no mirror host name lives in this code.
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
# Bump when this module's build steps change what ends up in an image.
RECIPE = "2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# pip download targets the image's interpreter (Debian bookworm: CPython 3.11,
# glibc 2.36, x86_64), not the host's. pip does not expand manylinux tags given
# with --platform, so list every glibc level the image can load.
WHEEL_TARGET: tuple[str, ...] = (
    "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311",
    *(a for i in range(36, 4, -1) for a in ("--platform", f"manylinux_2_{i}_x86_64")),
    *(a for t in ("2014", "2010", "1") for a in ("--platform", f"manylinux{t}_x86_64")),
)

Inputs = list[tuple[str, bytes]]
Files = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Code:
    """The runner's in-container code (*.py of runner/agent and runner/egress), read once: the bytes
    hashed into the tags are the bytes copied into the images."""

    agent: Files
    egress: Files

    @cached_property
    def service(self) -> Files:
        """The whole runner package (the service image's), read only when that image is asked for."""
        from runner.service_image import service_files  # it builds on this module

        return service_files()


# --------------------------------------------------------------------------- inputs / tags


def _base_image() -> str:
    return os.environ.get("BASE_IMAGE", "").strip()


def _apt_sources() -> Path | None:
    return next((p for p in APT_SOURCES if p.is_file()), None)


def _packages() -> list[str]:
    text = (IMAGES_DIR / "rootfs" / "packages.txt").read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def _mmdebstrap_argv(sources: Path) -> list[str]:
    # No recommends, no docs/man/locales (keep licences): ~60 MB less to ship and scan.
    return ["mmdebstrap", "--variant=minbase", "--format=tar", "--include=" + ",".join(_packages()),
            '--aptopt=APT::Install-Recommends "false"',
            *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("man", "info", "locale", "doc")),
            "--dpkgopt=path-include=/usr/share/doc/*/copyright", SUITE, "-", str(sources)]


def _py_files(directory: Path) -> Files:
    if not directory.is_dir():
        return ()
    return tuple((p.name, p.read_bytes()) for p in sorted(directory.glob("*.py")) if p.is_file())


def runner_code() -> Code:
    return Code(agent=_py_files(AGENT_DIR), egress=_py_files(EGRESS_DIR))


def image_input(rel: str) -> tuple[str, bytes]:
    return (rel, (IMAGES_DIR / rel).read_bytes())


def _inputs(name: str, code: Code) -> Inputs:
    base = _base_image()
    items: Inputs = [("recipe", RECIPE.encode()), ("name", name.encode()), ("BASE_IMAGE", base.encode())]
    if name == "rootfs":
        items.append(image_input("rootfs/packages.txt"))
        if base:
            items.append(image_input("rootfs/Dockerfile.base"))
        else:
            src = _apt_sources()
            items.append(("mmdebstrap", "\0".join(_mmdebstrap_argv(src or Path("-"))).encode()))
            items.append(("apt-sources", src.read_bytes() if src else b""))
        return items
    items.append(("FROM", _ref("rootfs", code).encode()))
    if name == SERVICE_IMAGE:
        from runner.service_image import service_inputs

        return [*items, *service_inputs(code.service, {n: _ref(n, code) for n in IMAGE_NAMES})]
    if name == "egress":
        return [*items, image_input("egress/Dockerfile"), *((f"egress/{fn}", data) for fn, data in code.egress)]
    items += [image_input(f"{name}/Dockerfile"), image_input("agent.txt"), image_input("constraints.txt")]
    if name == "python-servers":
        items.append(image_input("python-servers/servers.txt"))
        items.append(("wheel-target", "\0".join(WHEEL_TARGET).encode()))
    else:
        items += [image_input("node-servers/package.json"), image_input("node-servers/package-lock.json")]
    items += [(f"agent/{fn}", data) for fn, data in code.agent]
    return items


def digest(items: Inputs) -> str:
    h = hashlib.sha256()
    for label, data in items:  # length-prefixed, so no two input lists collide
        raw = label.encode()
        h.update(len(raw).to_bytes(8, "big") + raw + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def _ref(name: str, code: Code) -> str:
    if name not in ALL_IMAGE_NAMES:
        raise ValueError(f"unknown image {name!r}; known images: {', '.join(ALL_IMAGE_NAMES)}")
    return f"{REPOSITORY}/{name}:{digest(_inputs(name, code))[:12]}"


def image_ref(name: str) -> str:
    """``mcp-runner/<name>:<hash12>`` computed from the inputs; needs no Docker.

    Where env ``MCP_RUNNER_IMAGE_REFS`` names a JSON file of ``name -> ref``, its refs: the service image has no
    build inputs, and carries the refs of the sandbox images built beside it.
    """
    fixed = os.environ.get(IMAGE_REFS_ENV)
    if fixed and name in (refs := json.loads(Path(fixed).read_bytes())):
        return str(refs[name])
    return _ref(name, runner_code())


# --------------------------------------------------------------------------- subprocess helpers


def check_docker() -> None:
    try:
        p = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                           capture_output=True, text=True, timeout=30)
    except FileNotFoundError as e:
        raise ImageBuildError("docker CLI not found: install Docker (Debian: apt-get install docker.io)") from e
    except subprocess.TimeoutExpired as e:
        raise ImageBuildError("docker did not answer within 30 s: is dockerd running?") from e
    if p.returncode != 0:
        raise ImageBuildError("cannot reach the Docker engine (is dockerd running, may this user use it?):\n"
                              + (p.stderr or p.stdout).strip())


def image_present(ref: str) -> bool:
    p = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref],
                       capture_output=True, text=True)
    return p.returncode == 0


def docker_env() -> dict[str, str]:
    return {**os.environ, "DOCKER_BUILDKIT": "0"}  # legacy builder: --network none, no registry


def image_labels(name: str, ref: str) -> list[str]:
    return [f"{LABEL}={name}", f"mcp-runner.ref={ref}"]


# --------------------------------------------------------------------------- host-side fetches


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fetch_wheels(reqs: Sequence[str], log: Log, *, constrained: bool = True, label: str = "") -> Path:
    """pip download ``reqs`` for the image's Python into a cache dir keyed by the inputs.

    ``constrained``: held to the sandboxes' ``constraints.txt`` (dependencies resolved); otherwise ``reqs`` pin
    every distribution themselves (``--no-deps``), as the service's do (some at other versions than the sandboxes').
    """
    items = [("target", "\0".join(WHEEL_TARGET).encode()), *([image_input("constraints.txt")] if constrained else [])]
    items += [image_input(r) for r in reqs]
    dest = CACHE_DIR / "wheels" / digest(items)[:16]
    what = label or ", ".join(reqs)
    if (dest / ".complete").exists():
        log(f"wheels for {what}: cached in {dest}")
        return dest
    log(f"downloading wheels for {what} into {dest}")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar", "off",
           *WHEEL_TARGET, "-d", str(dest)]
    cmd += ["-c", str(IMAGES_DIR / "constraints.txt")] if constrained else ["--no-deps"]
    for r in reqs:
        cmd += ["-r", str(IMAGES_DIR / r)]
    run(cmd, "pip download (on the host)", log, prefix="pip")
    (dest / ".complete").write_text("ok\n")
    return dest


def _fetch_node_modules(log: Log) -> Path:
    """npm ci the pinned servers (lockfile-exact, no install scripts) into a cache dir."""
    items = [image_input("node-servers/package.json"), image_input("node-servers/package-lock.json")]
    dest = CACHE_DIR / "npm" / digest(items)[:16]
    if (dest / ".complete").exists():
        log(f"npm packages: cached in {dest}")
        return dest
    log(f"installing npm packages into {dest}")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for fn in ("package.json", "package-lock.json"):
        shutil.copy2(IMAGES_DIR / "node-servers" / fn, dest / fn)
    run(["npm", "ci", "--omit=dev", "--no-audit", "--no-fund", "--ignore-scripts"],
         "npm ci (on the host)", log, prefix="npm", cwd=dest)
    for cmd in SMOKE_COMMANDS["node-servers"]:
        if not (dest / "node_modules" / ".bin" / cmd[0]).exists():
            raise ImageBuildError(f"npm ci: no bin {cmd[0]!r} in {dest}/node_modules/.bin")
    (dest / ".complete").write_text("ok\n")
    return dest


# --------------------------------------------------------------------------- builds


def _build_rootfs(ref: str, *, force: bool, log: Log) -> None:
    base = _base_image()
    if base:
        with tempfile.TemporaryDirectory(prefix="mcp-runner-ctx-") as ctx:
            cmd = ["docker", "build", "--force-rm", "-f", str(IMAGES_DIR / "rootfs" / "Dockerfile.base"),
                   "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"PACKAGES={' '.join(_packages())}",
                   *(a for lb in image_labels("rootfs", ref) for a in ("--label", lb)), "-t", ref, ctx]
            if force:
                cmd.insert(2, "--no-cache")
            run(cmd, f"docker build of {ref} FROM {base}", log, prefix="docker", env=docker_env())
        return
    sources = _apt_sources()
    if sources is None:
        raise ImageBuildError("no apt sources found (looked at " + ", ".join(map(str, APT_SOURCES))
                              + "); set BASE_IMAGE=debian:bookworm-slim if a registry is reachable")
    if shutil.which("mmdebstrap") is None:
        raise ImageBuildError("mmdebstrap not found: apt-get install mmdebstrap "
                              "(or set BASE_IMAGE=debian:bookworm-slim if a registry is reachable)")
    argv = _mmdebstrap_argv(sources)
    changes = [f"LABEL {lb}" for lb in image_labels("rootfs", ref)]
    changes += [f"ENV PATH={DEFAULT_PATH}", "ENV LANG=C.UTF-8"]
    imp = ["docker", "import", *(a for c in changes for a in ("--change", c)), "-", ref]
    log(f"  [mmdebstrap] {' '.join(argv)} | docker import - {ref}")
    tail: deque[str] = deque(maxlen=40)
    deb = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert deb.stdout is not None and deb.stderr is not None
    try:
        docker = subprocess.Popen(imp, stdin=deb.stdout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except BaseException:
        deb.kill()
        raise
    deb.stdout.close()  # docker import owns the tar stream now
    for raw in deb.stderr:
        line = raw.decode(errors="replace").rstrip()
        tail.append(line)
        log(f"  [mmdebstrap] {line}")
    rc_deb = deb.wait()
    out, _ = docker.communicate()
    text = out.decode(errors="replace").strip()
    if rc_deb != 0:
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)  # never keep a partial rootfs
        raise ImageBuildError(failure("mmdebstrap (root filesystem bootstrap)", rc_deb, argv, tail))
    if docker.returncode != 0:
        raise ImageBuildError(failure("docker import", docker.returncode, imp, text.splitlines()))
    log(f"  [docker] imported {text}")


def _build_server_image(name: str, refs: Mapping[str, str], code: Code, *, force: bool, log: Log) -> None:
    """Build ``refs[name]`` from exactly the agent bytes its tag was hashed over."""
    ref = refs[name]
    agent = code.agent
    if not agent:
        log(f"WARNING: no {AGENT_DIR}/*.py yet: the image's entrypoint (runner.agent) will not start")
    reqs = ["agent.txt", "python-servers/servers.txt"] if name == "python-servers" else ["agent.txt"]
    wheels = fetch_wheels(reqs, log)
    node = _fetch_node_modules(log) if name == "node-servers" else None
    (CACHE_DIR / "build").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=CACHE_DIR / "build") as tmp:
        ctx = Path(tmp)
        shutil.copy2(IMAGES_DIR / name / "Dockerfile", ctx / "Dockerfile")
        (ctx / "req").mkdir()
        for r in ("agent.txt", "constraints.txt", *reqs):
            shutil.copy2(IMAGES_DIR / r, ctx / "req" / Path(r).name)
        (ctx / "wheels").mkdir()
        for whl in wheels.glob("*.whl"):
            link_or_copy(str(whl), str(ctx / "wheels" / whl.name))
        (ctx / "pkg" / "runner").mkdir(parents=True)
        (ctx / "pkg" / "runner" / "__init__.py").write_bytes(b"")  # host's __init__ pulls heavy deps
        (ctx / "agent").mkdir()
        for fn, data in agent:
            (ctx / "agent" / fn).write_bytes(data)
        if node is not None:
            (ctx / "node").mkdir()
            for fn in ("package.json", "package-lock.json"):
                shutil.copy2(node / fn, ctx / "node" / fn)
            shutil.copytree(node / "node_modules", ctx / "node" / "node_modules", symlinks=True,
                            copy_function=link_or_copy)
        cmd = ["docker", "build", "--network", "none", "--force-rm",
               "--build-arg", f"ROOTFS={refs['rootfs']}",
               *(a for lb in image_labels(name, ref) for a in ("--label", lb)), "-t", ref, str(ctx)]
        if force:
            cmd.insert(2, "--no-cache")
        run(cmd, f"docker build of {ref}", log, prefix="docker", env=docker_env())
    try:
        for argv in SMOKE_COMMANDS[name]:
            smoke_check(ref, argv, log)
    except ImageBuildError:
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)  # a broken tag must not look "present"
        raise


def _build_egress_image(refs: Mapping[str, str], code: Code, *, force: bool, log: Log) -> None:
    """The egress proxy: Debian's python3 and the proxy's stdlib-only code, nothing fetched."""
    ref = refs["egress"]
    (CACHE_DIR / "build").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="egress-", dir=CACHE_DIR / "build") as tmp:
        ctx = Path(tmp)
        shutil.copy2(IMAGES_DIR / "egress" / "Dockerfile", ctx / "Dockerfile")
        package = ctx / "pkg" / "runner" / "egress"
        package.mkdir(parents=True)
        (ctx / "pkg" / "runner" / "__init__.py").write_bytes(b"")
        for fn, data in code.egress:
            (package / fn).write_bytes(data)
        cmd = ["docker", "build", "--network", "none", "--force-rm", "--build-arg", f"ROOTFS={refs['rootfs']}",
               *(a for lb in image_labels("egress", ref) for a in ("--label", lb)), "-t", ref, str(ctx)]
        if force:
            cmd.insert(2, "--no-cache")
        run(cmd, f"docker build of {ref}", log, prefix="docker", env=docker_env())
    try:
        smoke_check_egress(ref, log)
    except ImageBuildError:
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)
        raise


# --------------------------------------------------------------------------- public API


def _names(names: Iterable[str] | None) -> list[str]:
    wanted = list(IMAGE_NAMES) if names is None else list(dict.fromkeys(names))
    for n in wanted:
        if n not in ALL_IMAGE_NAMES:
            raise ValueError(f"unknown image {n!r}; known images: {', '.join(ALL_IMAGE_NAMES)}")
    return wanted


def missing_images(names: Iterable[str] | None = None) -> list[str]:
    """Names (of ``names``, default all) whose current ref is not present locally."""
    wanted = _names(names)
    check_docker()
    return [n for n in wanted if not image_present(image_ref(n))]


def list_images(names: Iterable[str] | None = None) -> list[tuple[str, str, bool]]:
    """``(name, ref, present)`` for each of ``names`` (default: the sandbox images)."""
    check_docker()
    code = runner_code()
    refs = [(n, _ref(n, code)) for n in _names(names)]
    return [(n, ref, image_present(ref)) for n, ref in refs]


def ensure_images(names: Iterable[str] | None = None, *, force: bool = False,
                  log: Callable[[str], None] = print) -> dict[str, str]:
    """Build what is missing (or everything named, with ``force``), dependencies first.

    Returns ``name -> ref`` for the names asked for.
    """
    wanted = _names(names)
    check_docker()
    code = runner_code()  # read once: the bytes hashed into the tags are the bytes built in
    refs = {n: _ref(n, code) for n in dict.fromkeys([*IMAGE_NAMES, *wanted])}
    todo: dict[str, str] = {}
    for n in wanted:
        if force:
            todo[n] = "forced"
        elif not image_present(refs[n]):
            todo[n] = "missing"
    if any(n != "rootfs" for n in todo) and "rootfs" not in todo and not image_present(refs["rootfs"]):
        todo["rootfs"] = "missing, needed to build " + ", ".join(n for n in todo if n != "rootfs")
    for n in wanted:
        if n not in todo:
            log(f"{refs[n]} is present (up to date)")
    if not todo:
        return {n: refs[n] for n in wanted}
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / "images.lock", "w") as lock:  # one builder at a time per checkout
        fcntl.flock(lock, fcntl.LOCK_EX)
        for n in ALL_IMAGE_NAMES:  # dependencies first
            if n not in todo or (not force and image_present(refs[n])):  # another process built it meanwhile
                continue
            log(f"building {refs[n]} ({todo[n]})")
            t0 = time.monotonic()
            if n == "rootfs":
                _build_rootfs(refs[n], force=force, log=log)
            elif n == "egress":
                _build_egress_image(refs, code, force=force, log=log)
            elif n == SERVICE_IMAGE:
                from runner.service_image import build_service_image

                build_service_image(refs[n], {m: refs[m] for m in IMAGE_NAMES}, code.service, force=force, log=log)
            else:
                _build_server_image(n, refs, code, force=force, log=log)
            log(f"built {refs[n]} in {time.monotonic() - t0:.0f} s")
    return {n: refs[n] for n in wanted}
