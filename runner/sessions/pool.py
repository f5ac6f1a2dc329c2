"""The warm pool: per profile, fresh sandboxes booted ahead, each handed to exactly one session.

A cold open spends about a second starting a container, its agent and its server. A pooled sandbox has done all
of that before anyone asks: started (through the ``SandboxBackend`` Protocol only, so a Kubernetes backend runs
it on pods), channel up, initialize answered and checked, tools listed and their schemas compiled. It carries a
session id of its own from the start, so its container's name and labels are a session's like any other, and the
orphan sweep removes it like any other.

What the pool does *not* do is hand anything to a caller: sanitizing initialize and the tool listing, checking
pins and screening tools happen when a session claims the sandbox, with that session's sanitizer (built from the
secret values the sandbox was started with), by the manager's own code. A pooled sandbox is never returned:
claimed, it lives and dies with its session.

A pool is drained and refilled when its profile changes or a secret source reads differently now than when its
sandboxes booted; a pooled sandbox that dies while waiting is replaced, after a backoff that grows with every
failure in a row, so a broken profile does not boot in a loop. Refills boot one at a time per profile, take a
boot slot only when no open waits for one, and give it up to an open that comes to wait (``BootSlots``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import mcp_types

from runner.config import Limits, Profile, Settings
from runner.errors import RunnerError
from runner.guard.findings import FindingLog
from runner.guard.sanitize import Sanitizer
from runner.guard.validate import check_tools
from runner.sandbox.base import EgressDecision, SandboxBackend, SandboxNetwork
from runner.secret_sources import egress_rules, resolve_secrets
from runner.sessions import listing
from runner.sessions.admission import BootSlots, Preempted
from runner.sessions.egress_record import EgressRecord
from runner.sessions.models import ProgressCallback
from runner.sessions.session import LiveSession, sandbox_spec, start_agent
from runner.text import control_free, whole_words

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0
HEALTHY_AFTER_S = 60.0
WARM_MAX_AGE_S = 3600.0
"""A warm sandbox older than this is replaced (the pool drained and refilled): its lifetime backstop (a pod's
deadline on Kubernetes) counts from its boot, so waiting must not eat into the life of the session that claims it."""
"""A pooled sandbox that waited this long before dying does not count as one more failure in a row."""
_REASON_CHARS = 300


def backoff_s(failures: int) -> float:
    """The pause before the next boot after ``failures`` failures in a row: 1 s, 2 s, 4 s … up to 5 minutes."""
    return min(math.ldexp(BACKOFF_BASE_S, min(max(failures - 1, 0), 32)), BACKOFF_MAX_S)


def sandbox_inputs(profile: Profile) -> tuple[dict[str, str], SandboxNetwork | None, tuple[str, ...]]:
    """A profile's secrets and egress credentials, read now: the values, the network, and the credential values.

    Read the same way for a cold open and a pooled boot, so a claim can compare what a sandbox got with what a
    cold start would get now.
    """
    secret_values = resolve_secrets(profile.secrets)
    if profile.network is None:
        return secret_values, None, ()
    rules, credentials = egress_rules(profile.network)
    return secret_values, SandboxNetwork(rules=rules, upstream=profile.network.upstream), credentials


def session_sanitizer(profile: Profile, secret_values: Mapping[str, str], credentials: tuple[str, ...]) -> Sanitizer:
    """A session's sanitizer: the profile's settings, redacting every secret its sandbox and proxy were given."""
    return Sanitizer(replace(profile.sanitize, secrets=(*secret_values.values(), *credentials)))


@dataclass
class WarmSandbox:
    """A booted, never-used sandbox and what booting it learnt; its ``session`` is claimed as it is."""

    session: LiveSession
    secret_values: Mapping[str, str]
    network: SandboxNetwork | None
    initialize: mcp_types.InitializeResult
    """Checked as MCP, not yet sanitized: that is the claiming session's sanitizer's job."""
    listed: list[mcp_types.Tool]
    """The server's tools as listed (all pages), not yet pinned or screened; ``session.tools`` holds them compiled."""
    ready_at: float
    watcher: asyncio.Task[None] | None = None


