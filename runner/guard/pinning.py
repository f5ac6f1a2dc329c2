"""Tool definitions pinned by hash, the defence against a server that changes a tool after it was trusted.

A "rug pull" is a server that lists a harmless tool, is approved, and later
lists the same name with a new description (new instructions for the model)
or a wider schema. Each tool's definition is fingerprinted as the server gave
it; the first fingerprint seen for a (profile, tool) is its pin unless the
operator configured one. A definition that no longer matches its pin is
reported and stays blocked: the pin is never moved to the new value, so only
an operator can accept it (a configured pin; see ``runner.guard.memory`` for
first-seen ones).

Pins are per profile (two profiles may run different versions of the same
server). With a ``GuardMemory`` first-seen pins are written durably before
the listing that took them is answered, and survive a restart: a server that
changes a tool while the service is down is caught at its first listing.

First-seen pins belong to the profile's name, not to its image or command: a
profile whose image or command changes keeps its pins across the restart, since
a new image is exactly how a changed server arrives, and the operator who
changed it accepts each changed tool the way any other is accepted (a configured
pin, or deleting its row). A profile renamed is another profile, pinned afresh
at its first listing; a removed profile's pins stay, and apply again if a
profile of that name comes back.

First-seen pins are bounded, since a hostile server choosing tool names could
otherwise grow them without end: at most ``max_per_profile`` names per profile,
each at most ``MAX_PINNED_NAME`` characters (the MCP spec's limit for a tool
name). A new tool past either bound is not pinned and is held back like a
changed one (a definition that is not pinned could change unseen); the
profile's operator can configure its pin.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import mcp_types

from runner.text import whole_words

if TYPE_CHECKING:
    from runner.guard.memory import GuardMemory

PREFIX = "sha256:"
CONFIG = "config"
FIRST_SEEN = "first seen"
MAX_PINS_PER_PROFILE = 1024
MAX_PINNED_NAME = 128

# What a model is shown or a caller is held to; icons, execution hints and _meta are left out so that
# cosmetic or transport-level metadata does not block a tool.
_FINGERPRINTED = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
_PIN = re.compile(r"sha256:[0-9a-fA-F]{64}")
_NO_PINS: Mapping[str, Mapping[str, str]] = MappingProxyType({})


def _named(tool: str) -> str:
    """A tool's name as a message quotes it: whole up to ``MAX_PINNED_NAME`` characters (every pinned name), a
    longer one cut in whole words with its length told. A cut through a word leaves part of it behind, and part
    of a secret (``ghp_`` and 26 of its 36 characters, as ``[:80]`` left it) is one no detector recognizes: the
    message reaches the service log and the caller through the sanitizer, which needs the secret whole."""
    if len(tool) <= MAX_PINNED_NAME:
        return repr(tool)
    return f"{whole_words(tool, 80)!r}… ({len(tool)} characters)"


def tool_fingerprint(tool: mcp_types.Tool) -> str:
    """``sha256:`` + hex digest of the canonical JSON of the tool's definition.

    Canonical means sorted keys, no whitespace and UTF-8 text as is, so equal
    definitions hash equal whatever order the server wrote them in. Lone
    surrogates (valid in JSON text, not in UTF-8) are kept with
    ``surrogatepass`` so a hostile description cannot make fingerprinting fail.
    """
    dumped = tool.model_dump(by_alias=True, exclude_none=True, mode="json")
    definition = {key: dumped[key] for key in _FINGERPRINTED if key in dumped}
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return PREFIX + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class PinViolation:
    """A tool whose definition no longer matches its pin; the tool must not be offered or called."""

    tool: str
    pinned: str
    now: str
    source: str
    """Where the pin came from: ``config`` or ``first seen``."""

    @property
    def message(self) -> str:
        return (
            f"tool {_named(self.tool)} changed its definition since it was pinned ({self.source}): "
            f"pinned {self.pinned}, now {self.now}"
        )


@dataclass(frozen=True)
class UnpinnedTool(PinViolation):
    """A new tool that could not be pinned (see the module docstring): held back, like a changed one."""

    why: str = ""

    @property
    def message(self) -> str:
        return f"tool {_named(self.tool)} is held back because it could not be pinned: {self.why}"


def _check_configured(configured: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    """Configured pins, lower-cased; ValueError naming the profile and tool of a malformed one."""
    checked: dict[str, dict[str, str]] = {}
    for profile, tools in configured.items():
        checked[profile] = {}
        for tool, pin in tools.items():
            if not isinstance(pin, str) or not _PIN.fullmatch(pin):
                raise ValueError(
                    f"profile {profile!r}: the pin for tool {tool!r} must be 'sha256:' followed by "
                    f"64 hex digits, got {str(pin)[:80]!r}"
                )
            checked[profile][tool] = pin.lower()
    return checked


class PinBook:
    """Per-profile pins: from the config, else the first definition seen (remembered across restarts
    with a ``GuardMemory``).

    Not thread-safe; ``check`` is synchronous, so it is atomic on one event loop.
    """

    def __init__(
        self,
        configured: Mapping[str, Mapping[str, str]] = _NO_PINS,
        *,
        memory: GuardMemory | None = None,
        max_per_profile: int = MAX_PINS_PER_PROFILE,
    ) -> None:
        self._configured = _check_configured(configured)
        self._memory = memory
        self._max_per_profile = max_per_profile
        self._seen: dict[str, dict[str, str]] = memory.pins() if memory is not None else {}

    def check(self, profile: str, tools: Iterable[mcp_types.Tool]) -> list[PinViolation]:
        """Pin tools seen for the first time; return those whose fingerprint differs from their pin.

        A violating tool keeps its old pin, so it stays blocked on every later
        listing, even if the server flips back and forth. New tools past the
        bounds come back as ``UnpinnedTool``. New pins are remembered before
        this returns; if they cannot be, nothing is pinned and Unavailable is raised.
        """
        configured = self._configured.get(profile, {})
        seen = self._seen.get(profile, {})
        new: dict[str, str] = {}
        violations: list[PinViolation] = []
        for tool in tools:
            now = tool_fingerprint(tool)
            if tool.name in configured:
                pinned, source = configured[tool.name], CONFIG
            elif tool.name in seen:
                pinned, source = seen[tool.name], FIRST_SEEN
            elif tool.name in new:
                pinned, source = new[tool.name], FIRST_SEEN  # listed twice in one listing: both must agree
            else:
                why = self._unpinnable(profile, tool.name, len(seen) + len(new))
                if why:
                    violations.append(UnpinnedTool(tool.name, "", now, FIRST_SEEN, why))
                else:
                    new[tool.name] = now
                continue
            if now != pinned:
                violations.append(PinViolation(tool.name, pinned, now, source))
        if new:
            if self._memory is not None:
                self._memory.add_pins(profile, new)
            self._seen.setdefault(profile, {}).update(new)
        return violations

    def _unpinnable(self, profile: str, name: str, pinned: int) -> str:
        """Why a new tool cannot be pinned, or "" if it can."""
        if len(name) > MAX_PINNED_NAME:
            return f"its name is {len(name)} characters long, more than the {MAX_PINNED_NAME} a pinned name may have"
        if pinned >= self._max_per_profile:
            return (
                f"profile {profile!r} already has {pinned} first-seen pins, the limit; "
                "configure the tool's pin in the profile to allow it"
            )
        return ""

    def pins(self, profile: str) -> dict[str, str]:
        """The current pins of ``profile`` by tool name (configured pins win), sorted by name."""
        merged = {**self._seen.get(profile, {}), **self._configured.get(profile, {})}
        return dict(sorted(merged.items()))
