"""The decisions the SessionManager asks for around each request: policy, limits, rates, quarantine, approvals, pins.

One object so the manager has one collaborator for "may this happen"; the
state behind it (token buckets, anomaly windows, approvals, first-seen pins)
lives for the process, and with a ``GuardMemory`` first-seen pins, approvals
and callers' buckets outlive it (``runner.guard.memory`` says what is kept).
The policy is read afresh on every decision, so a reloaded file applies to
the next request without touching open sessions.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from runner.approvals import Approval, ApprovalBook, ApprovalState
from runner.audit.records import canonical_json
from runner.config import Limits, Profile, Settings
from runner.errors import (
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    RateLimited,
    ResultBlocked,
    RunnerError,
)
from runner.guard.memory import GuardMemory
from runner.guard.pinning import PinBook
from runner.policy import ADMIN, APPROVER, Kind, LimitCeilings, Policy, PolicyStore, Rates, ToolDecision
from runner.sessions.models import LimitsRequest
from runner.throttle import BLOCKED, DENIED, INVALID, AnomalyWatch, Throttle

log = logging.getLogger(__name__)

MIN_MEMORY_BYTES = 16 * 1024**2
MIN_REQUEST = {"cpus": 0.01, "pids": 8}
"""Floors of what a caller may ask for: Docker's smallest CPU quota, and the smallest pids limit a profile may set.
Below them a limit is not tighter but gone: 1e-10 CPUs rounds to NanoCpus 0, which Docker reads as unlimited."""
MAX_APPROVAL_ARGUMENTS_BYTES = 32 * 1024
"""A person reads an approval's arguments, and ListApprovals sends every pending one in one message: at 1 MiB
each, four approvals of one caller passed gRPC's default 4 MiB and every approver's ListApprovals failed. At this
cap the whole pending list (1000 at most) stays within the runner client's 64 MiB."""
RESTARTED = "the service restarted; the session that asked for it ended with the previous process"
_LIMIT_NAMES = ("memory_bytes", "cpus", "pids", "call_timeout_s", "idle_timeout_s", "max_lifetime_s")
_DOING = {"tools": "call tool", "resources": "read resource", "prompts": "get prompt"}


