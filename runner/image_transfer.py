"""Getting the images to a cluster: into a node's containerd (no registry), or pushed to a registry a user names.

``mcp-runner images load --kubernetes`` streams ``docker save REF | ctr -n k8s.io images import -`` (no temporary
files) into the containerd the kubelet uses; pods then run them with ``imagePullPolicy: Never`` under the same refs
as Docker (``mcp-runner/<name>:<hash>``). ``mcp-runner images push --registry HOST[:PORT]/PATH`` tags and pushes
each as ``REGISTRY/<name>:<hash>``, the refs the Kubernetes backend uses when ``kubernetes.registry`` is set.

Both build what is missing first (``ensure_images``) and move the images a cluster runs: the server images, the
egress proxy and the service's own image; the root filesystem is only a build base. Tags are content hashes, so an
image already in containerd under its tag is up to date and is skipped.

External commands go through a ``Commands`` object, so unit tests check the exact command lines without a
Docker engine, a containerd or a registry.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from runner.image_checks import Log
from runner.images import SERVICE_IMAGE, ImageBuildError, ensure_images

__all__ = [
    "CLUSTER_IMAGE_NAMES",
    "CONTAINERD_NAMESPACE",
    "Commands",
    "ImageTransferError",
    "Subprocesses",
    "containerd_name",
    "find_containerd_socket",
    "load_into_containerd",
    "push_to_registry",
    "registry_ref",
]

CLUSTER_IMAGE_NAMES: tuple[str, ...] = ("python-servers", "node-servers", "egress", SERVICE_IMAGE)
CONTAINERD_NAMESPACE = "k8s.io"
"""The containerd namespace the CRI plugin (and so the kubelet) keeps its images in."""
TEST_CLUSTER_RUN_DIR = Path("/run/mcp-runner-kubernetes")
"""Where `make kubernetes` puts its private containerd's socket."""
REGISTRY = re.compile(r"^[a-zA-Z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._/-]+)?$")
"""HOST[:PORT][/PATH], as the settings' ``kubernetes.registry`` accepts it."""
_BRING_UP = "run `make kubernetes` to bring up the test cluster"
_SOCKET_DEPTH = 2


class ImageTransferError(ImageBuildError):
    """Moving an image to a cluster failed; the message names the step and what to do."""


class Commands(Protocol):
    """The external commands this module runs; ``Subprocesses`` runs them for real."""

    def output(self, argv: Sequence[str], step: str) -> str:
        """Run ``argv``; its standard output, or ImageTransferError naming ``step`` with its output's tail."""
        ...

    def pipe(self, producer: Sequence[str], consumer: Sequence[str], step: str) -> str:
        """``producer | consumer`` streamed; the consumer's output, or ImageTransferError naming ``step``."""
        ...


