"""Server images built from one registry package: ``mcp-runner images add pypi:NAME`` / ``npm:NAME``, and profiles'
``package:``.

Built as the shipped server images are: the package and its dependencies are fetched on the host (pip download of
wheels for the image's CPython; ``npm install --ignore-scripts`` with an exact lockfile), then installed with
``docker build --network none`` FROM ``python-servers`` / ``node-servers``, which bring the agent and its entrypoint.
The tag is a content hash of this recipe, the Dockerfile, the resolved lock (every wheel's name and sha256, or the
npm lockfile) and the base image's tag (itself a hash over the agent's code), so a new agent or a new release of
a dependency makes a new tag and nothing stale is reused. Labels record the pinned spec, the spec as asked, the
base and the executable, so a profile's ``package:`` finds its image without the network.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.image_checks import ImageBuildError, Log, run, smoke_check
from runner.images import (
    CACHE_DIR,
    IMAGES_DIR,
    LABEL,
    REPOSITORY,
    WHEEL_TARGET,
    check_docker,
    digest,
    docker_env,
    ensure_images,
    image_present,
    image_ref,
    link_or_copy,
)
from runner.package_spec import PackageSpec, PackageSpecError, parse_package

__all__ = [
    "PackageImage", "choose_executable", "ensure_package", "find_package_image", "package_images", "profile_snippet",
]

RECIPE = "1"
KIND = "package"
"""The ``mcp-runner.image`` label of every package image."""
LABEL_PACKAGE = "mcp-runner.package"
LABEL_ASKED = "mcp-runner.package-asked"
LABEL_FROM = "mcp-runner.from"
LABEL_COMMAND = "mcp-runner.command"
BASES = {"pypi": "python-servers", "npm": "node-servers"}


@dataclass(frozen=True)
class PackageImage:
    ref: str
    spec: PackageSpec
    """Pinned: the version the image holds."""
    command: str
    """The executable the image runs when a profile names no ``command``."""
    current: bool = True
    """Built on today's base image (today's agent); False for images of an older checkout."""


@dataclass(frozen=True)
class _Resolved:
    spec: PackageSpec
    files: Path
    """Wheels (pypi) or a directory with package.json, package-lock.json and node_modules (npm)."""
    lock: bytes
    executables: tuple[str, ...]


# --------------------------------------------------------------------------------------------- lookup


def _images_labelled(*labels: str) -> list[str]:
    argv = ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]
    for label in (f"{LABEL}={KIND}", *labels):
        argv += ["--filter", f"label={label}"]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise ImageBuildError(f"docker image ls failed: {done.stderr.strip()}")
    return [line for line in done.stdout.splitlines() if line and "<none>" not in line]


def _describe(ref: str) -> PackageImage:
    """The package image ``ref`` as its labels describe it; PackageSpecError when they name no pinned package (any
    image on the engine may carry our labels)."""
    done = subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", ref],
                          capture_output=True, text=True)
    labels = json.loads(done.stdout or "{}") or {} if done.returncode == 0 else {}
    pinned = str(labels.get(LABEL_PACKAGE, ""))
    spec = parse_package(pinned)
    if spec.version is None:
        raise PackageSpecError(f"{pinned!r} pins no version")
    current = labels.get(LABEL_FROM) == image_ref(BASES[spec.ecosystem])
    return PackageImage(ref, spec, str(labels.get(LABEL_COMMAND, "")), current)


def find_package_image(spec: PackageSpec) -> PackageImage | None:
    """The newest local image of ``spec`` on today's base (no network), or None."""
    check_docker()
    base = image_ref(BASES[spec.ecosystem])
    for label in ((LABEL_PACKAGE, LABEL_ASKED) if spec.exact else (LABEL_ASKED,)):
        found = _images_labelled(f"{label}={spec}", f"{LABEL_FROM}={base}")
        if found:  # docker lists the newest first
            return _describe(found[0])
    return None


def package_images(warn: Log = lambda line: print(line, file=sys.stderr)) -> list[PackageImage]:
    """Every package image here, today's and older ones (``images list``); ``warn`` names those whose labels do not
    say which package they hold, which are left out."""
    check_docker()
    found = []
    for ref in _images_labelled():
        try:
            found.append(_describe(ref))
        except PackageSpecError as exc:
            warn(f"warning: {ref} is left out: its {LABEL_PACKAGE} label does not name a pinned package ({exc}); "
                 f"remove it (docker rmi {ref}) or build it again with `mcp-runner images add`")
    return found


