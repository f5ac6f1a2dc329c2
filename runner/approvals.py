"""Calls to high-impact tools wait for a person: the book of approval requests and their decisions.

A policy rule can say a tool call needs approval. The call is then recorded
here, with the exact arguments that will be sent, and the caller gets an
approval id. An approver (a different identity, unless the policy allows
self-approval) approves or denies it; the caller ``claim``s an approved call
once and only then is it run, with the recorded arguments. Undecided requests
expire at their deadline; approvals of a closed session expire with it.

Expiry is scheduled, not polled: one event-loop timer (``loop.call_later``)
is armed for the earliest pending deadline and re-armed after each change, so
watchers and waiters see an expiry when it happens even if nobody asks. The
timer's delay is measured on ``clock`` (wall time by default) but the loop
sleeps on its monotonic clock, so the timer re-checks ``clock`` when it
fires, re-arms if the deadline has not been reached yet, and never sleeps
longer than ``_MAX_TIMER_S`` so a wall-clock jump forward is noticed soon.
When no loop is running (synchronous use), expiry still happens: every public
method first expires whatever is overdue by ``clock``.

Watchers get a bounded queue each. A watcher that falls ``watch_queue``
events behind is dropped: it receives the events already queued, then
``ResourceExhausted``, and may watch again (which starts with a fresh list of
pending approvals). Silently skipping events would let an approver's view go
stale without knowing; blocking the publisher would let one slow client stall
every decision.

Pending approvals are capped twice: ``max_pending`` for the whole service
and ``max_pending_per_caller`` for each caller, so one caller filling the
book cannot lock every other caller out of asking.

With a ``GuardMemory`` every change is written (durably) before it is
published or acted on, and the book starts from what the file holds; see
``expire_all_pending`` for approvals left pending by a service that stopped.

Not thread-safe: use it from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import copy
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from runner.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    ResourceExhausted,
)

if TYPE_CHECKING:
    from runner.guard.memory import GuardMemory

MAX_REASON = 1000
RETENTION_S = 3600.0
WATCH_QUEUE = 256
_MAX_TIMER_S = 60.0
TIMED_OUT = "no decision before the deadline"
SESSION_CLOSED = "session closed"
PENDING_PER_CALLER = 20
"""Pending approvals one caller may have: a person decides each, so more than a screenful helps nobody."""


class ApprovalState(Enum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Approval:
    """One request for approval and, once made, its decision. Snapshots: the book hands out new ones on change."""

    approval_id: str
    """``apr_`` + 16 hex digits from ``secrets``: not guessable, so an id alone reveals nothing."""
    session_id: str
    caller: str
    profile: str
    tool: str
    arguments: Mapping[str, Any] = field(hash=False)
    """The exact arguments that are sent if approved; a private deep copy, read-only at the top level."""
    rule: str
    """The policy rule that asked for approval."""
    state: ApprovalState
    requested_at: float
    expires_at: float
    """Unix time after which a pending approval expires."""
    decided_by: str = ""
    reason: str = ""
    decided_at: float | None = None
    """When it was approved, denied or expired."""
    used: bool = False
    """An approved call runs once; ``claim`` sets this."""


def _when(t: float | None) -> str:
    return "an unknown time" if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _settled(approval: Approval) -> str:
    """How a no-longer-pending approval ended, for error messages."""
    if approval.state is ApprovalState.EXPIRED:
        return f"expired at {_when(approval.decided_at)} ({approval.reason})"
    return f"{approval.state.value} by {approval.decided_by!r} at {_when(approval.decided_at)}"


class ApprovalBook:
    """Approval requests and decisions; see the module docstring for expiry, watchers, caps and memory."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        max_pending: int = 1000,
        *,
        max_pending_per_caller: int = PENDING_PER_CALLER,
        watch_queue: int = WATCH_QUEUE,
        retention_s: float = RETENTION_S,
        on_change: Callable[[Approval], None] | None = None,
        memory: GuardMemory | None = None,
    ) -> None:
        self._clock = clock
        self._on_change = on_change  # told of every change (request, decision, expiry, claim): the audit's feed
        self._max_pending = max_pending
        self._max_per_caller = max_pending_per_caller
        self._watch_queue = watch_queue
        self._retention_s = retention_s
        self._memory = memory
        self._records: dict[str, Approval] = {}
        if memory is not None:
            self._records = {a.approval_id: a for a in sorted(memory.approvals(), key=lambda a: a.requested_at)}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        # A ``None`` in a queue means "this watcher fell behind and was dropped".
        self._watchers: set[asyncio.Queue[Approval | None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._timer_due: float | None = None

    # ---- requests and decisions -------------------------------------------------------------------------------

    def request(
        self,
        *,
        session_id: str,
        caller: str,
        profile: str,
        tool: str,
        arguments: Mapping[str, Any],
        rule: str,
        timeout_s: float,
    ) -> Approval:
        """Record a call that waits for approval; QuotaExceeded when the caller's or the service's cap is full."""
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise InvalidArgument(f"an approval timeout must be a positive number of seconds, got {timeout_s!r}")
        self.sweep()
        pending = [a for a in self._records.values() if a.state is ApprovalState.PENDING]
        mine = sum(1 for a in pending if a.caller == caller)
        # The caller's own cap first: when it is full, that (not everyone's) is what the caller must wait for.
        if mine >= self._max_per_caller:
            raise QuotaExceeded(
                f"caller {caller} has {mine} approvals pending, the limit per caller is {self._max_per_caller}; "
                "wait until some are decided or expire"
            )
        if len(pending) >= self._max_pending:
            raise QuotaExceeded(f"{len(pending)} approvals are already pending, the limit is {self._max_pending}")
        now = self._clock()
        approval = Approval(
            approval_id=self._new_id(),
            session_id=session_id,
            caller=caller,
            profile=profile,
            tool=tool,
            arguments=MappingProxyType(copy.deepcopy(dict(arguments))),
            rule=rule,
            state=ApprovalState.PENDING,
            requested_at=now,
            expires_at=now + timeout_s,
        )
        self._put(approval)
        self._publish(approval)
        self._arm()
        return self._out(approval)

    def get(self, approval_id: str) -> Approval:
        self._expire_overdue()
        return self._out(self._record(approval_id))

    def pending(self) -> list[Approval]:
        """Pending approvals, oldest first, after expiring overdue ones."""
        return self.list_approvals()

    def list_approvals(self, *, include_decided: bool = False) -> list[Approval]:
        """Pending approvals (and, with ``include_decided``, retained decided ones), oldest first.

        Sweeps first, so no decided approval is shown (or kept in the guard's file) past its retention just
        because nobody has asked for a new one since.
        """
        self.sweep()
        return [
            self._out(a)
            for a in sorted(self._records.values(), key=lambda a: a.requested_at)
            if include_decided or a.state is ApprovalState.PENDING
        ]

    def decide(
        self, approval_id: str, *, approver: str, approve: bool, reason: str, allow_self_approval: bool
    ) -> Approval:
        """Approve or deny a pending approval.

        A denial needs a reason the caller will read; nobody approves their own
        call unless the policy allows it (``allow_self_approval``).
        """
        self._expire_overdue()
        current = self._record(approval_id)
        if current.state is not ApprovalState.PENDING:
            raise FailedPrecondition(f"approval {approval_id} is no longer pending: it was {_settled(current)}")
        if not approver:
            raise InvalidArgument("an approver identity is required")
        if approver == current.caller and not allow_self_approval:
            raise PermissionDenied(f"{approver!r} requested approval {approval_id} and may not approve their own call")
        if len(reason) > MAX_REASON:
            raise InvalidArgument(f"a reason may be at most {MAX_REASON} characters, got {len(reason)}")
        if not approve and not reason.strip():
            raise InvalidArgument("denying a call needs a reason the caller can read")
        decided = replace(
            current,
            state=ApprovalState.APPROVED if approve else ApprovalState.DENIED,
            decided_by=approver,
            reason=reason,
            decided_at=self._clock(),
        )
        self._put(decided)
        self._publish(decided)
        self._arm()
        return self._out(decided)

    async def wait(self, approval_id: str, timeout: float | None) -> Approval:
        """The approval once decided or expired, or still pending when ``timeout`` seconds pass first.

        Each wait is bounded by the approval's own deadline too, so it ends at
        expiry even if no timer is armed (e.g. the request was made before the
        loop ran).
        """
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while True:
            self._expire_overdue()
            current = self._record(approval_id)
            if current.state is not ApprovalState.PENDING:
                return self._out(current)
            self._arm()
            delay = current.expires_at - self._clock()
            if end is not None:
                left = end - loop.time()
                if left <= 0:
                    return self._out(current)
                delay = min(delay, left)
            changed: asyncio.Future[None] = loop.create_future()
            waiters = self._waiters.setdefault(approval_id, set())
            waiters.add(changed)
            try:
                await asyncio.wait_for(changed, max(delay, 0.0))
            except TimeoutError:
                pass
            finally:
                waiters.discard(changed)
                if not waiters and self._waiters.get(approval_id) is waiters:
                    del self._waiters[approval_id]

    def claimable(self, approval_id: str, *, caller: str, session_id: str) -> Approval:
        """The approval, if ``caller`` asked for it in ``session_id``: nothing of another's (its tool, whether
        some arguments are its) is told by what a claim compares next."""
        self._expire_overdue()
        current = self._record(approval_id)
        if current.caller != caller:
            raise PermissionDenied(f"approval {approval_id} was requested by another caller")
        if current.session_id != session_id:
            raise PermissionDenied(f"approval {approval_id} was requested in another session")
        return self._out(current)

    def claim(self, approval_id: str, *, caller: str, session_id: str) -> Approval:
        """The caller comes back to run an approved call: it runs once, in the session that asked for it."""
        self.claimable(approval_id, caller=caller, session_id=session_id)
        current = self._record(approval_id)
        if current.state is ApprovalState.PENDING:
            raise FailedPrecondition(f"approval {approval_id} is still waiting for an approver")
        if current.state is ApprovalState.DENIED:
            raise PermissionDenied(
                f"approval {approval_id} was denied by {current.decided_by!r} at {_when(current.decided_at)}: "
                f"{current.reason}"
            )
        if current.state is ApprovalState.EXPIRED:
            raise FailedPrecondition(f"approval {approval_id} {_settled(current)}")
        if current.used:
            raise FailedPrecondition(f"approval {approval_id} was already used; an approved call runs once")
        claimed = replace(current, used=True)
        self._put(claimed)  # durable before the call runs: a claimed approval never runs twice
        if self._on_change is not None:
            self._on_change(claimed)
        return self._out(claimed)

    # ---- watching ----------------------------------------------------------------------------------------------

    async def watch(self) -> AsyncIterator[Approval]:
        """Every pending approval as of the first iteration, then every change (request, decision, expiry).

        The watcher is registered when iteration starts and removed when the
        generator ends: by ``aclose()``, by cancellation of the consuming task,
        or by garbage collection after the consumer stops iterating. Use
        ``contextlib.aclosing`` for prompt clean-up. A watcher more than
        ``watch_queue`` events behind gets ResourceExhausted (see the module
        docstring).
        """
        self._expire_overdue()
        queue: asyncio.Queue[Approval | None] = asyncio.Queue(maxsize=self._watch_queue + 1)
        self._watchers.add(queue)
        try:
            self._arm()
            snapshot = [a for a in self._records.values() if a.state is ApprovalState.PENDING]
            for approval in sorted(snapshot, key=lambda a: a.requested_at):
                yield self._out(approval)
            while True:
                item = await queue.get()
                if item is None:
                    raise ResourceExhausted(
                        f"the approval watcher fell more than {self._watch_queue} events behind and was dropped; "
                        "watch again"
                    )
                yield item
        finally:
            self._watchers.discard(queue)

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    # ---- housekeeping ------------------------------------------------------------------------------------------

    def forget_session(self, session_id: str) -> None:
        """Pending approvals of a closed session expire now, with the reason ``session closed``."""
        now = self._clock()
        for approval in list(self._records.values()):
            if approval.session_id == session_id and approval.state is ApprovalState.PENDING:
                self._settle_expired(approval, now, SESSION_CLOSED)
        self._arm()

    def expire_all_pending(self, reason: str) -> None:
        """Every pending approval expires now with ``reason``: at start-up, when the sessions they were asked in
        ended with the previous process, so no approval could ever run (a claim must come from its session)."""
        now = self._clock()
        for approval in list(self._records.values()):
            if approval.state is ApprovalState.PENDING:
                self._settle_expired(approval, now, reason)
        self._arm()

    def sweep(self) -> None:
        """Expire overdue approvals and drop settled ones older than the retention period (an hour)."""
        self._expire_overdue()
        horizon = self._clock() - self._retention_s
        old = [
            approval_id
            for approval_id, approval in self._records.items()
            if approval.state is not ApprovalState.PENDING
            and approval.decided_at is not None
            and approval.decided_at < horizon
        ]
        if old and self._memory is not None:
            self._memory.drop_approvals(old)
        for approval_id in old:
            del self._records[approval_id]

    # ---- internals ---------------------------------------------------------------------------------------------

    def _new_id(self) -> str:
        while True:
            approval_id = "apr_" + secrets.token_hex(8)
            if approval_id not in self._records:
                return approval_id

    def _record(self, approval_id: str) -> Approval:
        try:
            return self._records[approval_id]
        except KeyError:
            raise NotFound(f"no approval {approval_id[:64]!r}") from None

    @staticmethod
    def _out(approval: Approval) -> Approval:
        """A copy safe to hand out: nested argument values cannot be changed through it to alter what is sent."""
        return replace(approval, arguments=MappingProxyType(copy.deepcopy(dict(approval.arguments))))

    def _put(self, approval: Approval) -> None:
        """Remember ``approval`` as it now is: in the file first, so a failed write changes nothing."""
        if self._memory is not None:
            self._memory.save_approval(approval)
        self._records[approval.approval_id] = approval

    def _settle_expired(self, approval: Approval, at: float, reason: str) -> None:
        expired = replace(approval, state=ApprovalState.EXPIRED, reason=reason, decided_at=at)
        self._put(expired)
        self._publish(expired)

    def _expire_overdue(self) -> None:
        now = self._clock()
        for approval in list(self._records.values()):
            if approval.state is ApprovalState.PENDING and approval.expires_at <= now:
                self._settle_expired(approval, approval.expires_at, TIMED_OUT)

    def _publish(self, approval: Approval) -> None:
        """Wake waiters on this approval and queue the change for every watcher; drop watchers that are full."""
        if self._on_change is not None:
            self._on_change(approval)
        for waiter in self._waiters.get(approval.approval_id, ()):
            if not waiter.done():
                waiter.set_result(None)
        for queue in list(self._watchers):
            if queue.qsize() >= self._watch_queue:
                queue.put_nowait(None)  # the one slot kept free for this
                self._watchers.discard(queue)
            else:
                queue.put_nowait(self._out(approval))

    def _arm(self) -> None:
        """Point the single expiry timer at the earliest pending deadline (no-op without a running loop)."""
        due = min((a.expires_at for a in self._records.values() if a.state is ApprovalState.PENDING), default=None)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._timer is not None:
            if self._timer_loop is loop and self._timer_due == due:
                return
            self._timer.cancel()
            self._timer = None
        self._timer_due = due
        if due is None:
            return
        delay = min(max(due - self._clock(), 0.0), _MAX_TIMER_S)
        self._timer_loop = loop
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_due = None
        self._expire_overdue()
        self._arm()