class Subprocesses:
    """``Commands`` on real processes."""

    def output(self, argv: Sequence[str], step: str) -> str:
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, errors="replace",
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise ImageTransferError(f"{step}: {argv[0]!r} is not installed or not on PATH") from exc
        if done.returncode != 0:
            raise ImageTransferError(_failure(step, done.returncode, argv, done.stdout + done.stderr))
        return done.stdout

    def pipe(self, producer: Sequence[str], consumer: Sequence[str], step: str) -> str:
        try:
            first = subprocess.Popen(list(producer), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise ImageTransferError(f"{step}: {producer[0]!r} is not installed or not on PATH") from exc
        assert first.stdout is not None and first.stderr is not None
        try:
            second = subprocess.Popen(list(consumer), stdin=first.stdout, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, errors="replace")
        except FileNotFoundError as exc:
            first.kill()
            first.wait()
            raise ImageTransferError(f"{step}: {consumer[0]!r} is not installed or not on PATH") from exc
        first.stdout.close()  # the consumer owns the stream now: it sees EOF, or the producer a broken pipe
        errors: list[bytes] = []
        drain = threading.Thread(target=lambda: errors.append(first.stderr.read() if first.stderr else b""))
        drain.start()  # so a chatty producer can never block on a full stderr pipe
        out, _ = second.communicate()
        drain.join()
        first.wait()
        if first.returncode != 0:
            text = b"".join(errors).decode(errors="replace")
            raise ImageTransferError(_failure(step, first.returncode, producer, text))
        if second.returncode != 0:
            raise ImageTransferError(_failure(step, second.returncode, consumer, out))
        return out


def _failure(step: str, rc: int, argv: Sequence[str], output: str) -> str:
    tail = "\n".join(output.strip().splitlines()[-20:])
    return f"{step} failed (exit {rc}): {' '.join(argv)}" + (f"\n--- last output ---\n{tail}" if tail else "")


# ------------------------------------------------------------------------------------------- containerd


def find_containerd_socket(run_dir: Path = TEST_CLUSTER_RUN_DIR) -> Path:
    """The test cluster's containerd socket: the one socket named ``containerd*.sock`` under ``run_dir``."""
    if not run_dir.is_dir():
        raise ImageTransferError(f"no {run_dir}: the test cluster is not up; {_BRING_UP} "
                                 "(or name a containerd socket with --containerd-socket)")
    found = sorted(_sockets(run_dir))
    if len(found) != 1:
        what = "no containerd socket" if not found else f"several containerd sockets ({', '.join(map(str, found))})"
        raise ImageTransferError(f"{what} under {run_dir}: name one with --containerd-socket, or {_BRING_UP}")
    return found[0]


def _sockets(run_dir: Path) -> list[Path]:
    """The ``containerd*.sock`` sockets in ``run_dir`` and up to two directories below it. Not deeper: containerd's
    state tree holds one directory per running container, which come and go while they are walked."""
    found: list[Path] = []
    for root, dirs, files in os.walk(run_dir):  # a directory gone while walked is skipped (os.walk's default)
        if len(Path(root).relative_to(run_dir).parts) >= _SOCKET_DEPTH:
            dirs.clear()
        found += [Path(root, f) for f in files if fnmatch.fnmatch(f, "containerd*.sock") and _is_socket(Path(root, f))]
    return found


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


def containerd_name(ref: str) -> str:
    """The name ``ctr import`` gives a ``docker save`` of ``ref`` (and the CRI looks ``ref`` up by): Docker's
    normalisation, so ``mcp-runner/x:t`` is ``docker.io/mcp-runner/x:t``."""
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if "/" in ref else f"docker.io/library/{ref}"


def load_into_containerd(
    socket: Path | None = None,
    *,
    log: Log = print,
    commands: Commands | None = None,
    ensure: Callable[..., dict[str, str]] = ensure_images,
    ctr: str | None = None,
    names: Sequence[str] = CLUSTER_IMAGE_NAMES,
    added: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Build what is missing, then import into containerd each of ``names`` it does not hold yet, and the images
    in ``added`` (``name -> ref``: images built from packages, images with the agent injected).

    ``socket`` default: the test cluster's (``find_containerd_socket``). Returns ``name -> ref``.
    """
    commands = commands or Subprocesses()
    ctr = ctr or shutil.which("ctr")
    if ctr is None:
        raise ImageTransferError("`ctr` (containerd's client) is not on PATH: apt-get install containerd, "
                                 f"or {_BRING_UP}")
    socket = socket or find_containerd_socket()
    if not _is_socket(socket):
        raise ImageTransferError(f"{socket} is not a socket: is the cluster's containerd running? {_BRING_UP}")
    base = [ctr, "--address", str(socket), "--namespace", CONTAINERD_NAMESPACE]
    refs = {**ensure(names, log=log), **(added or {})}
    held = set(commands.output([*base, "images", "list", "--quiet"], f"listing the images in {socket}").split())
    for ref in refs.values():
        if containerd_name(ref) in held:
            log(f"{ref} is in the cluster's containerd ({socket})")
            continue
        log(f"loading {ref} into the cluster's containerd ({socket}): docker save | ctr images import")
        t0 = time.monotonic()
        out = commands.pipe(["docker", "save", ref], [*base, "images", "import", "-"],
                            f"loading {ref} into {socket}")
        for line in out.strip().splitlines():
            log(f"  [ctr] {line}")
        log(f"loaded {ref} in {time.monotonic() - t0:.0f} s")
    held = set(commands.output([*base, "images", "list", "--quiet"], f"listing the images in {socket}").split())
    absent = [ref for ref in refs.values() if containerd_name(ref) not in held]
    if absent:
        raise ImageTransferError(f"imported, yet not listed by containerd under the names the kubelet asks for: "
                                 f"{', '.join(containerd_name(r) for r in absent)}")
    return refs


# ------------------------------------------------------------------------------------------- registry


def registry_ref(registry: str, ref: str) -> str:
    """``mcp-runner/<name>:<tag>`` -> ``REGISTRY/<name>:<tag>``, the name pods pull when a registry is set."""
    return f"{registry.rstrip('/')}/{ref.rsplit('/', 1)[-1]}"


def push_to_registry(
    registry: str,
    *,
    log: Log = print,
    commands: Commands | None = None,
    ensure: Callable[..., dict[str, str]] = ensure_images,
    added: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Build what is missing, then ``docker tag`` and ``docker push`` each cluster image (and each of ``added``,
    as ``load_into_containerd`` takes them) to ``registry``.

    Returns ``name -> pushed ref``. Logging in to the registry is Docker's business (``docker login``).
    """
    registry = registry.rstrip("/")
    if not REGISTRY.fullmatch(registry):
        raise ImageTransferError(f"registry {registry!r}: give HOST[:PORT][/PATH] (no scheme), e.g. "
                                 "registry.example.com:5000/mcp-runner")
    commands = commands or Subprocesses()
    pushed: dict[str, str] = {}
    for name, ref in {**ensure(CLUSTER_IMAGE_NAMES, log=log), **(added or {})}.items():
        target = registry_ref(registry, ref)
        log(f"pushing {ref} as {target}")
        commands.output(["docker", "tag", ref, target], f"docker tag {ref} {target}")
        out = commands.output(["docker", "push", target], f"docker push {target} (logged in? `docker login`)")
        for line in out.strip().splitlines()[-3:]:
            log(f"  [docker] {line}")
        pushed[name] = target
    return pushed
