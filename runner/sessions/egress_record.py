"""What the host keeps of a session's egress decisions: bounded, sanitized, logged, and explained.

The decisions come from the session's proxy, which wrote them about requests
the sandbox chose: a host name can carry whatever the server wanted to smuggle
out (a secret of the session, say). So each one goes through the session's
sanitizer before it is kept, logged or handed to a caller.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from runner.config import Profile
from runner.guard.findings import FindingLog
from runner.guard.sanitize import Sanitizer
from runner.sandbox.base import EgressDecision

log = logging.getLogger(__name__)

MAX_EGRESS_KEPT = 200


class EgressRecord:
    def __init__(
        self, session_id: str, sanitizer: Sanitizer, listener: Callable[[EgressDecision], None] | None = None
    ) -> None:
        self._session_id = session_id
        self._sanitizer = sanitizer
        self._listener = listener  # the audit log: every decision, where only the last MAX_EGRESS_KEPT stay here
        self._decisions: deque[EgressDecision] = deque(maxlen=MAX_EGRESS_KEPT)

    def bind(self, listener: Callable[[EgressDecision], None]) -> None:
        """Report every decision to ``listener`` from now on.

        A pooled sandbox boots before anyone claims it: what its proxy decided until then went on record at once,
        under the sandbox's session id and no caller (there was none), so none is lost however many there were.
        """
        self._listener = listener

    def record(self, decision: EgressDecision) -> None:
        # Every text of it, not a chosen few: the method is the sandbox's word as much as the host is.
        findings = FindingLog()
        texts: dict[str, Any] = {
            f.name: self._sanitizer.text(value, f"egress {f.name}", findings)
            for f in fields(decision)
            if isinstance(value := getattr(decision, f.name), str)
        }
        decision = replace(decision, **texts)
        self._decisions.append(decision)
        if self._listener is not None:
            self._listener(decision)
        log.info(
            "egress session=%s %s %s:%s %s (%s: %s)", self._session_id, decision.method, decision.host,
            decision.port, "allowed" if decision.allowed else "refused", decision.code, decision.reason,
        )

    def decisions(self) -> tuple[EgressDecision, ...]:
        return tuple(self._decisions)

    def hint(self) -> str:
        """For a server that died: the last refusal, which most likely killed it; empty if none."""
        refused = next((d for d in reversed(self._decisions) if not d.allowed), None)
        if refused is None:
            return ""
        return f"; its egress proxy refused {refused.method} {refused.host}:{refused.port} ({refused.reason})"


def describe_network(profile: Profile) -> str:
    if profile.network is None:
        return "none"
    return "egress proxy: " + ", ".join(
        f"{rule.proxy_rule().label()}{' (private)' if rule.private else ''}" for rule in profile.network.egress
    )