class _ProfilePool:
    def __init__(self, profile: Profile, target: int) -> None:
        self.profile = profile
        self.target = target
        self.ready: deque[WarmSandbox] = deque()
        self.failures = 0
        """Failed boots and early deaths in a row; a claim (a healthy hand-over) starts the count again."""
        self.pause = 0.0
        """Seconds to wait before the next boot: the backoff after the last failure."""
        self.filler: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.changed = asyncio.Event()

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class WarmPool:
    """The warm sandboxes of every profile in ``Settings.pool``."""

    def __init__(
        self,
        backend: SandboxBackend,
        settings: Settings,
        slots: BootSlots,
        backoff: Callable[[int], float] = backoff_s,
        on_egress: Callable[[str, EgressDecision], None] | None = None,
    ) -> None:
        """``on_egress``: what a pooled sandbox's proxy decides before anyone claims it (session id, decision)."""
        self._on_egress = on_egress
        self._backend = backend
        self._settings = settings
        self._slots = slots
        self._backoff = backoff
        self._pools: dict[str, _ProfilePool] = {}
        self._teardowns: set[asyncio.Future[None]] = set()
        self._claims: Counter[tuple[str, str]] = Counter()

    @property
    def claims(self) -> Mapping[tuple[str, str], int]:
        """(profile, ``hit`` or ``miss``) -> opens of a pooled profile that claimed a warm sandbox or started cold."""
        return self._claims

    def start(self) -> None:
        for name, size in self._settings.pool.items():
            self._pools[name] = self._open_pool(self._settings.profiles[name], size)

    def status(self) -> dict[str, tuple[int, int]]:
        """Profile -> (ready sandboxes, target size)."""
        return {name: (len(pool.ready), pool.target) for name, pool in self._pools.items()}

    async def filled(self, profile: str) -> None:
        """Return once ``profile``'s pool holds its full size of ready sandboxes."""
        while True:
            pool = self._pools.get(profile)
            if pool is None:
                raise KeyError(f"no warm pool for profile {profile!r}")
            if len(pool.ready) >= pool.target:
                return
            await pool.changed.wait()

    def claim(
        self, profile: Profile, limits: Limits, secret_values: Mapping[str, str], network: SandboxNetwork | None
    ) -> WarmSandbox | None:
        """A ready sandbox booted exactly as a cold open of ``profile`` with ``limits`` would boot one now, or None.

        Synchronous from check to hand-over, so two concurrent claims can never take the same sandbox.
        """
        pool = self._pools.get(profile.name)
        if pool is None:
            return None
        warm = self._claim(pool, profile, limits, secret_values, network)
        self._claims[profile.name, "miss" if warm is None else "hit"] += 1
        return warm

    def _claim(
        self, pool: _ProfilePool, profile: Profile, limits: Limits, secret_values: Mapping[str, str],
        network: SandboxNetwork | None,
    ) -> WarmSandbox | None:  # fmt: skip
        if pool.profile != profile:
            log.info("profile %r changed since its warm sandboxes booted: cold start; draining and refilling its pool",
                     profile.name)
            self._replace(pool, profile)
            return None
        if limits != profile.limits:
            log.info("open of profile %r starts cold: its granted limits are not the pool's (%s)",
                     profile.name, _differences(limits, profile.limits))
            return None
        while pool.ready:
            warm = pool.ready[0]
            if warm.secret_values != secret_values or warm.network != network:
                log.info("a secret of profile %r reads differently than when its warm sandboxes booted: cold start; "
                         "draining and refilling its pool", profile.name)
                self._replace(pool, profile)
                return None
            pool.ready.popleft()
            if warm.watcher is not None:
                warm.watcher.cancel()
            pool.notify()
            pool.wake.set()
            channel = warm.session.channel
            if channel is None or channel.terminal_error is not None:
                self._discard(warm.session)  # died just now; its watcher had no turn to notice
                continue
            pool.failures = 0
            return warm
        log.info("no warm sandbox of profile %r is ready (pool size %d): cold start", profile.name, pool.target)
        return None

    def check_sources(self) -> None:
        """Drain and refill the pools whose secret sources read differently now than when their sandboxes booted.

        Called by the manager's reaper, so a rotated secret replaces warm sandboxes before anyone claims one; so
        are pools whose oldest sandbox is over ``WARM_MAX_AGE_S``.
        """
        for pool in list(self._pools.values()):
            if not pool.ready:
                continue
            warm = pool.ready[0]
            if time.monotonic() - warm.ready_at > WARM_MAX_AGE_S:
                log.info("warm sandboxes of profile %r are over %g s old: draining and refilling its pool",
                         pool.profile.name, WARM_MAX_AGE_S)
                self._replace(pool, pool.profile)
                continue
            try:
                secret_values, network, _ = sandbox_inputs(pool.profile)
            except RunnerError as exc:
                log.warning("profile %r: %s; draining its warm pool", pool.profile.name, exc.message)
                self._replace(pool, pool.profile)
                continue
            if secret_values != warm.secret_values or network != warm.network:
                log.info("a secret of profile %r changed: draining and refilling its warm pool", pool.profile.name)
                self._replace(pool, pool.profile)

    async def shutdown(self) -> None:
        """Stop refilling and destroy every pooled sandbox."""
        pools = list(self._pools.values())
        self._pools.clear()
        await asyncio.gather(*(self._drain(pool) for pool in pools))
        while self._teardowns:  # a drain under way (a changed profile) adds teardowns of its own as it goes
            await asyncio.gather(*self._teardowns, return_exceptions=True)

    # -- filling -------------------------------------------------------------------------------

    def _open_pool(self, profile: Profile, target: int) -> _ProfilePool:
        pool = _ProfilePool(profile, target)
        pool.filler = asyncio.create_task(self._fill(pool), name=f"pool-{profile.name}")
        return pool

    def _replace(self, pool: _ProfilePool, profile: Profile) -> None:
        """A new pool for ``profile`` at once; the old one is drained in the background."""
        self._pools[profile.name] = self._open_pool(profile, pool.target)
        self._hold(asyncio.ensure_future(self._drain(pool)))

    async def _drain(self, pool: _ProfilePool) -> None:
        if pool.filler is not None:
            pool.filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pool.filler
        while pool.ready:
            warm = pool.ready.popleft()
            if warm.watcher is not None:
                warm.watcher.cancel()
            self._discard(warm.session)
        pool.notify()

    async def _fill(self, pool: _ProfilePool) -> None:
        """Forever: boot one sandbox at a time until the pool is full, then wait for a claim or a death."""
        name = pool.profile.name
        while True:
            while len(pool.ready) >= pool.target:
                pool.wake.clear()
                await pool.wake.wait()
            if pool.pause:
                pause, pool.pause = pool.pause, 0.0
                await asyncio.sleep(pause)
                continue
            try:
                async with self._slots.background_slot():
                    warm = await self._boot(pool.profile)
            except Preempted:  # an open needed the slot: nothing wrong with the profile, boot again when one is free
                log.info("warm sandbox boot of profile %r gave its slot to a waiting open", name)
                continue
            except Exception as exc:  # whatever it was, the filler lives on: a pool that stops refilling is silent
                pool.failures += 1
                pool.pause = self._backoff(pool.failures)
                why = f"not ready within {self._settings.open_timeout_s:g} s" if isinstance(exc, TimeoutError) else (
                    _reason(exc))
                log.warning("warm sandbox of profile %r failed to boot (%d in a row): %s; next try in %.0f s",
                            name, pool.failures, why, pool.pause,
                            exc_info=not isinstance(exc, RunnerError | TimeoutError | OSError))
                continue
            pool.ready.append(warm)
            warm.watcher = asyncio.create_task(self._watch(pool, warm), name=f"pooled-{warm.session.id}")
            log.info("warm sandbox %s of profile %r is ready (%d/%d)", warm.session.id, name, len(pool.ready),
                     pool.target)
            pool.notify()

    async def _boot(self, profile: Profile) -> WarmSandbox:
        settings = self._settings
        secret_values, network, credentials = sandbox_inputs(profile)
        sanitizer = session_sanitizer(profile, secret_values, credentials)
        session_id = secrets.token_hex(8)
        session = LiveSession(
            id=session_id, profile=profile, caller="", labels={}, limits=profile.limits, sanitizer=sanitizer,
            egress=EgressRecord(session_id, sanitizer, self._unclaimed_egress(session_id)), start="warm",
        )
        budget = settings.open_timeout_s
        try:
            async with asyncio.timeout(budget):
                # Its lifetime covers the wait for a claim, and the reaper's turn that notices the age.
                warm_for = WARM_MAX_AGE_S + settings.reap_interval_s
                spec = sandbox_spec(session, settings, secret_values, network, budget, warm_for)
                initialize = await start_agent(self._backend, session, spec, settings.max_message_bytes)
                listed: list[mcp_types.Tool] = []
                if initialize.capabilities.tools is not None:
                    pages = await listing.pages(
                        _request, session, "tools/list", mcp_types.ListToolsResult, None, settings.max_message_bytes
                    )
                    listed = [tool for page in pages for tool in page.tools]
                    session.tools = await asyncio.to_thread(check_tools, listed)
        except BaseException as exc:
            if isinstance(exc, RunnerError) and session.handle is not None:
                # What the server said on the way down is the reason an operator needs; secrets redacted.
                tail = session.sanitizer.text(session.handle.stderr_tail(), "stderr", FindingLog()).strip()
                if tail:
                    exc.message = f"{exc.message}; stderr: {whole_words(tail[-_REASON_CHARS:], _REASON_CHARS)}"
            self._discard(session)
            raise
        return WarmSandbox(session, secret_values, network, initialize, listed, time.monotonic())

    async def _watch(self, pool: _ProfilePool, warm: WarmSandbox) -> None:
        """A pooled sandbox that dies while waiting is removed and replaced (after a backoff if it died early)."""
        assert warm.session.channel is not None
        await warm.session.channel.closed.wait()
        if warm not in pool.ready:
            return
        pool.ready.remove(warm)
        waited = time.monotonic() - warm.ready_at
        pool.failures = 1 if waited >= HEALTHY_AFTER_S else pool.failures + 1
        pool.pause = self._backoff(pool.failures)
        error = warm.session.channel.terminal_error
        log.warning("warm sandbox %s of profile %r died after waiting %.0f s (%s); replacing it in %.0f s",
                    warm.session.id, pool.profile.name, waited, _reason(error) if error else "its channel closed",
                    pool.pause)
        self._discard(warm.session)
        pool.notify()
        pool.wake.set()

    def _unclaimed_egress(self, session_id: str) -> Callable[[EgressDecision], None] | None:
        on_egress = self._on_egress
        if on_egress is None:
            return None
        return lambda decision: on_egress(session_id, decision)

    def _discard(self, session: LiveSession) -> None:
        """Tear a pooled sandbox down, held and shielded from whoever cancels the caller."""
        self._hold(asyncio.ensure_future(_tear_down(session)))

    def _hold(self, future: asyncio.Future[None]) -> None:
        self._teardowns.add(future)
        future.add_done_callback(self._teardowns.discard)


