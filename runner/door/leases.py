"""Which sandbox serves a door request: one per stateful MCP session, one per (caller, profile) lease otherwise.

A 2025-era client negotiates a session (``initialize``, ``Mcp-Session-Id``): the door opens one sandbox for it
and closes it on DELETE, after ``session_idle_timeout_s`` with no request in flight, or at service stop
(``DoorSessions``). A 2026-07-28 client has no session: its requests go to the sandbox leased to the
authenticated caller for that profile, opened at its first request, shared by that caller's concurrent requests
and never by another caller's, and closed after ``lease_idle_timeout_s`` unused (``Leases``; a call held for the
client's answers between its requests is a use). A sandbox that ended under a binding (its own idle or lifetime
limit, a crash) ends the binding too: a session then answers 404 (the client starts a new one), a lease is opened
afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types

from runner.door.approvals import PendingApprovals
from runner.door.calls import DOOR, DoorManager
from runner.errors import RunnerError
from runner.sessions.models import STATELESS_PROTOCOL, OpenedSession, SessionState

log = logging.getLogger(__name__)


@dataclass
class Binding:
    """A sandbox session as the door holds it for its caller, and what the door remembers about it."""

    caller: str
    profile: str
    opened: OpenedSession
    door: str = DOOR
    """The MCP door its session's records name (``runner.door.http.claimed_door``)."""
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    pending_approvals: PendingApprovals = field(default_factory=PendingApprovals)
    """The calls waiting for an approval: the same call again claims it."""
    running: dict[str, anyio.CancelScope] = field(default_factory=dict)
    """A stateful session's JSON-RPC request id -> the scope of its handler, cancelled when its client leaves
    mid-call (the SDK cancels a stateless request itself)."""
    tool_schemas: Mapping[str, Mapping[str, Any]] = field(init=False)
    """Tool name -> input schema, from this sandbox's last listing: what its 2026-07-28 requests' ``Mcp-Param-*``
    headers are checked against (``runner.door.handlers``). Replaced by each listing, never merged: a listing is
    the server's word for this binding alone."""
    held: set[str] = field(default_factory=set)
    """Calls the door holds running between a client's requests (``runner.door.translate``): the lease is in use."""
    ending: str = ""
    """Why the session is ending under requests in flight (a DELETE): said to each one left unanswered."""

    def __post_init__(self) -> None:
        self.remember(self.opened.tools)

    def remember(self, tools: Iterable[mcp_types.Tool]) -> None:
        self.tool_schemas = {tool.name: tool.input_schema for tool in tools}

    @property
    def session_id(self) -> str:
        return self.opened.info.session_id

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self.last_used = time.monotonic()

    def idle(self, now: float, limit: float) -> bool:
        return self.in_flight == 0 and not self.held and now - self.last_used > limit


def _alive(manager: DoorManager, binding: Binding) -> bool:
    try:
        return manager.get(binding.session_id, caller=binding.caller).state is SessionState.READY
    except RunnerError:
        return False


async def close_binding(manager: DoorManager, binding: Binding, why: str) -> None:
    """Closes the binding's sandbox, never raising: a sandbox already ended has nothing left to close, and any other
    failure is logged, since whoever closes is itself ending (a reap, a stop, a refused initialize) and must go on."""
    log.info("closing door sandbox %s of %r (%s): %s", binding.session_id, binding.caller, binding.profile, why)
    try:
        await manager.close(binding.session_id, caller=binding.caller)
    except RunnerError as exc:  # already ended (reaped, crashed): nothing left to close
        log.debug("door sandbox %s was already gone: %s", binding.session_id, exc.message)
    except Exception:
        log.exception("closing door sandbox %s failed", binding.session_id)


class DoorSessions:
    """Stateful MCP sessions by ``Mcp-Session-Id``; another caller's id is as unknown as a made-up one."""

    def __init__(self, manager: DoorManager, idle_timeout_s: float) -> None:
        self._manager = manager
        self._idle_timeout_s = idle_timeout_s
        self._by_id: dict[str, Binding] = {}

    def add(self, mcp_session_id: str, binding: Binding) -> None:
        self._by_id[mcp_session_id] = binding

    def find(self, mcp_session_id: str, caller: str) -> Binding | None:
        binding = self._by_id.get(mcp_session_id)
        if binding is None or binding.caller != caller:
            return None
        if not _alive(self._manager, binding):
            del self._by_id[mcp_session_id]
            return None
        return binding

    async def end(self, mcp_session_id: str, why: str) -> None:
        binding = self._by_id.pop(mcp_session_id, None)
        if binding is not None:
            await close_binding(self._manager, binding, why)

    async def reap(self, now: float) -> None:
        """Unbinds the idle sessions at once, then closes their sandboxes: one left bound until its close ran (a
        later turn of the loop) could be found by a new request and closed under it."""
        limit = self._idle_timeout_s
        due = [key for key, binding in self._by_id.items() if binding.idle(now, limit)]
        ended = [self._by_id.pop(key) for key in due]
        await asyncio.gather(*(close_binding(self._manager, b, f"idle for more than {limit:g} s") for b in ended))

    def ending(self, why: str) -> None:
        """Every session is about to end: ``why`` is said to each request its end leaves unanswered."""
        for binding in self._by_id.values():
            binding.ending = why

    async def close_all(self) -> None:
        await asyncio.gather(*(self.end(key, "the service is stopping") for key in list(self._by_id)))

    def __len__(self) -> int:
        return len(self._by_id)


class Leases:
    """Stateless-era sandboxes, one per (caller, profile), opened at first use and reaped when idle."""

    def __init__(self, manager: DoorManager, idle_timeout_s: float) -> None:
        self._manager = manager
        self._idle_timeout_s = idle_timeout_s
        self._leases: dict[tuple[str, str], Binding] = {}
        self._opening: dict[tuple[str, str], _Opening] = {}
        """The opens under way, so a caller's first requests side by side share one; gone once none waits."""

    def find(self, caller: str, profile: str) -> Binding | None:
        """The caller's lease as it stands, opening nothing."""
        return self._leases.get((caller, profile))

    async def acquire(self, caller: str, profile: str) -> Binding:
        """The caller's lease, opened if it has none alive. Mark it busy before any await: a reap could end it."""
        key = (caller, profile)
        opening = self._opening.setdefault(key, _Opening())
        opening.users += 1
        try:
            async with opening.lock:
                binding = self._leases.get(key)
                if binding is not None and _alive(self._manager, binding):
                    return binding
                opened = await self._manager.open(profile, caller=caller, door=DOOR, protocol=STATELESS_PROTOCOL)
                binding = Binding(caller=caller, profile=profile, opened=opened)
                self._leases[key] = binding
                log.info("leased sandbox %s to %r for profile %r", binding.session_id, caller, profile)
                return binding
        finally:
            opening.users -= 1
            if opening.users == 0:
                del self._opening[key]

    async def reap(self, now: float) -> None:
        limit = self._idle_timeout_s
        due = [key for key, binding in self._leases.items() if binding.idle(now, limit)]
        ended = [self._leases.pop(key) for key in due]
        await asyncio.gather(
            *(close_binding(self._manager, b, f"lease unused for more than {limit:g} s") for b in ended)
        )

    async def close_all(self) -> None:
        ended = list(self._leases.values())
        self._leases.clear()
        await asyncio.gather(*(close_binding(self._manager, b, "the service is stopping") for b in ended))

    def __len__(self) -> int:
        return len(self._leases)


@dataclass
class _Opening:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
