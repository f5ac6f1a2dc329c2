"""SessionManager: opens, serves, reaps and closes sessions; one sandbox each.

It sits between the API (which it never sees as protobuf) and the sandbox
backend (which it never sees as Docker). Every request goes through
``_request``, which applies the call deadline and turns a dead channel into the
one explanation a caller can act on: killed for memory, crashed with its
stderr tail, or broke the protocol. A fault ends only its own session.

Around each request the ``Gate`` decides (policy, limits, rates, approvals,
pins, quarantine), each session's ``Sanitizer`` cleans every text that came
out of its sandbox, and the ``Journal`` records it all in the audit log (the
answer's record durable before the answer is returned); the manager only puts
them in order.

An open is admitted the same way whether it starts warm or cold (policy,
quotas, labels), then takes a pooled sandbox booted exactly as its own would be
(``pool.py``), or boots one when a slot is free (``admission.py``). What the
caller and the audit log see is made at that moment either way: sanitized by
the session's own sanitizer, pins checked, tools screened; only the
session.open record's ``start`` tells them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import replace
from typing import Any

import mcp_types

from runner.approvals import Approval
from runner.audit import records
from runner.audit.records import capped
from runner.config import Limits, Profile, Settings
from runner.errors import (
    DeadlineExceeded,
    InvalidArgument,
    QuotaExceeded,
    RunnerError,
    Unavailable,
)
from runner.guard import results
from runner.guard.memory import GuardMemory
from runner.observe import tracing
from runner.observe.tracing import OFF, Tracing
from runner.policy import PolicyStore, ToolDecision
from runner.sandbox.base import SandboxBackend, SandboxNetwork
from runner.sessions import outflow
from runner.sessions.admission import BootSlots
from runner.sessions.catalog import Catalog
from runner.sessions.egress_record import EgressRecord
from runner.sessions.ending import Ending
from runner.sessions.gate import Gate
from runner.sessions.inbox import Inbox
from runner.sessions.journal import Journal, error_json
from runner.sessions.models import (
    DEFAULT_PROTOCOL,
    DOORS,
    PROTOCOLS,
    LimitsRequest,
    OpenedSession,
    ServerInfo,
    SessionInfo,
    SessionState,
)
from runner.sessions.opening import open_record
from runner.sessions.operations import Operations
from runner.sessions.pool import WarmPool, WarmSandbox, sandbox_inputs, session_sanitizer
from runner.sessions.session import LiveSession, check_labels, sandbox_spec, session_info, start_agent
from runner.text import control_free, whole_words

log = logging.getLogger(__name__)

CLOSED_RETENTION_S = 600.0
SHUTTING_DOWN = "the service is shutting down"


class SessionManager(Operations):
    def __init__(
        self,
        backend: SandboxBackend,
        settings: Settings,
        policy: PolicyStore | None = None,
        journal: Journal | None = None,
        memory: GuardMemory | None = None,
        tracing: Tracing = OFF,
    ) -> None:
        self._backend = backend
        self._tracing = tracing
        self._settings = settings
        self._journal = journal or Journal(None)
        self._sessions: dict[str, LiveSession] = {}
        self._gate = Gate(policy or PolicyStore(None), settings, on_approval=self._approval_changed, memory=memory)
        self._reaper: asyncio.Task[None] | None = None
        self._ending = Ending(self._journal, self._gate)
        self._slots = BootSlots(settings.max_concurrent_boots)
        self._closing = False
        self._opens: set[asyncio.Future[None]] = set()
        """One per open past admission, done when it returns or raises: ``shutdown`` waits for them."""
        # Before a claim there is no caller: what a pooled sandbox's proxy decides is recorded under its id alone.
        self.pool = WarmPool(
            backend, settings, self._slots, on_egress=lambda session_id, d: self._journal.egress(session_id, "", d)
        )
        """Warm sandboxes per profile (``Settings.pool``): ``status()``, ``filled(profile)``."""

    @property
    def admission(self) -> BootSlots:
        """Boot slots and the queue of opens waiting for one: ``status()``."""
        return self._slots

    # -- lifecycle of the manager ------------------------------------------------------------

    async def start(self) -> int:
        """Check the backend, remove this instance's orphans, start reaping; returns orphans removed."""
        await self._backend.check()
        removed = await self._backend.sweep_orphans(self._settings.instance)
        self._gate.expire_orphaned_approvals()  # their sessions were the orphans' (recorded: on_approval)
        self._reaper = asyncio.create_task(self._reap_forever(), name="session-reaper")
        self.pool.start()  # after the sweep: it must not take the pool's new sandboxes for orphans
        return removed

    async def shutdown(self) -> None:
        """Refuse new opens, empty the pools, end every session, and wait for the opens under way to finish.

        A session still starting is ended like a live one; its open notices (``_ended_under``) and removes what its
        boot made after that, so no sandbox outlives the shutdown, and none is resurrected as READY.
        """
        self._closing = True
        self._slots.close(SHUTTING_DOWN)
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self.pool.shutdown()
        live = [s for s in self._sessions.values() if s.state in (SessionState.STARTING, SessionState.READY)]
        await asyncio.gather(*(self._ending.end(s, SessionState.CLOSED, "the service shut down") for s in live))
        while self._opens:
            await asyncio.gather(*self._opens)

    # -- open / close / inspect ---------------------------------------------------------------

    async def open(
        self,
        profile: str,
        *,
        caller: str,
        labels: Mapping[str, str] | None = None,
        limits: LimitsRequest | None = None,
        timeout: float | None = None,
        image: str | None = None,
        door: str = "grpc",
        protocol: str = DEFAULT_PROTOCOL,
    ) -> OpenedSession:
        """Admit, then claim a warm sandbox or boot one; ``image`` (a digest) replaces the profile's for a replay.

        ``timeout`` is the caller's deadline for all of it (``open_queue_timeout_s`` without one): a wait for a boot
        slot, then the boot itself within what is left of it, and never longer than ``open_timeout_s``.
        ``door`` names how the caller came (its records say so); ``protocol`` is the era the sandbox's agent is to
        speak with the server (``models.PROTOCOLS``): only the default era's opens claim warm sandboxes, which
        were booted speaking it.
        """
        with self._tracing.open(profile, door, protocol, known=profile in self._settings.profiles):
            deadline = time.monotonic() + (timeout if timeout is not None else self._settings.open_queue_timeout_s)
            admitted = False
            try:
                if door not in DOORS or protocol not in PROTOCOLS:
                    raise InvalidArgument(
                        f"an open names door {door!r} and protocol {protocol!r}; known: doors {', '.join(DOORS)}, "
                        f"protocols {', '.join(PROTOCOLS)}"
                    )
                chosen, checked_labels, granted = self._admit(profile, caller, labels, limits)
                admitted = True
                if image is not None:
                    chosen = replace(chosen, image=image)
                secret_values, network, credentials = sandbox_inputs(chosen)
            except RunnerError as exc:
                if admitted:  # the policy allowed it; a secret could not be read
                    self._journal.policy("", caller, "open", "allow", self._gate.policy.label, profile=profile)
                self._refusing(caller, "open")  # past the caller's refusal rate: neither recorded nor logged
                log.warning("open of profile %r by caller %r refused: %s", whole_words(profile, 100), caller,
                            control_free(exc.message))
                self._journal.refusal(caller, profile, exc)
                await self._journal.durable_or_raise(records.SESSION_OPEN, "", caller, {
                    "profile": capped(profile), "outcome": "refused", "error": error_json(exc),
                })  # fmt: skip
                raise
            # A replay names its image: only a cold start runs exactly that one.
            default_era = protocol == DEFAULT_PROTOCOL
            warm = self.pool.claim(chosen, granted, secret_values, network) if image is None and default_era else None
            if warm is not None:
                session = warm.session
                session.caller = caller
                session.labels = checked_labels
                session.limits = granted
                session.created_at, session.started = time.time(), time.monotonic()
                session.last_used = session.started
                session.egress.bind(lambda d: self._journal.egress(session.id, caller, d))
            else:
                session_id = secrets.token_hex(8)
                sanitizer = session_sanitizer(chosen, secret_values, credentials)
                session = LiveSession(
                    id=session_id,
                    profile=chosen,
                    caller=caller,
                    labels=checked_labels,
                    limits=granted,
                    sanitizer=sanitizer,
                    egress=EgressRecord(session_id, sanitizer, lambda d: self._journal.egress(session_id, caller, d)),
                    protocol=protocol,
                )
            session.door = door
            self._journal.policy(session.id, caller, "open", "allow", self._gate.policy.label, profile=profile)
            self._sessions[session.id] = session
            tracing.annotate({"mcp.session.id": session.id, "mcp_runner.start": "warm" if warm else "cold"})
            opening: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._opens.add(opening)
            try:
                return await self._start(session, warm, deadline, secret_values, network)
            finally:
                opening.set_result(None)
                self._opens.discard(opening)

    async def _start(
        self,
        session: LiveSession,
        warm: WarmSandbox | None,
        deadline: float,
        secret_values: Mapping[str, str],
        network: SandboxNetwork | None,
    ) -> OpenedSession:
        """An admitted open from its claim or boot to its durable session.open record: READY, or ended and said why."""
        profile, caller = session.profile.name, session.caller
        budget = 0.0
        try:
            if warm is not None:
                budget = self._boot_budget(deadline)
                async with asyncio.timeout(budget):
                    with tracing.step("pool claim"):
                        await self._hand_over(session, warm)
            else:
                async with self._slots.open_slot(deadline, f"open of profile {profile!r} by caller {caller!r}"):
                    budget = self._boot_budget(deadline)
                    async with asyncio.timeout(budget):
                        await self._boot(session, secret_values, network, budget)
        except TimeoutError:
            reason = f"did not start within {budget:.1f} s"
            log.warning("open of profile %r by caller %r failed: %s", profile, caller, reason)
            await self._fail_open(session, reason)
            late = DeadlineExceeded(f"opening a session on profile {profile!r} took longer than {budget:.1f} s")
            await self._announce(session, late)
            raise late from None
        except RunnerError as exc:
            error = await self._ending.explain(session, exc)
            outflow.sanitize_message(session, error)
            log.warning("open of profile %r by caller %r failed: %s", profile, caller, control_free(error.message))
            await self._fail_open(session, error.message)
            await self._announce(session, error)
            raise error from exc
        except BaseException:
            # The caller left (its deadline, a cancel) while its sandbox started: on record all the same, queued
            # since nothing waits for it, and closed by the session.close record that follows.
            log.warning("open of profile %r by caller %r failed: the caller left while it started", profile, caller)
            abandoned = open_record(session, "abandoned")
            self._journal.note(records.SESSION_OPEN, session.id, session.caller, abandoned)
            session.announced = True
            await self._fail_open(session, "opening was cancelled")
            raise
        if session.state is not SessionState.STARTING:
            ended = self._ended_under(session)
            await self._ending.discard(session)
            await self._announce(session, ended)
            raise ended
        try:
            await self._announce(session, None)
        except RunnerError as exc:
            await self._fail_open(session, exc.message)
            raise
        except BaseException:
            # The caller left while the record was being made durable: the writer records it all the same, but
            # nobody holds the session's id, so it ends now (it stayed STARTING for ever, its sandbox running).
            session.announced = True
            await self._fail_open(session, "opening was cancelled")
            raise
        session.announced = True
        if session.state is not SessionState.STARTING:  # ended while its record was written: closed on record too
            await self._ending.discard(session)
            raise self._ended_under(session)
        # Its clocks (age, idle, lifetime) start as it is handed over, warm or cold alike: a cold one's wait for a
        # boot slot (minutes under load) is no idleness of the caller's, nor part of the lifetime it was granted.
        session.started = session.last_used = time.monotonic()
        session.state = SessionState.READY
        with tracing.untraced():
            session.watcher = asyncio.create_task(self._ending.watch(session), name=f"watch-{session.id}")
        assert session.server is not None
        return OpenedSession(
            info=session_info(session),
            server=session.server,
            tools=session.listing.tools,
            findings=session.instructions_findings + session.listing.findings,
            protocol=session.protocol,
            capabilities=session.capabilities or mcp_types.ServerCapabilities(),
        )

    async def _fail_open(self, session: LiveSession, reason: str) -> None:
        """End a session whose open failed; one ended under its open (a shutdown) loses what its boot made since."""
        if session.state is SessionState.STARTING:
            await self._ending.end(session, SessionState.FAILED, reason)
        else:
            await self._ending.discard(session)

    @staticmethod
    def _ended_under(session: LiveSession) -> RunnerError:
        """What an open says when its session was ended while it started (only a shutdown ends a STARTING one)."""
        return Unavailable(f"session {session.id} was ended while it opened: {session.failure or 'closed'}")

    def _admit(
        self, profile: str, caller: str, labels: Mapping[str, str] | None, limits: LimitsRequest | None
    ) -> tuple[Profile, Mapping[str, str], Limits]:
        """Policy, quotas and labels: the same for a warm claim as for a cold start; raises if refused."""
        if self._closing:
            raise Unavailable(SHUTTING_DOWN)
        chosen = self._settings.profiles.get(profile)
        if chosen is None:
            raise self.catalog().unknown_profile(profile, caller)
        checked_labels = check_labels(labels or {})
        live = [s for s in self._sessions.values() if s.state in (SessionState.STARTING, SessionState.READY)]
        if len(live) >= self._settings.max_sessions:
            raise QuotaExceeded(
                f"{len(live)} sessions are open, the service's limit is {self._settings.max_sessions}; "
                "close one or retry later"
            )
        granted = self._gate.admit_open(caller, chosen, limits, sum(s.caller == caller for s in live))
        return chosen, checked_labels, granted

    async def _announce(self, session: LiveSession, error: RunnerError | None) -> None:
        """The session.open record, durable: who opened what, in which image, with which limits and network."""
        outcome = "ok" if error is None else "error"
        # From the policy's allow (``session.started`` until it is handed over) to this record: metrics and logs.
        took_ms = round((time.monotonic() - session.started) * 1000, 3)
        await self._journal.durable_or_raise(records.SESSION_OPEN, session.id, session.caller, {
            **open_record(session, outcome), "duration_ms": took_ms,
            **({"error": error_json(error)} if error is not None else {}),
        })  # fmt: skip

    def _boot_budget(self, deadline: float) -> float:
        """What a boot may take: what is left of the open's deadline, never more than ``open_timeout_s``."""
        return max(0.0, min(deadline - time.monotonic(), self._settings.open_timeout_s))

    async def _boot(
        self, session: LiveSession, secret_values: Mapping[str, str], network: SandboxNetwork | None, budget: float
    ) -> None:
        """A cold start: the sandbox, the agent's initialize, the tool listing, all for this session."""
        spec = sandbox_spec(session, self._settings, secret_values, network, budget)
        inbox = Inbox(session, self._journal)
        with tracing.step("sandbox start", {"mcp_runner.backend": self._settings.backend}):
            initialize = await start_agent(self._backend, session, spec, self._settings.max_message_bytes, inbox)
        await self._present_initialize(session, initialize)
        if initialize.capabilities.tools is not None:
            await self._refresh_tools(session, timeout=None)

    async def _hand_over(self, session: LiveSession, warm: WarmSandbox) -> None:
        """A warm start: what the pool fetched, shown to this session as a cold start shows it.

        Sanitized with the session's sanitizer, pins checked and tools screened now, at the claim, by the same
        steps a cold start's ``_refresh_tools`` ends with (``_show_tools``); only listing the tools and compiling
        their schemas were done ahead.
        """
        assert session.channel is not None
        session.channel.set_inbound(Inbox(session, self._journal))
        await self._present_initialize(session, warm.initialize)
        if warm.initialize.capabilities.tools is not None:
            await self._show_tools(session, warm.listed)

    async def _present_initialize(self, session: LiveSession, initialize: mcp_types.InitializeResult) -> None:
        # All of it reaches the caller and the audit log: name, version and instructions are the server's words.
        clean = await outflow.sanitize(
            session, results.sanitize_initialize, initialize, "the server's initialize result"
        )
        init = clean.value
        session.instructions_findings = clean.findings
        session.server = ServerInfo(
            name=init.server_info.name,
            version=init.server_info.version,
            protocol_version=init.protocol_version,
            instructions=init.instructions,
        )
        session.capabilities = init.capabilities

    async def close(self, session_id: str, *, caller: str) -> SessionInfo:
        session = self._lookup(session_id, caller)
        if session.state in (SessionState.STARTING, SessionState.READY):
            await self._ending.end(session, SessionState.CLOSED, None)
        return session_info(session)

    def get(self, session_id: str, *, caller: str) -> SessionInfo:
        return session_info(self._lookup(session_id, caller))

    def list_sessions(self, *, caller: str) -> list[SessionInfo]:
        """The caller's own sessions; an admin sees everyone's."""
        return [session_info(s) for s in self._sessions.values() if self._gate.may_see(caller, s.caller)]

    def catalog(self) -> Catalog:
        """The profiles a caller may open and a session's stderr tail, read from this manager's state."""
        return Catalog(self._settings, self._gate, self._sessions, self._lookup)

    # -- approvals -----------------------------------------------------------------------------

    def list_approvals(self, *, caller: str, include_decided: bool = False) -> list[Approval]:
        return self._gate.list_approvals(caller, include_decided=include_decided)

    async def watch_approvals(self, *, caller: str) -> AsyncIterator[Approval]:
        """Pending approvals, then every change; ends if the caller loses the approver role on a reload."""
        self._gate.check_approver(caller)
        async for approval in self._gate.approvals.watch():
            self._gate.check_approver(caller)
            yield approval

    def decide_approval(self, approval_id: str, *, caller: str, approve: bool, reason: str) -> Approval:
        return self._gate.decide(caller, approval_id, approve=approve, reason=reason)

    def tool_decision(self, caller: str, profile: str, tool: str) -> ToolDecision:
        """What the policy says now about ``caller`` calling ``tool`` on ``profile`` (a denial is raised)."""
        return self._gate.decide_tool(caller, profile, tool)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reap_interval_s)
            # Not awaited: a teardown that hangs (Docker slow to stop one sandbox) must not hold back the next
            # round's reaping; a session being ended is no longer READY, so no round ends it twice.
            reaping = asyncio.ensure_future(self.reap())
            self._ending.teardowns.add(reaping)
            reaping.add_done_callback(self._ending.teardowns.discard)

    async def reap(self) -> None:
        """End sessions idle or alive for too long; forget long-ended ones; drain pools whose secrets changed."""
        self._gate.approvals.sweep()
        self.pool.check_sources()
        now = time.monotonic()
        due: list[Coroutine[Any, Any, None]] = []
        for session in list(self._sessions.values()):
            if session.state is SessionState.READY:
                if not session.busy and now - session.last_used > session.limits.idle_timeout_s:
                    reason = f"idle for more than {session.limits.idle_timeout_s:g} s"
                elif now - session.started > session.limits.max_lifetime_s:
                    reason = f"reached its maximum lifetime of {session.limits.max_lifetime_s:g} s"
                else:
                    continue
                log.info("reaping session %s: %s", session.id, reason)
                due.append(self._ending.end(session, SessionState.CLOSED, reason))
            elif session.ended is not None and now - session.ended > CLOSED_RETENTION_S:
                del self._sessions[session.id]
        # Side by side: one after another, a sandbox slow to tear down kept every other due session running.
        await asyncio.gather(*due)
