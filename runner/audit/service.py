"""Who may read the audit log, and how much at a time: what the API's audit RPCs call.

A caller reads its own records (those it caused); the auditor and admin roles
read everyone's and may verify the chain. Replaying a session is for its own
caller, an auditor or an admin, and then runs under the replaying caller's
current policy. Reads go to SQLite in worker threads, a page at a time, so a
long answer neither blocks the event loop nor sits in memory whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

from runner.audit.export import json_line
from runner.audit.records import AuditQuery, AuditRecord, ReplayVerdict, Verification
from runner.audit.replay import Replayer, records_missing
from runner.audit.store import AuditStore
from runner.errors import InvalidArgument, PermissionDenied
from runner.policy import ADMIN, AUDITOR, PolicyStore

PAGE = 500


class AuditService:
    def __init__(self, store: AuditStore, policy: PolicyStore, replayer: Replayer) -> None:
        self._store = store
        self._policy = policy
        self._replayer = replayer

    def _reads_all(self, caller: str) -> bool:
        policy = self._policy.current
        return policy.has_role(caller, AUDITOR) or policy.has_role(caller, ADMIN)

    def _refuse(self, caller: str, what: str) -> PermissionDenied:
        policy = self._policy.current
        return PermissionDenied(
            f"caller {caller} may {what} only with the auditor or admin role "
            f"({policy.label}: {policy.caller(caller).entry}.roles)"
        )

    async def query(self, query: AuditQuery, *, caller: str) -> AsyncIterator[AuditRecord]:
        if not self._reads_all(caller):
            if query.caller and query.caller != caller:
                raise self._refuse(caller, f"read the records of caller {query.caller}")
            query = replace(query, caller=caller)
        async for record in self._records(query):
            yield record

    async def export_session(self, session_id: str, *, caller: str) -> AsyncIterator[str]:
        await self._check_session(session_id, caller)
        async for record in self._records(AuditQuery(session_id=session_id)):
            yield json_line(record)

    async def verify(self, *, caller: str) -> Verification:
        if not self._reads_all(caller):
            raise self._refuse(caller, "verify the audit log")
        return await asyncio.to_thread(self._store.verify)

    async def replay(self, session_id: str, *, caller: str, timeout: float | None) -> AsyncIterator[ReplayVerdict]:
        await self._check_session(session_id, caller)
        recorded = await self._replayer.recorded(session_id)
        async for verdict in self._replayer.replay(session_id, recorded, caller=caller, timeout=timeout):
            yield verdict

    async def _check_session(self, session_id: str, caller: str) -> None:
        """The session has records, and ``caller`` may see them (its own, or the auditor or admin role)."""
        if not session_id:
            raise InvalidArgument("a session id is required (an empty one would select every session's records)")
        first = await asyncio.to_thread(self._store.query, AuditQuery(session_id=session_id, limit=1))
        if not first:
            raise records_missing(session_id)
        if first[0].caller != caller and not self._reads_all(caller):
            raise self._refuse(caller, f"read session {session_id} of another caller")

    async def _records(self, query: AuditQuery) -> AsyncIterator[AuditRecord]:
        pages = self._store.pages(query, PAGE)
        while (page := await asyncio.to_thread(next, pages, None)) is not None:
            for record in page:
                yield record
