"""What the guard found in something a sandbox returned, and what it did about it.

A ``Finding`` never carries the matched text: only its kind, how many, the
action taken and where in the response. ``FindingLog`` accumulates them while
one response is sanitized.
"""

from __future__ import annotations

from dataclasses import dataclass

REDACTED = "redacted"
STRIPPED = "stripped"
FLAGGED = "flagged"
BLOCKED = "blocked"


@dataclass(frozen=True)
class Finding:
    kind: str
    """What was found, e.g. ``email``, ``control_chars``, ``injection_role_marker``."""
    count: int
    action: str
    """``redacted``, ``stripped``, ``flagged`` or ``blocked``."""
    where: str
    """Where in the response, e.g. ``content[0].text``."""


class FindingLog:
    """Counts findings by (kind, action, where), in the order first seen."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], int] = {}

    def add(self, kind: str, action: str, where: str, count: int = 1) -> None:
        if count > 0:
            key = (kind, action, where)
            self._counts[key] = self._counts.get(key, 0) + count

    def extend(self, findings: tuple[Finding, ...] | list[Finding]) -> None:
        for finding in findings:
            self.add(finding.kind, finding.action, finding.where, finding.count)

    @property
    def blocked(self) -> bool:
        return any(action == BLOCKED for _, action, _ in self._counts)

    def findings(self) -> tuple[Finding, ...]:
        return tuple(Finding(kind, count, action, where) for (kind, action, where), count in self._counts.items())