# --------------------------------------------------------------------------------------------- resolve


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _console_scripts(spec: PackageSpec, wheel: Path) -> tuple[str, ...]:
    """The wheel's console scripts; ImageBuildError when its metadata does not parse (a registry's file is data)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt") and n.count("/") == 1]
            if not names:
                return ()
            parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
            parser.optionxform = str  # type: ignore[assignment,method-assign]  # script names are case-sensitive
            parser.read_string(archive.read(names[0]).decode())
    except (configparser.Error, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise ImageBuildError(f"{spec}: its entry_points.txt is malformed: {exc}") from None
    return tuple(sorted(parser["console_scripts"])) if parser.has_section("console_scripts") else ()


def _keep(scratch: Path, dest: Path) -> Path:
    """``scratch`` moved to ``dest``, or ``dest`` as it is when a concurrent resolve of the same lock put it there
    first (the content is the same: the name is its hash)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        scratch.rename(dest)
    except OSError:
        if not dest.is_dir():
            raise
    return dest


def _refused(spec: PackageSpec, registry: str, exc: ImageBuildError, markers: Sequence[str]) -> ImageBuildError:
    text = str(exc)
    if any(m in text for m in markers):
        what = f"version {spec.version}" if spec.version else "package"
        return ImageBuildError(f"{spec}: {registry} has no such {what}"
                               + (" with a wheel for CPython 3.11 on Linux x86_64" if spec.ecosystem == "pypi" else "")
                               + f"\n{text}")
    return exc


def _resolve_pypi(spec: PackageSpec, log: Log) -> _Resolved:
    scratch = CACHE_DIR / "packages" / f"tmp-{uuid.uuid4().hex[:12]}"
    scratch.mkdir(parents=True)
    try:
        requirement = spec.name + (f"=={spec.version}" if spec.version else "")
        try:
            run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
                 "--progress-bar", "off", *WHEEL_TARGET, "-d", str(scratch), requirement],
                f"pip download {requirement} (on the host)", log, prefix="pip")
        except ImageBuildError as exc:
            raise _refused(spec, "PyPI", exc, ("No matching distribution", "Could not find a version")) from None
        wheels = sorted(scratch.glob("*.whl"))
        own = [w for w in wheels if _normalized(w.name.split("-", 1)[0]) == spec.name]
        if not own:
            got = ", ".join(w.name for w in wheels)
            raise ImageBuildError(f"{spec}: pip downloaded no wheel of {spec.name} ({got})")
        version, scripts = own[0].name.split("-")[1], _console_scripts(spec, own[0])
        lock = "\n".join(f"{w.name} {hashlib.sha256(w.read_bytes()).hexdigest()}" for w in wheels).encode()
        dest = _keep(scratch, CACHE_DIR / "packages" / "pypi" / hashlib.sha256(lock).hexdigest()[:16])
        return _Resolved(spec.pinned(version), dest, lock, scripts)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _npm_manifest(spec: PackageSpec, path: Path) -> tuple[str, dict[str, object]]:
    """The installed package's version and package.json; ImageBuildError when it is not an object with a string
    ``version``."""
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise ImageBuildError(f"{spec}: its package.json is malformed: {exc}") from None
    version = manifest.get("version") if isinstance(manifest, dict) else None
    if not isinstance(version, str) or not version:
        raise ImageBuildError(f"{spec}: its package.json is malformed: it is not an object with a \"version\" string")
    return version, manifest


def _npm_bins(spec: PackageSpec, manifest: dict[str, object]) -> tuple[str, ...]:
    bins = manifest.get("bin")
    if isinstance(bins, str):
        return (spec.name.rsplit("/", 1)[-1],)
    return tuple(sorted(str(k) for k in bins)) if isinstance(bins, dict) else ()


