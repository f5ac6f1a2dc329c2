"""What a profile's ``package:`` (and ``mcp-runner images add``) names: ``pypi:NAME[==VERSION]`` or
``npm:NAME[@VERSION]`` (scoped too: ``npm:@scope/name@1.2.3``), and the image names a profile's ``image`` may hold.

Pure parsing, no Docker or network: the settings loader uses it, so a typo fails at load with a message a person can
act on. A spec is normalized (PyPI names as PEP 503 spells them) so one package has one spelling in labels and tags.

A profile's ``image`` is one of: a runner image name (``python-servers``), an image reference, a package spec
(``pypi:…``/``npm:…``, for ``package:``) or ``with-agent:REF`` (``inject_agent: true``). Neither of the last two can be
a Docker reference (``=``, ``@`` before a ``/`` and a second ``:`` before any ``/`` are not allowed there), so the
backends tell them apart by prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ECOSYSTEMS", "INJECT_PREFIX", "PackageSpec", "PackageSpecError", "injected_image", "is_package",
    "parse_package", "uninjected",
]

Ecosystem = Literal["pypi", "npm"]
ECOSYSTEMS: tuple[Ecosystem, ...] = ("pypi", "npm")
INJECT_PREFIX = "with-agent:"

# PEP 508 names; versions as PEP 440 spells a single release (no ranges: a profile pins one version or none).
# Whole-string patterns: used with fullmatch only ($ would match before a trailing line break).
_PYPI_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?")
# ASCII: with IGNORECASE alone, the long s and the Kelvin sign would match [a-z].
_PYPI_VERSION = re.compile(r"(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)*(?:(?:a|b|rc)[0-9]+)?(?:\.post[0-9]+)?(?:\.dev[0-9]+)?"
                           r"(?:\+[a-z0-9]+(?:\.[a-z0-9]+)*)?", re.IGNORECASE | re.ASCII)
# npm's rules: lowercase, URL-safe, at most 214 characters, optional @scope/.
_NPM_NAME = re.compile(r"(?:@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*")
_NPM_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+(?:\.[0-9]+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)?)?")
_NPM_EXACT = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")
"""A prefix: ``MAJOR.MINOR.PATCH`` with or without a pre-release or build."""
_SHOWN_CHARS = 120
_EXAMPLES = "e.g. pypi:mcp-server-calculator==0.2.1, npm:@modelcontextprotocol/server-memory@2026.8.31"


class PackageSpecError(ValueError):
    """A package spec that cannot name one package: the message says what is wrong and how it is written."""


@dataclass(frozen=True)
class PackageSpec:
    ecosystem: Ecosystem
    name: str
    """PyPI: normalized (lowercase, runs of ``-_.`` as ``-``); npm: as npm spells it (lowercase)."""
    version: str | None = None
    """None: the latest, resolved when the image is built."""

    def __str__(self) -> str:
        if self.version is None:
            return self.unpinned
        return f"{self.unpinned}{'==' if self.ecosystem == 'pypi' else '@'}{self.version}"

    @property
    def unpinned(self) -> str:
        return f"{self.ecosystem}:{self.name}"

    @property
    def exact(self) -> bool:
        """Names one release: any PyPI ``==`` version; an npm ``MAJOR.MINOR.PATCH`` (``1.2`` is the latest 1.2.x)."""
        return self.version is not None and (self.ecosystem == "pypi" or bool(_NPM_EXACT.match(self.version)))

    def pinned(self, version: str) -> PackageSpec:
        return PackageSpec(self.ecosystem, self.name, version)

    @property
    def slug(self) -> str:
        """The name as a Docker repository path component (``@scope/name`` -> ``scope-name``)."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


def is_package(image: str) -> bool:
    return image.split(":", 1)[0] in ECOSYSTEMS and ":" in image


def injected_image(image: str) -> str:
    """The profile image name of ``image`` with the agent added (``inject_agent: true``)."""
    return INJECT_PREFIX + image


def uninjected(image: str) -> str | None:
    """The user's image a ``with-agent:`` name derives from; None for any other name."""
    return image[len(INJECT_PREFIX):] if image.startswith(INJECT_PREFIX) else None


def parse_package(text: str) -> PackageSpec:
    """``pypi:NAME[==VERSION]`` or ``npm:NAME[@VERSION]``, normalized; PackageSpecError says what is wrong."""
    ecosystem, sep, rest = text.strip().partition(":")
    if not sep or ecosystem not in ECOSYSTEMS:
        raise PackageSpecError(f"{_shown(text)} is not a package spec: write ECOSYSTEM:NAME with ECOSYSTEM pypi or npm "
                               f"({_EXAMPLES})")
    if ecosystem == "pypi":
        return _pypi(text, rest.strip())
    return _npm(text, rest.strip())


def _shown(text: str) -> str:
    """``text`` quoted for an error message, cut short: a spec may be as long as its sender likes."""
    return repr(text[:_SHOWN_CHARS]) + ("…" if len(text) > _SHOWN_CHARS else "")


def _pypi(text: str, rest: str) -> PackageSpec:
    name, sep, version = rest.partition("==")
    name, version = name.strip(), version.strip()
    if not sep and re.search(r"[<>=!~\[;@ ]", rest):
        raise PackageSpecError(f"{_shown(text)}: pin one version with == (pypi:NAME==VERSION) or none for the latest; "
                               "ranges, extras and markers are not accepted")
    if not _PYPI_NAME.fullmatch(name):
        raise PackageSpecError(f"{_shown(text)}: {_shown(name)} is not a PyPI project name "
                               "(letters, digits, '-', '_', '.')")
    if sep and not _PYPI_VERSION.fullmatch(version):
        raise PackageSpecError(f"{_shown(text)}: {_shown(version)} is not a single version (e.g. 1.2.0)")
    return PackageSpec("pypi", re.sub(r"[-_.]+", "-", name).lower(), version if sep else None)


def _npm(text: str, rest: str) -> PackageSpec:
    at = rest.find("@", 1)  # a leading @ is the scope's
    name, version = (rest, None) if at < 0 else (rest[:at], rest[at + 1:])
    if len(name) > 214 or not _NPM_NAME.fullmatch(name):
        raise PackageSpecError(f"{_shown(text)}: {_shown(name)} is not an npm package name "
                               "(lowercase; optional @scope/)")
    if version is not None and not _NPM_VERSION.fullmatch(version):
        raise PackageSpecError(f"{_shown(text)}: {_shown(version)} is not an exact version (e.g. 1.2.3, or 1.2 for the "
                               "latest 1.2.x); ranges and tags are not accepted: leave it out for the latest")
    return PackageSpec("npm", name, version)
