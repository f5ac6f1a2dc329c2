"""The image a profile's sandbox runs: resolved for the backends, built at the service's start, checked for the agent.

A profile's ``image`` names a runner image (``python-servers``), a package (``pypi:…``/``npm:…``, from ``package:``),
a user's image with the agent added (``with-agent:REF``, from ``inject_agent: true``) or any image reference. The
backends resolve it here without building or fetching anything; the service builds what is missing before it
serves (``ensure_profile_images``), so no session waits on a build. A sandbox's image must hold the agent: an image
without it would run the server where the agent should be, and the open would wait for a greeting that never
comes, so images are checked before a container is made: by their ``mcp-runner.image`` label, and by their
ENTRYPOINT, which an image built FROM ours inherits with the label but may have replaced (the Docker backend runs
it; a pod's command names the agent again, and the image must work on both).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.config import Profile
from runner.errors import FailedPrecondition
from runner.image_checks import ImageBuildError, Log
from runner.image_inject import ENTRYPOINT as INJECTED_ENTRYPOINT
from runner.image_inject import KIND as INJECTED
from runner.image_inject import LABEL_BASE, ensure_injected, image_command, injected_ref
from runner.image_packages import KIND as PACKAGE
from runner.image_packages import LABEL_COMMAND, ensure_package, find_package_image, package_images
from runner.image_transfer import ImageTransferError, find_containerd_socket, load_into_containerd
from runner.images import CACHE_DIR, CACHE_ENV, IMAGE_NAMES, LABEL, image_present, image_ref
from runner.package_spec import injected_image, is_package, parse_package, uninjected
from runner.sandbox.kube_objects import AGENT_ENTRYPOINT
from runner.text import printable

__all__ = [
    "AGENT_KINDS", "added_images", "check_agent", "check_agent_config", "check_local_agent", "default_command",
    "ensure_profile_images", "load_profile_images_into_cluster", "no_agent", "resolve_sandbox_image", "runner_built",
]

AGENT_KINDS = frozenset({"python-servers", "node-servers", PACKAGE, INJECTED})
"""``mcp-runner.image`` labels of the images that carry the agent (an image built FROM one inherits its label)."""
_INJECTED_ENTRYPOINT = (*INJECTED_ENTRYPOINT, "--")


def no_agent(image: str) -> FailedPrecondition:
    return FailedPrecondition(f"image {image} has no mcp-runner agent: build it with `mcp-runner images add` "
                              "or set `inject_agent: true` on its profile")


def check_agent(image: str, labels: Mapping[str, str] | None, entrypoint: Sequence[str] | None = None) -> None:
    """Raise ``no_agent`` unless ``labels`` (the image's) say it carries the agent and, when known, its
    ``entrypoint`` (``[]``: none) is still the one that starts the agent."""
    kind = (labels or {}).get(LABEL)
    if kind not in AGENT_KINDS:
        raise no_agent(image)
    expected = _INJECTED_ENTRYPOINT if kind == INJECTED else AGENT_ENTRYPOINT
    if entrypoint is not None and tuple(entrypoint) != expected:
        ran = printable(json.dumps(list(entrypoint)), 200)
        raise FailedPrecondition(f"image {image} has no mcp-runner agent at its ENTRYPOINT: {ran} replaced the "
                                 f"agent's {json.dumps(list(expected))} of the image it is built FROM, so the server "
                                 "would run where the agent should. Keep that ENTRYPOINT and give the server as the "
                                 "image's CMD or the profile's command:, or set `inject_agent: true` on its profile")


def runner_built(image: str) -> bool:
    """A name the runner builds an image for (rather than a reference it runs as given)."""
    return image in IMAGE_NAMES or is_package(image) or uninjected(image) is not None


def resolve_sandbox_image(image: str) -> str:
    """The local reference of a profile's ``image``; FailedPrecondition saying how to build it when it is missing."""
    if image in IMAGE_NAMES:
        return image_ref(image)
    if is_package(image):
        try:
            found = find_package_image(parse_package(image))
        except (ImageBuildError, ValueError) as exc:
            raise FailedPrecondition(f"the image of package {image}: {exc}") from exc
        if found is None:
            raise FailedPrecondition(f"no image of package {image} is built here: run `mcp-runner images add "
                                     f"{image}` (the service builds missing ones when it starts)")
        return found.ref
    base = uninjected(image)
    if base is None:
        check_local_agent(image)  # the backends check the label; the ENTRYPOINT is known only from the image config
        return image
    try:
        ref = injected_ref(base)
    except ImageBuildError as exc:
        raise FailedPrecondition(str(exc)) from exc
    if not image_present(ref):
        raise FailedPrecondition(f"the image with the agent added to {base} is not built: restart the service, "
                                 "which builds it (inject_agent: true)")
    return ref


def default_command(image: str) -> tuple[str, ...]:
    """The server a profile without ``command`` runs: in a package's image its executable, in an image with the agent
    injected what the user's image ran; both are the image's CMD, and a pod's ``command`` replaces the image's
    ENTRYPOINT and CMD, so the Kubernetes backend names it."""
    if uninjected(image) is not None:
        ref = resolve_sandbox_image(image)
        ran = image_command(ref)
        if not ran:
            raise FailedPrecondition(f"{image}: the image runs nothing of its own (no ENTRYPOINT or CMD): give the "
                                     "profile a command:")
        return ran
    if not is_package(image):
        return ()
    ref = resolve_sandbox_image(image)
    command = (_labels(ref) or {}).get(LABEL_COMMAND, "")
    if not command:
        raise FailedPrecondition(f"the image {ref} of package {image} names no executable: add it again with "
                                 f"`mcp-runner images add {image} --force`")
    return (command,)


def added_images() -> dict[str, str]:
    """``name -> ref`` of the images built here from packages (on today's base) and with the agent injected, as
    ``images list`` shows them and ``images load``/``push`` move them."""
    out = {str(p.spec): p.ref for p in package_images() if p.current}
    done = subprocess.run(["docker", "image", "ls", "--filter", f"label={LABEL}={INJECTED}", "--format",
                           "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True)
    for ref in done.stdout.split() if done.returncode == 0 else ():
        base = (_labels(ref) or {}).get(LABEL_BASE)
        if base and "<none>" not in ref:
            out.setdefault(injected_image(base), ref)
    return out


def _config(image: str) -> dict[str, Any] | None:
    """The config (labels, ENTRYPOINT, …) of a local image; None when this engine does not hold it."""
    done = subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config}}", image],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return None
    config = json.loads(done.stdout or "null")
    return config if isinstance(config, dict) else {}


def _labels(image: str) -> dict[str, str] | None:
    """The labels of a local image; None when this engine does not hold it."""
    config = _config(image)
    return None if config is None else _labels_in(config)


def _labels_in(config: Mapping[str, Any]) -> dict[str, str]:
    labels = config.get("Labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def check_local_agent(image: str) -> None:
    """``check_agent`` (label and ENTRYPOINT) for an image this engine holds; nothing when it does not (or cannot
    be asked)."""
    try:
        config = _config(image)
    except OSError:  # no docker CLI: a cluster's images cannot be inspected from here
        return
    if config is not None:
        check_agent_config(image, config)


def check_agent_config(image: str, config: Mapping[str, Any]) -> None:
    """``check_agent`` with the labels and ENTRYPOINT of ``config`` (``image``'s, as ``docker inspect`` gives it)."""
    entrypoint = config.get("Entrypoint")
    check_agent(image, _labels_in(config), [str(a) for a in entrypoint] if isinstance(entrypoint, list) else [])


def _not_built(profile: str, image: str, exc: OSError) -> FailedPrecondition:
    if isinstance(exc, FileNotFoundError) and exc.filename == "docker":  # a service in a cluster: nothing can build
        return FailedPrecondition(f"profile {profile!r}: its image {image} is built with this host's Docker engine, "
                                  f"and there is none ({exc.strerror}): run the service where Docker runs; or, for a "
                                  "package, add and push its image there (`mcp-runner images add`, `images push`) "
                                  "and name the pushed reference as the profile's image: with its command:")
    where = f" ({printable(str(exc.filename), 300)})" if exc.filename else ""
    return FailedPrecondition(f"profile {profile!r}: its image {image} could not be built here: "
                              f"{exc.strerror or exc}{where}; images are built under {CACHE_DIR}: set {CACHE_ENV} "
                              "to a directory the service may write")


def ensure_profile_images(profiles: Iterable[Profile], log: Log, warn: Log) -> None:
    """Build the package and agent-injected images ``profiles`` need and that are missing: a FailedPrecondition
    naming the profile when one cannot be built. A profile whose local image has no agent is only ``warn``-ed
    about: its opens fail at once saying so, and the other profiles serve.

    The runner images themselves are built by ``mcp-runner images build`` (``make run``); images this engine
    does not hold are left to the backend, which says so when a session needs them.
    """
    done: set[str] = set()
    for profile in profiles:
        image = profile.image
        if profile.remote_url is not None or image in done or image in IMAGE_NAMES:
            continue
        done.add(image)
        try:
            if is_package(image):
                ensure_package(parse_package(image), log)
            elif (base := uninjected(image)) is not None:
                ensure_injected(base, log)
            else:
                check_local_agent(image)
        except (ImageBuildError, ValueError) as exc:
            raise FailedPrecondition(f"profile {profile.name!r}: {exc}") from exc
        except OSError as exc:
            raise _not_built(profile.name, image, exc) from exc
        except FailedPrecondition as exc:
            warn(f"profile {profile.name!r}: {exc.message}; its sessions will not open")


def load_profile_images_into_cluster(profiles: Iterable[Profile], registry: str | None, log: Log,
                                     socket: Path | None = None) -> dict[str, str]:
    """Get the package and agent-injected images of ``profiles`` (built on this host by ``ensure_profile_images``) to
    a cluster's nodes: with no ``registry``, imported into the nodes' containerd where it is reachable here (only
    those it lacks; ``socket`` default: the test cluster's), else FailedPrecondition saying how; with a registry,
    the pods pull them (``images push`` put them there). Returns ``profile image -> local ref`` of those images."""
    refs = {p.image: resolve_sandbox_image(p.image) for p in profiles
            if p.remote_url is None and (is_package(p.image) or uninjected(p.image) is not None)}
    if not refs or registry is not None:
        return refs
    try:
        found = socket or find_containerd_socket()
    except ImageTransferError as exc:
        raise FailedPrecondition(
            f"the images of profiles' package: / inject_agent: are built on this host ({', '.join(refs.values())}) "
            f"and the cluster's nodes cannot get them: no kubernetes.registry is set and no containerd of the nodes "
            f"is reachable here ({exc}). Push them with `mcp-runner images push --registry HOST[:PORT]/PATH` and set "
            "kubernetes.registry to that registry") from None
    try:
        load_into_containerd(found, log=log, names=(), added=refs)
    except ImageBuildError as exc:
        raise FailedPrecondition(f"loading the profiles' images into the cluster's containerd: {exc}") from exc
    return refs