def _resolve_npm(spec: PackageSpec, log: Log) -> _Resolved:
    scratch = CACHE_DIR / "packages" / f"tmp-{uuid.uuid4().hex[:12]}"
    scratch.mkdir(parents=True)
    try:
        (scratch / "package.json").write_text(json.dumps({"name": "mcp-runner-package", "private": True}))
        wanted = spec.name + (f"@{spec.version}" if spec.version else "")
        try:
            run(["npm", "install", "--save-exact", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund",
                 wanted], f"npm install {wanted} (on the host)", log, prefix="npm", cwd=scratch)
        except ImageBuildError as exc:
            raise _refused(spec, "npm", exc, ("E404", "ETARGET", "No matching version")) from None
        version, manifest = _npm_manifest(spec, scratch / "node_modules" / spec.name / "package.json")
        bins = tuple(b for b in _npm_bins(spec, manifest) if (scratch / "node_modules" / ".bin" / b).exists())
        lock = (scratch / "package-lock.json").read_bytes()
        dest = _keep(scratch, CACHE_DIR / "packages" / "npm" / hashlib.sha256(lock).hexdigest()[:16])
        return _Resolved(spec.pinned(version), dest, lock, bins)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def choose_executable(spec: PackageSpec, executables: Sequence[str]) -> str:
    """The one a profile without ``command`` runs: the executable named as the package, else the only one."""
    unscoped = spec.name.rsplit("/", 1)[-1]
    named = [e for e in executables if _normalized(e) == _normalized(unscoped)]
    if named:
        return named[0]
    if len(executables) == 1:
        return executables[0]
    if not executables:
        kind = "console script" if spec.ecosystem == "pypi" else "bin"
        raise ImageBuildError(f"{spec} has no executable (no {kind}), so it cannot run as a stdio MCP server")
    raise ImageBuildError(f"{spec} has several executables ({', '.join(executables)}) and none is named "
                          f"{unscoped!r}: which one is the MCP server is not known, so no image was built")


# --------------------------------------------------------------------------------------------- build


def _dockerfile(spec: PackageSpec, command: str) -> bytes:
    template = (IMAGES_DIR / "packages" / f"{spec.ecosystem}.Dockerfile").read_text()
    return f"{template}CMD {json.dumps([command])}\n".encode()


def _context(ctx: Path, resolved: _Resolved, dockerfile: bytes) -> None:
    (ctx / "Dockerfile").write_bytes(dockerfile)
    if resolved.spec.ecosystem == "pypi":
        (ctx / "wheels").mkdir()
        for whl in resolved.files.glob("*.whl"):
            link_or_copy(str(whl), str(ctx / "wheels" / whl.name))
        (ctx / "requirement.txt").write_text(f"{resolved.spec.name}=={resolved.spec.version}\n")
    else:
        shutil.copytree(resolved.files, ctx / "node", symlinks=True, copy_function=link_or_copy)


def ensure_package(spec: PackageSpec, log: Log = print, *, force: bool = False) -> PackageImage:
    """The image of ``spec``: found here (unless ``force``), else resolved on the registry, built and checked."""
    if not force and (found := find_package_image(spec)) is not None:
        log(f"{found.ref} is present ({found.spec})")
        return found
    base_name = BASES[spec.ecosystem]
    base = ensure_images([base_name], log=log)[base_name]
    resolved = (_resolve_pypi if spec.ecosystem == "pypi" else _resolve_npm)(spec, log)
    command = choose_executable(resolved.spec, resolved.executables)
    dockerfile = _dockerfile(resolved.spec, command)
    items = [("recipe", RECIPE.encode()), ("spec", str(resolved.spec).encode()), ("lock", resolved.lock),
             ("FROM", base.encode()), ("Dockerfile", dockerfile)]
    ref = f"{REPOSITORY}/{spec.ecosystem}-{spec.slug}:{digest(items)[:12]}"
    labels = {LABEL: KIND, "mcp-runner.ref": ref, LABEL_PACKAGE: str(resolved.spec), LABEL_ASKED: str(spec),
              LABEL_FROM: base, LABEL_COMMAND: command}
    if image_present(ref) and not force:
        log(f"{ref} is present ({resolved.spec})")
        return PackageImage(ref, resolved.spec, command)
    (CACHE_DIR / "build").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="package-", dir=CACHE_DIR / "build") as tmp:
        _context(Path(tmp), resolved, dockerfile)
        cmd = ["docker", "build", "--network", "none", "--force-rm", "--build-arg", f"BASE={base}",
               *(a for k, v in labels.items() for a in ("--label", f"{k}={v}")), "-t", ref, tmp]
        run(cmd, f"docker build of {ref}", log, prefix="docker", env=docker_env())
    try:
        smoke_check(ref, (command,), log)
    except ImageBuildError as exc:
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)  # a broken tag must not look "present"
        raise ImageBuildError(f"{resolved.spec}: its executable {command!r} did not answer an MCP initialize on "
                              f"stdio, so the image was removed\n{exc}") from None
    return PackageImage(ref, resolved.spec, command)


def profile_snippet(image: PackageImage, profile: str | None = None) -> str:
    """What to paste under ``profiles:`` in a settings file to run the package."""
    name = profile or image.spec.name.rsplit("/", 1)[-1]
    return "\n".join([
        "profiles:",
        f"  {name}:",
        f"    package: {json.dumps(str(image.spec))}",
        f"    # command: [{json.dumps(image.command)}]  (the default; add the server's arguments here)",
        f"    description: {json.dumps(f'{image.spec} (image {image.ref})')}",
    ])