async def _tear_down(session: LiveSession) -> None:
    if session.channel is not None:
        await session.channel.aclose()
    if session.handle is not None:
        try:
            await session.handle.destroy()
        except RunnerError as exc:
            log.warning("pooled sandbox %s of profile %r could not be removed: %s", session.id, session.profile.name,
                        exc.message)


async def _request(
    session: LiveSession,
    method: str,
    params: dict[str, Any],
    timeout: float | None,
    on_progress: ProgressCallback | None,
    recorded: dict[str, Any] | None,
) -> dict[str, Any]:
    """One page of the pooled sandbox's listing, within the profile's call deadline: nobody's request yet, so
    nothing goes on record (a cold open's listing writes no intent either: it is not served for a caller)."""
    assert session.channel is not None
    async with asyncio.timeout(session.limits.call_timeout_s):
        return await session.channel.request(method, params)


def _reason(error: BaseException) -> str:
    text = error.message if isinstance(error, RunnerError) else str(error) or type(error).__name__
    return control_free(whole_words(text, _REASON_CHARS))


def _differences(granted: Limits, pooled: Limits) -> str:
    return ", ".join(
        f"{name} {getattr(granted, name)} instead of {getattr(pooled, name)}"
        for name in granted.__dataclass_fields__
        if getattr(granted, name) != getattr(pooled, name)
    )
