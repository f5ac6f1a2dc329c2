"""The ending of a session: explaining a dead channel, concluding it, tearing the sandbox down.

Apart from the manager because ending is one responsibility reached from everywhere (a close, a reap, a
quarantine, a timeout the server did not survive, a sandbox dying between calls) and must happen once: the
state set, the gate told, the watcher stopped, the sandbox destroyed and the session.close record made durable,
with teardowns held and shielded so a caller giving up cannot leave a sandbox running.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

from runner.audit import records
from runner.errors import DeadlineExceeded, OutOfMemory, RunnerError, SandboxCrashed, SessionClosed
from runner.guard.findings import FindingLog
from runner.sandbox.base import SandboxHandle
from runner.sessions import outflow
from runner.sessions.gate import Gate
from runner.sessions.journal import Journal, durable, error_json
from runner.sessions.models import SessionState
from runner.sessions.session import LiveSession, session_info

PING_AFTER_TIMEOUT_S = 3.0
EXIT_WAIT_S = 3.0


class Ending:
    """Ends sessions for the manager; holds their teardowns so none is lost to a cancelled caller."""

    def __init__(self, journal: Journal, gate: Gate) -> None:
        self._journal = journal
        self._gate = gate
        self.teardowns: set[asyncio.Future[None]] = set()

    async def after_timeout(self, session: LiveSession, method: str, budget: float) -> DeadlineExceeded:
        """A call ran out of time: the session is either still answering, or it is ended now."""
        what = f"{method} did not finish within {budget:.3g} s"
        assert session.channel is not None
        try:
            # The ping reaches the server too: its intent goes on record first, like every request's.
            await self._journal.sending("ping", {})
            async with asyncio.timeout(PING_AFTER_TIMEOUT_S):
                await session.channel.request("ping", {})
        except (TimeoutError, RunnerError):
            await self.end(session, SessionState.FAILED, f"{what} and the server stopped answering")
            return DeadlineExceeded(f"{what}; the server stopped answering, so session {session.id} was ended")
        return DeadlineExceeded(f"{what}; the call was cancelled and session {session.id} is still usable")

    async def explain(self, session: LiveSession, error: RunnerError) -> RunnerError:
        """Turn a dead channel into the reason a person can act on, once, with the sandbox gone after it."""
        if session.handle is None or session.channel is None or session.channel.terminal_error is None:
            return error
        if session.concluding is None and session.state in (SessionState.CLOSED, SessionState.FAILED):
            # The runner ended it (closed, quarantined, reaped) and its teardown closed the channel under this
            # call: that is the reason, not a sandbox that exited (with the 137 of the runner's own kill).
            if session.failure is None:
                return SessionClosed(f"session {session.id} was closed while this request ran")
            return SessionClosed(f"session {session.id} ended while this request ran: {session.failure}")
        if session.concluding is None:
            session.concluding = asyncio.create_task(self._conclude(session, session.handle, error))
        # Shielded: a caller giving up must not abort the teardown other callers wait for.
        return await asyncio.shield(session.concluding)

    async def _conclude(self, session: LiveSession, handle: SandboxHandle, error: RunnerError) -> RunnerError:
        ending = await handle.wait_exit(EXIT_WAIT_S)
        outflow.sanitize_message(session, error)  # it may quote what the sandbox wrote, secrets and all
        explained: RunnerError
        if ending.oom_killed:
            mib = session.limits.memory_bytes // 1024**2
            explained = OutOfMemory(f"session {session.id} was killed for exceeding its memory limit of {mib} MiB")
        elif isinstance(error, SandboxCrashed):
            said = ([f"exit status {ending.exit_code}"] if ending.exit_code is not None else []) + (
                [ending.reason] if ending.reason else [])  # the backend's why, e.g. its pod deleted from outside
            status = f" ({'; '.join(said)})" if said else ""
            # The server's stderr may echo a secret of the session: the sanitizer redacts it like any output.
            tail = session.sanitizer.text(handle.stderr_tail(), "stderr", FindingLog())
            hint = session.egress.hint()
            explained = SandboxCrashed(f"session {session.id} ended: {error.message}{status}{hint}", tail)
        else:
            explained = type(error)(f"session {session.id} was ended: {error.message}")
        self._journal.note(records.EXIT, session.id, session.caller, {
            "oom_killed": ending.oom_killed, "exit_code": ending.exit_code, "error": error_json(explained),
        })  # fmt: skip
        await self.end(session, SessionState.FAILED, explained.message)
        return explained

    async def watch(self, session: LiveSession) -> None:
        """Notice a sandbox dying between calls, so the next caller hears why."""
        assert session.channel is not None
        await session.channel.closed.wait()
        if session.state is SessionState.READY and session.channel.terminal_error is not None:
            await self.explain(session, session.channel.terminal_error)

    async def end(self, session: LiveSession, state: SessionState, reason: str | None) -> None:
        if session.state in (SessionState.CLOSED, SessionState.FAILED):
            return
        session.state = state
        session.failure = reason
        session.ended = time.monotonic()
        self._gate.forget(session.id)
        if session.watcher is not None and session.watcher is not asyncio.current_task():
            session.watcher.cancel()
        # Held and shielded: a caller cancelled halfway (its deadline, then the RPC's own) must not leave the
        # sandbox running with the session already marked ended.
        teardown = asyncio.ensure_future(self._tear_down(session))
        self.teardowns.add(teardown)
        teardown.add_done_callback(self.teardowns.discard)
        await asyncio.shield(teardown)

    async def discard(self, session: LiveSession) -> None:
        """Tear down what an open booted after its session was ended under it (the service shut down while the
        sandbox started, before there was a handle to destroy): held and shielded like any teardown; a session whose
        open record was already written gets its close record too."""
        teardown = asyncio.ensure_future(self._discard(session))
        self.teardowns.add(teardown)
        teardown.add_done_callback(self.teardowns.discard)
        await asyncio.shield(teardown)

    async def _discard(self, session: LiveSession) -> None:
        if session.channel is not None:
            await session.channel.aclose()
        if session.handle is not None:
            await session.handle.destroy()  # idempotent: a sandbox the first teardown removed stays removed
        if session.announced:
            await durable(self._journal, records.SESSION_CLOSE, session.id, session.caller, {
                "state": session.state.value, "reason": session.failure,
                "usage": asdict(session_info(session).usage), "profile": session.profile.name,
            })  # fmt: skip

    async def _tear_down(self, session: LiveSession) -> None:
        if session.handle is not None:
            session.stats = await session.handle.stats()
        if session.channel is not None:
            await session.channel.aclose()
        if session.handle is not None:
            await session.handle.destroy()
        if not session.announced:
            return  # a failed open: its session.open record says how it ended
        await durable(self._journal, records.SESSION_CLOSE, session.id, session.caller, {
            "state": session.state.value, "reason": session.failure, "usage": asdict(session_info(session).usage),
            "profile": session.profile.name,
        })  # fmt: skip
