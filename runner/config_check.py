"""The configuration's checks: what ``mcp-runner config check`` prints and what stops ``serve`` before it listens.

Loading (``runner.settings_file``) already refuses what the schema can see: unknown keys (with a did-you-mean),
sizes, shapes. What it cannot see needs the machine: a mount source that does not exist (Docker would bind an
empty root-owned directory made in its place, silently), an image that is neither here nor one the runner
builds, TLS files that are missing, a workspace that cannot fit in the memory it is counted toward. Each
problem names its file and key path and says what to do; ``notes`` are things worth knowing that are not wrong.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runner.api.auth import check_listen_safety, check_policy_required
from runner.config import WORKSPACE_PATH, ConfigError, Profile, Settings, problem_list
from runner.config_document import read_document
from runner.did_you_mean import allowed_keys, closest
from runner.errors import RunnerError
from runner.package_spec import is_package, uninjected
from runner.sandbox.base import SANDBOX_USER
from runner.shared_mounts import shared_mount_notes, warn_shared_mounts

ImageProbe = Callable[[str], Mapping[str, Any] | bool | None]
"""An image reference on the engine: its config (``docker inspect``'s ``Config``: labels, ENTRYPOINT, ONBUILD) or
True when present, False when absent, None when the engine cannot be asked."""

_SANDBOX_UID = int(SANDBOX_USER.split(":")[0])


@dataclass(frozen=True)
class Problem:
    file: str
    """The file the problem is in (the settings file, the policy file), or "" for the environment."""
    where: str
    """The key path in it (``profiles.time.mounts.0.source``), or "" for the file as a whole."""
    message: str
    """What is wrong and what to do about it."""

    def line(self) -> str:
        return ": ".join(part for part in (self.file, self.where, self.message) if part)


@dataclass(frozen=True)
class Report:
    problems: tuple[Problem, ...]
    notes: tuple[str, ...] = ()
    settings: Settings | None = None
    checked: str = ""
    """What was checked when it was not a settings file (a policy file's summary)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.settings is None:
            return self.checked if self.ok and self.checked else f"{len(self.problems)} problem(s)"
        s = self.settings
        door = s.mcp_http.listen or "off"
        return f"{len(s.profiles)} profiles, listen {s.listen}, mcp door {door}, backend {s.backend}"


def docker_image_probe() -> ImageProbe | None:
    """Asks this machine's Docker engine about each reference; None when the engine cannot be reached."""
    import docker
    import docker.errors

    try:
        api: Any = docker.from_env(timeout=10).api
        api.ping()
    except Exception:  # any failure to reach the engine means "cannot tell", never a crash
        return None

    def config(ref: str) -> Mapping[str, Any] | bool | None:
        try:
            found = api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.DockerException:
            return None
        config = found.get("Config") if isinstance(found, dict) else None
        return config if isinstance(config, dict) else True

    return config


def settings_problems(settings: Settings, images: ImageProbe | None) -> tuple[list[Problem], list[str]]:
    """The checks of loaded settings that start-up runs too: (problems, notes). ``images`` None: not checked."""
    file = str(settings.config_file or "settings")
    problems: list[Problem] = []
    notes: list[str] = []
    for name, profile in sorted(settings.profiles.items()):
        where = f"profiles.{name}"
        problems += _workspace_problems(file, where, profile)
        if settings.backend == "docker":
            found, noted = _mount_problems(file, where, profile)
            problems += found
            notes += noted
        if images is not None:
            found, noted = _image_problems(file, where, profile, images)
            problems += found
            notes += noted
        if "mcp-server-fetch" in profile.command and profile.network is None:
            notes.append(
                f"profile {name!r} has no network: every fetch fails until a profile of yours gives it an "
                f"allowlist, e.g. `network: {{egress: [\"example.com:443\"]}}` (README: Network)"
            )
    if settings.backend == "kubernetes" and any(p.mounts for p in settings.profiles.values()):
        notes.append("mount sources are paths on the cluster's nodes: not checked here")
    notes += shared_mount_notes(settings)
    if settings.tls is not None:
        tls = settings.tls
        for key, path in (("cert", tls.cert), ("key", tls.key), ("client_ca", tls.client_ca)):
            if path is not None and not path.is_file():
                problems.append(Problem(file, f"tls.{key}", f"{path} is not a readable file; fix the path "
                                        "(`mcp-runner certs DIR` makes a development set)"))
    return problems, notes


def _mount_problems(file: str, where: str, profile: Profile) -> tuple[list[Problem], list[str]]:
    problems, notes = [], []
    for index, mount in enumerate(profile.mounts):
        at = f"{where}.mounts.{index}.source"
        if ":" in mount.source:
            problems.append(Problem(file, at, f"{mount.source} holds a ':', which Docker cannot bind (it reads "
                                    "SOURCE:TARGET:MODE); rename it, or mount a directory above it"))
            continue
        try:
            mode = os.stat(mount.source).st_mode
        except FileNotFoundError as exc:
            problems.append(Problem(file, at, (
                f"{mount.source} does not exist ({exc.strerror}); create it or fix the path (a relative source is "
                "relative to the settings file's directory). Docker would bind an empty directory in its place"
            )))
            continue
        except OSError as exc:
            fix = ("it is a symlink loop: point it at a real directory or file" if exc.errno == errno.ELOOP
                   else "fix its path or the permissions of the directories above it")
            problems.append(Problem(file, at, f"{mount.source} cannot be looked at ({exc.strerror}); {fix}"))
            continue
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            problems.append(Problem(file, at, f"{mount.source} is neither a directory nor a file; mount one of those"))
        elif mount.writable and not _sandbox_may_write(mount.source):
            notes.append(
                f"{at}: {mount.source} is mounted writable, but the sandbox's user (uid {_SANDBOX_UID}) cannot write "
                f"it: `chown {_SANDBOX_UID} {mount.source}` or make it writable for others"
            )
    return problems, notes


def _sandbox_may_write(path: str) -> bool:
    info = os.stat(path)
    return (info.st_uid == _SANDBOX_UID and bool(info.st_mode & stat.S_IWUSR)) or bool(info.st_mode & stat.S_IWOTH)


def _workspace_problems(file: str, where: str, profile: Profile) -> list[Problem]:
    limits = profile.limits
    if not limits.workspace_bytes:
        return []
    problems = []
    if limits.workspace_bytes >= limits.memory_bytes:
        problems.append(Problem(file, f"{where}.workspace", (
            f"{_mib(limits.workspace_bytes)} is not below the memory limit ({_mib(limits.memory_bytes)}): files in "
            "the workspace count toward it; make the workspace smaller or raise limits.memory"
        )))
    for index, mount in enumerate(profile.mounts):
        if mount.target == WORKSPACE_PATH or mount.target.startswith(WORKSPACE_PATH + "/"):
            problems.append(Problem(file, f"{where}.mounts.{index}.target", (
                f"{mount.target} is inside the workspace ({WORKSPACE_PATH}); mount it elsewhere or drop `workspace`"
            )))
    return problems


def _own_image(profile: Profile) -> str | None:
    """The image the engine must already hold for ``profile``: none for the runner's own images and packages
    (it builds those), the user's base for ``inject_agent: true``, else the reference as given."""
    from runner.images import IMAGE_NAMES

    image = profile.image
    if profile.remote_url or image in IMAGE_NAMES or is_package(image):
        return None
    return uninjected(image) or image


def _image_problems(file: str, where: str, profile: Profile, images: ImageProbe) -> tuple[list[Problem], list[str]]:
    """A missing image, and ONBUILD triggers of an ``inject_agent`` base (start-up refuses to build on one), are
    problems; a present plain image without the agent is a note, as start-up only warns: its sessions fail at once
    saying so, the other profiles serve."""
    from runner.image_checks import ImageBuildError
    from runner.image_inject import check_onbuild
    from runner.image_profiles import check_agent_config

    image = _own_image(profile)
    found = None if image is None else images(image)
    if image is None or found is None or found is True:
        return [], []
    if found is False:
        return [Problem(file, f"{where}.image", (
            f"image {image!r} is not on this machine and is not one the runner builds; `docker pull` or "
            f"`docker build -t {image}` it, or give the profile `package: pypi:NAME` / `npm:NAME` instead"
        ))], []
    try:
        if uninjected(profile.image) is not None:  # ``image`` is the user's base; the agent is added to it
            check_onbuild(image, found)
        else:
            check_agent_config(image, found)
    except ImageBuildError as exc:
        return [Problem(file, f"{where}.image", str(exc))], []
    except RunnerError as exc:
        return [], [f"{where}.image: {exc.message}; its sessions will not open"]
    return [], []


def _mib(size: int) -> str:
    return f"{size / 1024**2:g} MiB"


def listen_problems(settings: Settings) -> list[Problem]:
    """Start-up's refusals of an exposed listener, as problems (they name no file key: they may come from flags)."""
    problems = []
    for where, listen in (("listen", settings.listen), ("mcp_http.listen", settings.mcp_http.listen)):
        if not listen:
            continue
        try:
            check_listen_safety(listen, settings.tls, settings.auth)
            check_policy_required(listen, settings.auth, settings.policy)
        except RunnerError as exc:
            problems.append(Problem("", where, exc.message))
    return problems


def refuse_problems(settings: Settings) -> None:
    """Stop start-up on any problem ``settings_problems`` finds, naming each on a line of its own."""
    # An engine out of reach is not a configuration problem: health reports it, and sessions wait for it.
    images = docker_image_probe() if settings.backend == "docker" and _has_own_images(settings) else None
    problems, _ = settings_problems(settings, images)
    warn_shared_mounts(settings)
    if problems:
        lines = "\n".join(f"  {problem.line()}" for problem in problems)
        raise ConfigError(
            f"{len(problems)} problem(s) in the configuration (`mcp-runner config check` shows them too):\n{lines}"
        )


def _has_own_images(settings: Settings) -> bool:
    """Whether any profile names an image the engine must be asked about: else start-up never reaches for it."""
    return any(_own_image(profile) is not None for profile in settings.profiles.values())


def _is_policy_file(path: Path) -> bool:
    """A document more of whose top-level keys are a policy file's own than a settings file's own, a misspelt key
    counting as the key it is closest to: so one typo (``caler:``) does not get a policy checked as settings."""
    from runner.policy import PolicyFile  # the policy's schema, read for its keys only
    from runner.settings_file import SETTINGS_KEYS

    policy_keys = set(allowed_keys(PolicyFile, []))
    known = sorted(policy_keys | SETTINGS_KEYS)
    votes = 0
    for key in map(str, read_document(path, "settings file")):
        meant = key if key in known else closest(key, known)
        votes += (meant in policy_keys - SETTINGS_KEYS) - (meant in SETTINGS_KEYS - policy_keys)
    return votes > 0


def _check_policy_file(path: Path) -> Report:
    """A policy file given where a settings file is expected: checked as the policy it is, with a reminder."""
    note = (f"{path} is a policy file: `serve` reads it where a settings file names it (`policy: {path.name}`); "
            "`config check SETTINGS` checks both")
    problems, callers = _policy_problems(path)
    return Report(tuple(problems), (note,), checked=f"policy file, {callers} caller(s)")


def _policy_problems(path: Path) -> tuple[list[Problem], int]:
    """A policy file's problems (every schema one, unknown keys with the key meant) and its number of callers."""
    from runner.policy import PolicyFile, load_policy

    try:
        PolicyFile.model_validate(read_document(path, "policy file"))
        return [], len(load_policy(path).callers)
    except ValidationError as exc:
        return [Problem(str(path), where, said) for where, said in problem_list(exc, PolicyFile)], 0
    except ConfigError as exc:
        return [Problem(str(path), "", exc.message.removeprefix(f"policy file {path}: "))], 0


def check_config(path: Path | None, *, backend: str | None = None, images: ImageProbe | None = None) -> Report:
    """Everything ``serve`` would check of ``path`` (None: MCP_RUNNER_CONFIG, else the built-in settings) and its
    policy file, without starting anything; ``images`` defaults to asking Docker (on the Docker backend)."""
    from runner.settings_file import file_problems, load_settings

    chosen = path or (Path(os.environ["MCP_RUNNER_CONFIG"]) if os.environ.get("MCP_RUNNER_CONFIG") else None)
    file = str(chosen) if chosen else "built-in settings"
    try:
        if chosen is not None and _is_policy_file(chosen):
            return _check_policy_file(chosen)
        if chosen is not None:
            found = [Problem(file, where, message) for where, message in file_problems(chosen)]
            if found:
                return Report(tuple(found))
        settings = load_settings(chosen, backend=backend)
    except ConfigError as exc:
        return Report((Problem(file, "", exc.message.removeprefix(f"{file}: ")),))
    notes_first = []
    if images is None and settings.backend == "docker":
        images = docker_image_probe()
        if images is None:
            notes_first.append("the Docker engine cannot be reached: images not checked (`make docker` starts one)")
    problems, notes = settings_problems(settings, images)
    notes = notes_first + notes
    problems += listen_problems(settings)
    if settings.policy is not None:
        problems += _policy_problems(settings.policy)[0]
    if settings.backend == "kubernetes":
        notes.append("images are not checked on the kubernetes backend: `mcp-runner images load --kubernetes` "
                     "loads the runner's into the nodes")
    return Report(tuple(problems), tuple(notes), settings)