class Gate:
    def __init__(
        self,
        policy: PolicyStore,
        settings: Settings,
        on_approval: Callable[[Approval], None] | None = None,
        memory: GuardMemory | None = None,
    ) -> None:
        self._policy = policy
        self.throttle = Throttle(memory=memory)
        self._anomalies = AnomalyWatch()
        self._quiet: set[str] = set()
        """Callers whose refusals are being throttled and who have had their one throttle note already."""
        self.approvals = ApprovalBook(on_change=on_approval, memory=memory)
        configured = {name: profile.pins for name, profile in settings.profiles.items() if profile.pins}
        self.pins = PinBook(configured, memory=memory)

    def expire_orphaned_approvals(self) -> None:
        """At start-up, before any session opens: approvals left pending by the previous process expire, and
        settled ones past their retention leave the guard's file."""
        self.approvals.expire_all_pending(RESTARTED)
        self.approvals.sweep()

    @property
    def policy(self) -> Policy:
        return self._policy.current

    # -- sessions --------------------------------------------------------------------------------------------

    def admit_open(self, caller: str, profile: Profile, request: LimitsRequest | None, open_by_caller: int) -> Limits:
        """The limits the new session gets, or the reason it may not open (nothing is spent on a refusal)."""
        policy = self.policy
        policy.check_open(caller, profile.name)
        rules = policy.caller(caller)
        limits = apply_limits(profile.limits, rules.limits, request, f"{policy.label}: {rules.entry}.limits")
        self.throttle.admit_open(caller, rules.rates, open_by_caller, rules.max_sessions)
        return limits

    def may_see(self, caller: str, owner: str) -> bool:
        return caller == owner or self.policy.has_role(caller, ADMIN)

    def check_owner(self, caller: str, owner: str, session_id: str) -> None:
        if not self.may_see(caller, owner):
            raise PermissionDenied(
                f"session {session_id} belongs to another caller; only its owner or an admin "
                f"({self.policy.label}: roles [admin]) may use it"
            )

    def throttle_refusal(self, caller: str) -> tuple[RateLimited, bool] | None:
        """Count a refusal (unknown profile or session, another caller's session, a denied open) against the caller.

        None: answer it as usual, records and all. Past the caller's refusal rate: the RESOURCE_EXHAUSTED to
        answer instead, before anything of the request is recorded, and whether it is the first of its run
        (the one refusal worth a short throttle note), so a flood of refusals cannot grow the audit log.
        """
        rates = self.policy.caller(caller).rates
        wait = self.throttle.take_refusal(caller, rates, time.monotonic())
        if not wait:
            self._quiet.discard(caller)
            return None
        first = caller not in self._quiet
        self._quiet.add(caller)
        entry = rates.entry or f"callers.{caller}.rates"
        return RateLimited(
            f"caller {caller} exceeded {rates.refusals_per_min:g} refused requests/min "
            f"(burst {rates.refusal_burst}) (policy: {entry}.refusals_per_min)",
            wait,
        ), first

    def forget(self, session_id: str) -> None:
        """A session ended: drop its buckets and anomaly window, expire its pending approvals."""
        self.throttle.forget_session(session_id)
        self._anomalies.forget(session_id)
        self.approvals.forget_session(session_id)

    # -- calls -----------------------------------------------------------------------------------------------

    def decide_tool(self, caller: str, profile: str, tool: str) -> ToolDecision:
        return self.decide_access("tools", caller, profile, tool)

    def decide_access(self, kind: Kind, caller: str, profile: str, name: str) -> ToolDecision:
        """Allow or approval for a tool, resource URI or prompt name; a denial is raised naming the rule."""
        policy = self.policy
        # Sessions outlive reloads: a caller removed from the policy, or whose profile was taken away, must not go
        # on using the sessions it opened under the earlier one (the open was the only place this was weighed).
        policy.check_open(caller, profile)
        decision = policy.decision(kind, caller, profile, name)
        if decision.verdict == "deny":
            raise PermissionDenied(
                f"caller {caller} may not {_DOING[kind]} {name!r} on profile {profile!r} ({decision.rule})"
            )
        return decision

    def call_slot(self, caller: str, session_id: str) -> contextlib.AbstractContextManager[None]:
        rules = self.policy.caller(caller)
        return self.throttle.call_slot(caller, session_id, rules.rates, rules.session_rates)

    def request_slot(self, caller: str) -> contextlib.AbstractContextManager[None]:
        """One of the caller's calls (its call rate and concurrency) for a request that reaches no server: a listing
        of profiles, a session's stderr tail. No session's rates are spent: the empty key names no session, and its
        rates are unlimited."""
        return self.throttle.call_slot(caller, "", self.policy.caller(caller).rates, Rates())

    def calls_exhausted(self, caller: str, session_id: str) -> bool:
        """Whether a call slot would be refused now (nothing is taken): such a request is a refusal to count."""
        rules = self.policy.caller(caller)
        try:
            self.throttle.check_call(caller, session_id, rules.rates, rules.session_rates)
        except RateLimited:
            return True
        return False

    def quarantine_reason(self, session_id: str, error: RunnerError) -> str | None:
        """Count a denied, blocked or invalid event; the reason to end the session once the policy's limit is hit."""
        if isinstance(error, ResultBlocked):
            kind = BLOCKED
        elif isinstance(error, PermissionDenied):
            kind = DENIED
        else:
            kind = INVALID
        policy = self.policy
        if not self._anomalies.record(session_id, kind, policy.anomaly_max_events, policy.anomaly_window_s):
            return None
        counts = self._anomalies.recent(session_id, policy.anomaly_window_s)
        seen = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        return (
            f"quarantined after {sum(counts.values())} denied, blocked or invalid events within "
            f"{policy.anomaly_window_s:g} s ({seen}; {policy.label}: anomaly)"
        )

    # -- approvals -------------------------------------------------------------------------------------------

    def request_approval(
        self, *, session_id: str, caller: str, profile: str, tool: str, arguments: dict[str, Any], rule: str
    ) -> Approval:
        # Each request counts as a call against the caller's and the session's rates: asking costs an approver's
        # attention and a place in the pending list, so it must not be free where calling is not.
        with self.call_slot(caller, session_id):
            size = len(canonical_json(arguments).encode("utf-8"))
            if size > MAX_APPROVAL_ARGUMENTS_BYTES:
                raise InvalidArgument(
                    f"the arguments of a call that needs approval may be at most {MAX_APPROVAL_ARGUMENTS_BYTES} "
                    f"bytes (a person reads them), these are {size}"
                )
            return self.approvals.request(
                session_id=session_id,
                caller=caller,
                profile=profile,
                tool=tool,
                arguments=arguments,
                rule=rule,
                timeout_s=self.policy.approval_timeout_s,
            )

    def claim(
        self, caller: str, session_id: str, profile: str, approval_id: str, tool: str, arguments: dict[str, Any]
    ) -> Approval:
        """The approved call behind ``approval_id``, if it is this call, still allowed, and not used yet."""
        approval = self.approvals.claimable(approval_id, caller=caller, session_id=session_id)
        if approval.tool != tool:
            raise InvalidArgument(f"approval {approval_id} is for tool {approval.tool!r}, not {tool!r}")
        if arguments and arguments != dict(approval.arguments):
            raise InvalidArgument(
                f"arguments differ from those approval {approval_id} was granted for; send none, or the same ones"
            )
        # The policy may have been reloaded since the request: a rule that now denies the tool wins.
        self.decide_tool(caller, profile, tool)
        return self.approvals.claim(approval_id, caller=caller, session_id=session_id)

    def claim_decided(self, approval: Approval, caller: str, *, time_left: bool) -> Approval:
        """After waiting: the approved call to run now, or why it may not (denied, expired, still pending).

        Without ``time_left`` an approved call is not claimed, so the caller can still run it later.
        """
        if approval.state is ApprovalState.PENDING or (approval.state is ApprovalState.APPROVED and not time_left):
            what = "is still pending" if approval.state is ApprovalState.PENDING else "was approved after the deadline"
            raise DeadlineExceeded(
                f"approval {approval.approval_id} {what}; call CallTool with approval_id="
                f"{approval.approval_id} to run it once it is approved"
            )
        return self.approvals.claim(approval.approval_id, caller=caller, session_id=approval.session_id)

    def list_approvals(self, approver: str, *, include_decided: bool) -> list[Approval]:
        self.check_approver(approver)
        return self.approvals.list_approvals(include_decided=include_decided)

    def check_approver(self, approver: str) -> None:
        self.policy.check_role(approver, APPROVER)

    def decide(self, approver: str, approval_id: str, *, approve: bool, reason: str) -> Approval:
        policy = self.policy
        policy.check_role(approver, APPROVER)
        decided = self.approvals.decide(
            approval_id, approver=approver, approve=approve, reason=reason,
            allow_self_approval=policy.allow_self_approval,
        )
        log.info(
            "approval %s for %s of caller %s %s by %s",
            decided.approval_id, decided.tool, decided.caller, decided.state.value, approver,
        )
        return decided


