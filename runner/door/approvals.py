"""What the door remembers and says about calls that wait for an approval.

A tool whose rule asks for approval is shown to the client as a question naming the approval id; the call waits in
the SessionManager's approval book, and the door remembers which approval a call (tool and arguments) waits for,
so the same call sent again claims it once an approver has decided.
"""

from __future__ import annotations

import mcp_types as types

from runner.approvals import Approval
from runner.errors import FailedPrecondition

MAX_PENDING_APPROVALS = 64
"""Calls waiting for an approval a binding remembers; past it the oldest is forgotten (its approval stays in the
book: an approver can still decide it, and the call sent again just asks for a new one)."""


def approval_message(approval: Approval) -> str:
    return (
        f"The tool {approval.tool!r} needs approval {approval.approval_id} (rule: {approval.rule}). An approver "
        f"decides with `mcp-runner approvals approve {approval.approval_id}` (or deny). Accept to wait for the "
        "decision; decline or cancel to give up the call."
    )


def approval_elicitation(approval: Approval) -> types.ElicitRequest:
    return types.ElicitRequest(
        params=types.ElicitRequestFormParams(
            message=approval_message(approval), requested_schema={"type": "object", "properties": {}}
        )
    )


def given_up(tool: str, approval_id: str) -> FailedPrecondition:
    """The client declined to wait for the approval: the call ends."""
    return FailedPrecondition(f"the call of {tool!r} was given up: approval {approval_id} was not waited for")


class PendingApprovals:
    """A call's key (tool and arguments) -> the approval it waits for, at most ``cap`` of them, oldest out first.

    A binding lives as long as its session or lease, and each distinct call needing approval adds a key that only
    the same call sent again removes: without the cap, a client could grow it without end.
    """

    def __init__(self, cap: int = MAX_PENDING_APPROVALS) -> None:
        self._cap = cap
        self._by_call: dict[str, str] = {}

    def get(self, key: str) -> str:
        return self._by_call.get(key, "")

    def add(self, key: str, approval_id: str) -> None:
        self._by_call.pop(key, None)  # a key asked again is the newest
        self._by_call[key] = approval_id
        while len(self._by_call) > self._cap:
            del self._by_call[next(iter(self._by_call))]

    def pop(self, key: str) -> None:
        self._by_call.pop(key, None)

    def __len__(self) -> int:
        return len(self._by_call)
