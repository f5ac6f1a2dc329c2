"""Tool definitions pinned by hash, the defence against a server that changes a tool after it was trusted.

A "rug pull" is a server that lists a harmless tool, is approved, and later
lists the same name with a new description (new instructions for the model)
or a wider schema. Each tool's definition is fingerprinted as the server gave
it; the first fingerprint seen for a (profile, tool) is its pin unless the
operator configured one. A definition that no longer matches its pin is
reported and stays blocked: the pin is never moved to the new value, so only
an operator (new config, or a restart for first-seen pins) can accept it.

Pins live in process memory and are per profile: two profiles may run
different versions of the same server.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import mcp_types

PREFIX = "sha256:"
CONFIG = "config"
FIRST_SEEN = "first seen"

# What a model is shown or a caller is held to; icons, execution hints and _meta are left out so that
# cosmetic or transport-level metadata does not block a tool.
_FINGERPRINTED = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
_PIN = re.compile(r"sha256:[0-9a-fA-F]{64}")
_NO_PINS: Mapping[str, Mapping[str, str]] = MappingProxyType({})


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
            f"tool {self.tool[:80]!r} changed its definition since it was pinned ({self.source}): "
            f"pinned {self.pinned}, now {self.now}"
        )


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
    """Per-profile pins: from the config, else the first definition seen in this process.

    Not thread-safe; ``check`` is synchronous, so it is atomic on one event loop.
    """

    def __init__(self, configured: Mapping[str, Mapping[str, str]] = _NO_PINS) -> None:
        self._configured = _check_configured(configured)
        self._seen: dict[str, dict[str, str]] = {}

    def check(self, profile: str, tools: Iterable[mcp_types.Tool]) -> list[PinViolation]:
        """Pin tools seen for the first time; return those whose fingerprint differs from their pin.

        A violating tool keeps its old pin, so it stays blocked on every later
        listing, even if the server flips back and forth.
        """
        configured = self._configured.get(profile, {})
        seen = self._seen.setdefault(profile, {})
        violations: list[PinViolation] = []
        for tool in tools:
            now = tool_fingerprint(tool)
            if tool.name in configured:
                pinned, source = configured[tool.name], CONFIG
            elif tool.name in seen:
                pinned, source = seen[tool.name], FIRST_SEEN
            else:
                seen[tool.name] = now
                continue
            if now != pinned:
                violations.append(PinViolation(tool.name, pinned, now, source))
        return violations

    def pins(self, profile: str) -> dict[str, str]:
        """The current pins of ``profile`` by tool name (configured pins win), sorted by name."""
        merged = {**self._seen.get(profile, {}), **self._configured.get(profile, {})}
        return dict(sorted(merged.items()))
