"""Approvals and the audit log, as methods of both clients (``runner.client`` builds them on these classes).

Apart from ``runner.client`` so its two clients stay short enough to read side by side: these are the methods an
approver or an auditor uses, not an agent's session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.client_messages import audit_query


class AsyncAuditMethods:
    _stub: Any
    _metadata: tuple[tuple[str, str], ...]

    async def list_approvals(self, *, include_decided: bool = False, timeout: float | None = None) -> list[pb.Approval]:
        request = pb.ListApprovalsRequest(include_decided=include_decided)
        response = await self._stub.ListApprovals(request, timeout=timeout, metadata=self._metadata)
        return list(response.approvals)

    async def watch_approvals(self, *, timeout: float | None = None) -> AsyncIterator[pb.Approval]:
        """Every pending approval, then each new request, decision and expiry (approver role)."""
        call = self._stub.WatchApprovals(pb.WatchApprovalsRequest(), timeout=timeout, metadata=self._metadata)
        try:
            async for message in call:
                yield message.approval
        finally:
            call.cancel()

    async def decide_approval(
        self, approval_id: str, *, approve: bool, reason: str = "", timeout: float | None = None
    ) -> pb.Approval:
        request = pb.DecideApprovalRequest(approval_id=approval_id, approve=approve, reason=reason)
        response = await self._stub.DecideApproval(request, timeout=timeout, metadata=self._metadata)
        approval: pb.Approval = response.approval
        return approval

    async def query_audit(
        self,
        *,
        record_id: str = "",
        session_id: str = "",
        caller: str = "",
        since: float | None = None,
        until: float | None = None,
        kinds: Iterable[str] = (),
        after_seq: int = 0,
        limit: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[pb.AuditRecord]:
        """Audit records oldest first; ``since`` (inclusive) and ``until`` (exclusive) are Unix times."""
        request = audit_query(record_id, session_id, caller, since, until, kinds, after_seq, limit)
        call = self._stub.QueryAudit(request, timeout=timeout, metadata=self._metadata)
        try:
            async for record in call:
                yield record
        finally:
            call.cancel()

    async def export_session(self, session_id: str, *, timeout: float | None = None) -> AsyncIterator[str]:
        """A session's records as JSON Lines text, in chunks of whole lines (write them out in order)."""
        call = self._stub.ExportSession(
            pb.ExportSessionRequest(session_id=session_id), timeout=timeout, metadata=self._metadata
        )
        try:
            async for message in call:
                yield message.lines
        finally:
            call.cancel()

    async def verify_audit(self, *, timeout: float | None = None) -> pb.VerifyAuditResponse:
        response: pb.VerifyAuditResponse = await self._stub.VerifyAudit(
            pb.VerifyAuditRequest(), timeout=timeout, metadata=self._metadata
        )
        return response

    async def replay_session(
        self, session_id: str, *, timeout_ms: int = 0, timeout: float | None = None
    ) -> AsyncIterator[pb.ReplayVerdict]:
        """One verdict per recorded tool call, as each is replayed in a fresh sandbox."""
        request = pb.ReplaySessionRequest(session_id=session_id, timeout_ms=timeout_ms)
        call = self._stub.ReplaySession(request, timeout=timeout, metadata=self._metadata)
        try:
            async for verdict in call:
                yield verdict
        finally:
            call.cancel()


class AuditMethods:
    _stub: Any
    _metadata: tuple[tuple[str, str], ...]

    def list_approvals(self, *, include_decided: bool = False, timeout: float | None = None) -> list[pb.Approval]:
        request = pb.ListApprovalsRequest(include_decided=include_decided)
        return list(self._stub.ListApprovals(request, timeout=timeout, metadata=self._metadata).approvals)

    def watch_approvals(self, *, timeout: float | None = None) -> Iterator[pb.Approval]:
        """Every pending approval, then each new request, decision and expiry (approver role)."""
        call = self._stub.WatchApprovals(pb.WatchApprovalsRequest(), timeout=timeout, metadata=self._metadata)
        try:
            for message in call:
                yield message.approval
        finally:
            call.cancel()

    def decide_approval(
        self, approval_id: str, *, approve: bool, reason: str = "", timeout: float | None = None
    ) -> pb.Approval:
        request = pb.DecideApprovalRequest(approval_id=approval_id, approve=approve, reason=reason)
        approval: pb.Approval = self._stub.DecideApproval(request, timeout=timeout, metadata=self._metadata).approval
        return approval

    def query_audit(
        self,
        *,
        record_id: str = "",
        session_id: str = "",
        caller: str = "",
        since: float | None = None,
        until: float | None = None,
        kinds: Iterable[str] = (),
        after_seq: int = 0,
        limit: int = 0,
        timeout: float | None = None,
    ) -> Iterator[pb.AuditRecord]:
        """Audit records oldest first; ``since`` (inclusive) and ``until`` (exclusive) are Unix times."""
        request = audit_query(record_id, session_id, caller, since, until, kinds, after_seq, limit)
        call = self._stub.QueryAudit(request, timeout=timeout, metadata=self._metadata)
        try:
            yield from call
        finally:
            call.cancel()

    def export_session(self, session_id: str, *, timeout: float | None = None) -> Iterator[str]:
        """A session's records as JSON Lines text, in chunks of whole lines (write them out in order)."""
        call = self._stub.ExportSession(
            pb.ExportSessionRequest(session_id=session_id), timeout=timeout, metadata=self._metadata
        )
        try:
            for message in call:
                yield message.lines
        finally:
            call.cancel()

    def verify_audit(self, *, timeout: float | None = None) -> pb.VerifyAuditResponse:
        response: pb.VerifyAuditResponse = self._stub.VerifyAudit(
            pb.VerifyAuditRequest(), timeout=timeout, metadata=self._metadata
        )
        return response

    def replay_session(
        self, session_id: str, *, timeout_ms: int = 0, timeout: float | None = None
    ) -> Iterator[pb.ReplayVerdict]:
        """One verdict per recorded tool call, as each is replayed in a fresh sandbox."""
        request = pb.ReplaySessionRequest(session_id=session_id, timeout_ms=timeout_ms)
        call = self._stub.ReplaySession(request, timeout=timeout, metadata=self._metadata)
        try:
            yield from call
        finally:
            call.cancel()