def apply_limits(profile: Limits, ceilings: LimitCeilings, request: LimitsRequest | None, rule: str) -> Limits:
    """The session's limits: the profile's, lowered to the caller's ceilings, then to what the caller asked.

    Asking above the profile is a bad request (INVALID_ARGUMENT); asking above the caller's own ceiling
    within the profile is refused by policy (PERMISSION_DENIED, naming the rule).
    """
    capped: dict[str, Any] = {}
    for name in _LIMIT_NAMES:
        ceiling = getattr(ceilings, name)
        if ceiling is not None and ceiling < getattr(profile, name):
            capped[name] = ceiling
    effective = replace(profile, **capped)
    if request is None:
        return effective
    changes: dict[str, Any] = {}
    for name in _LIMIT_NAMES:
        wanted = getattr(request, name)
        if wanted is None:
            continue
        most = getattr(profile, name)
        least = MIN_REQUEST.get(name)
        if (wanted < least if least is not None else wanted <= 0) or wanted > most:
            bound = f"{least:g} ≤ value" if least is not None else "0 < value"
            raise InvalidArgument(f"limit {name}={wanted:g} is outside what the profile allows ({bound} ≤ {most:g})")
        if name in capped and wanted > capped[name]:
            raise PermissionDenied(
                f"limit {name}={wanted:g} is above the caller's ceiling of {capped[name]:g} ({rule})"
            )
        changes[name] = wanted
    if changes.get("memory_bytes", MIN_MEMORY_BYTES) < MIN_MEMORY_BYTES:
        raise InvalidArgument(f"limit memory_bytes must be at least {MIN_MEMORY_BYTES // 1024**2} MiB")
    return replace(effective, **changes)
