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

MAX_PLACES = 256
"""Distinct (kind, action, where) entries a log keeps; a hostile result can have a finding in every string."""
ELSEWHERE = "elsewhere"
"""The ``where`` of the entry that sums up, per kind and action, what was found past ``MAX_PLACES``."""


@dataclass(frozen=True)
class Finding:
    kind: str
    """What was found, e.g. ``email``, ``control_chars``, ``injection_role_marker``."""
    count: int
    action: str
    """``redacted``, ``stripped``, ``flagged`` or ``blocked``."""
    where: str
    """Where in the response, e.g. ``content[0].text``; ``elsewhere (…)`` past ``MAX_PLACES``."""


class FindingLog:
    """Counts findings by (kind, action, where), in the order first seen.

    Bounded: past ``MAX_PLACES`` distinct places, counts go to one ``elsewhere`` entry per (kind, action), so the
    totals stay true (and ``blocked`` stays right) while the log, and the audit record made of it, stay small.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], int] = {}
        self._overflow: dict[tuple[str, str], int] = {}
        self.added = 0
        """How many times something was added: a cheap way to tell whether a step found anything."""

    def add(self, kind: str, action: str, where: str, count: int = 1) -> None:
        if count <= 0:
            return
        self.added += 1
        key = (kind, action, where)
        if key in self._counts or len(self._counts) < MAX_PLACES:
            self._counts[key] = self._counts.get(key, 0) + count
            return
        summary = (kind, action)
        self._overflow[summary] = self._overflow.get(summary, 0) + count

    def extend(self, findings: tuple[Finding, ...] | list[Finding]) -> None:
        for finding in findings:
            self.add(finding.kind, finding.action, finding.where, finding.count)

    @property
    def blocked(self) -> bool:
        return any(action == BLOCKED for _, action, _ in self._counts) or any(
            action == BLOCKED for _, action in self._overflow
        )

    def findings(self) -> tuple[Finding, ...]:
        kept = [Finding(kind, count, action, where) for (kind, action, where), count in self._counts.items()]
        more = [
            Finding(kind, count, action, f"{ELSEWHERE} (past the first {MAX_PLACES} places)")
            for (kind, action), count in self._overflow.items()
        ]
        return (*kept, *more)
