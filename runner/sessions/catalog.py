"""What a caller may learn without a request to a server: the profiles it may open, and a session's stderr tail.

Apart from the manager, which hands it its state (``SessionManager.catalog``), because neither answer reaches a
sandbox: both are read from what the manager already holds, so they cost no request and no record. Each is one of
the caller's calls (its call rate and concurrency), as a tool call is: sanitizing a stderr tail costs milliseconds,
and a caller asking in a loop must not buy them without limit. The sanitizing runs off the event loop.

Tools of a profile are known only from a session the caller may see (its own; an admin's: anyone's), as that
session was last shown them: a server's listing can change with what its caller did, so one caller's session
never tells another what it listed. A pooled sandbox's listing is not used either: it is sanitized and screened
only when a session claims it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import mcp_types

from runner.config import Settings
from runner.errors import ProfileNotFound
from runner.guard.findings import Finding, FindingLog
from runner.sessions.egress_record import describe_network
from runner.sessions.gate import Gate
from runner.sessions.models import SessionInfo
from runner.sessions.session import LiveSession, session_info


@dataclass(frozen=True)
class ProfileEntry:
    name: str
    description: str
    image: str
    network: str
    """``none``, or the egress rules of the profile's proxy (as ``SessionInfo.network``)."""
    runtime: str
    tools: tuple[mcp_types.Tool, ...] | None
    """None: unknown until the caller opens a session of the profile."""
    tools_session_id: str = ""


@dataclass(frozen=True)
class SessionLogs:
    info: SessionInfo
    stderr_tail: str
    """Sanitized by the session's own sanitizer: secrets redacted, invisible text stripped."""
    findings: tuple[Finding, ...] = ()


class Catalog:
    def __init__(
        self,
        settings: Settings,
        gate: Gate,
        sessions: Mapping[str, LiveSession],
        lookup: Callable[[str, str], LiveSession],
    ) -> None:
        self._settings = settings
        self._gate = gate
        self._sessions = sessions
        self._lookup = lookup
        """The manager's: the session, or NOT_FOUND / PERMISSION_DENIED (another caller's)."""

    def profiles(self, caller: str, only: str = "") -> list[ProfileEntry]:
        """The profiles ``caller`` may open now, by name; with ``only``, that one.

        A name the caller may not open is refused exactly as a name no profile has (NOT_FOUND, listing what the
        caller may open): a different answer would tell a caller which names other tenants' profiles have."""
        with self._gate.request_slot(caller):
            return self._profiles(caller, only)

    def _profiles(self, caller: str, only: str) -> list[ProfileEntry]:
        policy = self._gate.policy
        if only and (only not in self._settings.profiles or not policy.may_open(caller, only)):
            raise self.unknown_profile(only, caller)
        entries = []
        for name in [only] if only else sorted(self._settings.profiles):
            if not policy.may_open(caller, name):
                continue
            profile = self._settings.profiles[name]
            shown = self._latest_listing(caller, name)
            tools = None if shown is None else self._allowed(caller, name, shown.listing.tools)
            entries.append(ProfileEntry(
                name=name, description=profile.description, image=profile.image, network=describe_network(profile),
                runtime=profile.runtime, tools=tools, tools_session_id="" if shown is None else shown.id,
            ))  # fmt: skip
        return entries

    def unknown_profile(self, name: str, caller: str) -> ProfileNotFound:
        """NOT_FOUND for ``name``, naming only the profiles ``caller`` may open: the others are other tenants'."""
        policy = self._gate.policy
        openable = [p for p in sorted(self._settings.profiles) if policy.may_open(caller, p)]
        return ProfileNotFound(f"no profile named {name!r} (profiles you may open: {', '.join(openable) or 'none'})")

    async def logs(self, session_id: str, caller: str) -> SessionLogs:
        session = self._lookup(session_id, caller)
        with self._gate.request_slot(caller):
            if session.handle is None:  # never started: nothing was written
                return SessionLogs(session_info(session), "")
            found = FindingLog()
            raw = session.handle.stderr_tail()
            tail = await asyncio.to_thread(session.sanitizer.text, raw, "stderr", found)
            return SessionLogs(session_info(session), tail, tuple(found.findings()))

    def _latest_listing(self, caller: str, profile: str) -> LiveSession | None:
        """The most recently opened session of ``profile`` that ``caller`` may see and whose tools were listed."""
        seen = [
            s for s in self._sessions.values()
            if s.profile.name == profile and s.server is not None and self._gate.may_see(caller, s.caller)
        ]  # fmt: skip
        return max(seen, key=lambda s: s.created_at, default=None)

    def _allowed(self, caller: str, profile: str, tools: tuple[mcp_types.Tool, ...]) -> tuple[mcp_types.Tool, ...]:
        """The tools the policy lets ``caller`` call (outright or with an approval)."""
        policy = self._gate.policy
        return tuple(t for t in tools if policy.tool_decision(caller, profile, t.name).verdict != "deny")
