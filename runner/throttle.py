"""Rate and concurrency limits per caller and per session, and the anomaly rule that quarantines a session.

Pure bookkeeping with an injectable clock, so tests drive time by hand and the
event loop never waits on it: a limit answers at once with ``RateLimited`` and
the time after which trying again can succeed, instead of queueing the call.
Messages name the limit and the policy entry that set it, so the caller (or
their operator) knows which line of the policy to raise.

With a ``GuardMemory`` a caller's buckets outlive the process: each change is
saved in wall-clock terms (tokens at a Unix time), and the first use after a
restart continues from the saved tokens, refilled for the wall time since, so
a restart does not hand a caller a fresh burst (of calls, opens or refused
requests). A clock that went back refills nothing. Session buckets and anomaly
windows are not saved: their sessions end with the process (see
``runner.guard.memory``).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from runner.errors import QuotaExceeded, RateLimited
from runner.guard.memory import GuardMemory, SavedBucket
from runner.policy import Rates

CONCURRENCY_RETRY_S = 0.1
"""Retry hint when every concurrency slot is busy. When a slot frees is unknowable, but most calls take
milliseconds (call_tool p50 is about 1 ms in a sandbox), so a slot is usually free well within 0.1 s; a
longer hint would leave callers idle, and a refusal costs the runner almost nothing to answer again."""

_SLACK_S = 1e-6
"""Added to every wait, so that float rounding (worse with large monotonic clock values and high rates) never
leaves a caller who retries exactly ``retry_after_s`` later a hair short of the token it was promised."""

DENIED = "denied"
BLOCKED = "blocked"
INVALID = "invalid"
CALLS = "calls"
SESSIONS = "sessions"
REFUSALS = "refusals"


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate_per_s``; one call (or one open) costs one token."""

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, not {rate_per_s}/{burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def peek(self, now: float) -> float:
        """0.0 if a token is available now, else seconds until one is; takes nothing."""
        if now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate_per_s)
            self._last = now
        if self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s + _SLACK_S

    def take(self, now: float) -> float:
        """0.0 if a token was taken, else seconds until one is available (nothing taken)."""
        wait = self.peek(now)
        if wait == 0.0:
            self._tokens = max(0.0, self._tokens - 1.0)
        return wait

    def saved(self, wall_now: float) -> SavedBucket:
        """The bucket as of its last peek or take, dated ``wall_now`` (call right after one of them)."""
        return SavedBucket(self.rate_per_s, self.burst, self._tokens, wall_now)

    def resume(self, saved: SavedBucket, now: float, wall_now: float) -> None:
        """Continue from ``saved`` (if built for the same rate and burst), refilled for the wall time since."""
        if (saved.rate_per_s, saved.burst) != (self.rate_per_s, self.burst):
            return  # the policy changed while the service was down: a new limit starts full, as on a reload
        self._tokens = min(float(self.burst), max(0.0, saved.tokens))
        self._last = now - max(0.0, wall_now - saved.at)


@dataclass
class _Limiter:
    """The buckets built from one ``Rates``, and the calls in flight (which survive a rebuild)."""

    rates: Rates
    calls: TokenBucket | None
    sessions: TokenBucket | None
    active: int = 0


def _buckets(rates: Rates, now: float) -> tuple[TokenBucket | None, TokenBucket | None]:
    calls = TokenBucket(rates.calls_per_s, rates.effective_call_burst, now) if rates.calls_per_s else None
    sessions = None
    if rates.sessions_per_min:
        sessions = TokenBucket(rates.sessions_per_min / 60.0, rates.effective_session_burst, now)
    return calls, sessions


def _limiter(table: dict[str, _Limiter], key: str, rates: Rates, now: float) -> _Limiter:
    limiter = table.get(key)
    if limiter is None:
        limiter = table[key] = _Limiter(rates, *_buckets(rates, now))
    elif limiter.rates != rates:
        limiter.rates = rates
        limiter.calls, limiter.sessions = _buckets(rates, now)
    return limiter


class Throttle:
    """Per-caller and per-session rate and concurrency limits.

    Buckets are built from the ``Rates`` passed in with each request, so a reloaded policy applies at
    once: when a caller's (or session's) ``Rates`` differ from the ones its buckets were built from, they
    are rebuilt full; calls already in flight keep counting against concurrency.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall: Callable[[], float] = time.time,
        memory: GuardMemory | None = None,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._memory = memory
        # Buckets saved by an earlier process, used once each: when the caller is first seen again.
        self._saved = memory.buckets() if memory is not None else {}
        self._callers: dict[str, _Limiter] = {}
        self._sessions: dict[str, _Limiter] = {}
        self._refusals: dict[str, tuple[Rates, TokenBucket]] = {}

    def _caller(self, caller: str, rates: Rates, now: float) -> _Limiter:
        """The caller's limiter; when first built in this process, resumed from its saved buckets."""
        fresh = caller not in self._callers
        limiter = _limiter(self._callers, caller, rates, now)
        if fresh:
            for kind, bucket in ((CALLS, limiter.calls), (SESSIONS, limiter.sessions)):
                saved = self._saved.pop((caller, kind), None)
                if bucket is not None and saved is not None:
                    bucket.resume(saved, now, self._wall())
        return limiter

    def _save(self, caller: str, kind: str, bucket: TokenBucket) -> None:
        if self._memory is not None:
            self._memory.save_bucket(caller, kind, bucket.saved(self._wall()))

    def admit_open(self, caller: str, rates: Rates, open_sessions: int, max_sessions: int | None) -> None:
        """Refuse an open over the caller's session quota or session rate; otherwise take one open token."""
        entry = rates.entry or f"callers.{caller}.rates"
        if max_sessions is not None and open_sessions >= max_sessions:
            section = entry.rsplit(".", 1)[0]
            raise QuotaExceeded(
                f"caller {caller} has {open_sessions} sessions open, its limit is {max_sessions} "
                f"(policy: {section}.max_sessions); close one"
            )
        now = self._clock()
        limiter = self._caller(caller, rates, now)
        if limiter.sessions is not None:
            wait = limiter.sessions.take(now)
            if wait:
                raise RateLimited(
                    f"caller {caller} exceeded {rates.sessions_per_min:g} sessions/min "
                    f"(burst {limiter.sessions.burst}) (policy: {entry})",
                    wait,
                )
            self._save(caller, SESSIONS, limiter.sessions)

    @contextlib.contextmanager
    def call_slot(self, caller: str, session_id: str, caller_rates: Rates, session_rates: Rates) -> Iterator[None]:
        """Hold one concurrency slot of the caller and one of the session while the call runs.

        Checks, in order: caller concurrency, session concurrency, caller calls, session calls. Nothing is
        taken unless everything passes, so a refusal by one limit never spends another limit's tokens.
        """
        now = self._clock()
        mine, its = self._check_call(caller, session_id, caller_rates, session_rates, now)
        for bucket in (mine.calls, its.calls):
            if bucket is not None:
                bucket.take(now)
        if mine.calls is not None:
            self._save(caller, CALLS, mine.calls)
        mine.active += 1
        its.active += 1
        try:
            yield
        finally:
            mine.active -= 1
            its.active -= 1

    def check_call(self, caller: str, session_id: str, caller_rates: Rates, session_rates: Rates) -> None:
        """The ``RateLimited`` that ``call_slot`` would raise now, raised; nothing is taken."""
        self._check_call(caller, session_id, caller_rates, session_rates, self._clock())

    def _check_call(
        self, caller: str, session_id: str, caller_rates: Rates, session_rates: Rates, now: float
    ) -> tuple[_Limiter, _Limiter]:
        mine = self._caller(caller, caller_rates, now)
        its = _limiter(self._sessions, session_id, session_rates, now)
        caller_entry = caller_rates.entry or f"callers.{caller}.rates"
        session_entry = session_rates.entry or f"callers.{caller}.session_rates"
        limit = caller_rates.concurrent_calls
        if limit is not None and mine.active >= limit:
            raise RateLimited(
                f"caller {caller} has {mine.active} calls in progress, its limit is {limit} "
                f"(policy: {caller_entry}.concurrent_calls)",
                CONCURRENCY_RETRY_S,
            )
        limit = session_rates.concurrent_calls
        if limit is not None and its.active >= limit:
            raise RateLimited(
                f"session {session_id} has {its.active} calls in progress, its limit is {limit} "
                f"(policy: {session_entry}.concurrent_calls)",
                CONCURRENCY_RETRY_S,
            )
        for who, bucket, rates, entry in (
            (f"caller {caller}", mine.calls, caller_rates, caller_entry),
            (f"session {session_id} of caller {caller}", its.calls, session_rates, session_entry),
        ):
            wait = bucket.peek(now) if bucket is not None else 0.0
            if wait:
                raise RateLimited(
                    f"{who} exceeded {rates.calls_per_s:g} calls/s (burst {rates.effective_call_burst}) "
                    f"(policy: {entry})",
                    wait,
                )
        return mine, its

    def take_refusal(self, caller: str, rates: Rates, now: float) -> float:
        """Take one of the caller's refusal tokens at monotonic ``now``: 0.0, else seconds until one is available.

        Kept like the caller's other buckets: a caller who drained it by flooding refusals (each one a record)
        must not get a fresh burst of records from a restart.
        """
        held = self._refusals.get(caller)
        if held is None or held[0] != rates:
            bucket = TokenBucket(rates.refusals_per_min / 60, rates.refusal_burst, now)
            saved = self._saved.pop((caller, REFUSALS), None)
            if saved is not None:
                bucket.resume(saved, now, self._wall())
            held = self._refusals[caller] = (rates, bucket)
        wait = held[1].take(now)
        if not wait:
            self._save(caller, REFUSALS, held[1])
        return wait

    def forget_session(self, session_id: str) -> None:
        """Drop a closed session's buckets (its id is never reused)."""
        self._sessions.pop(session_id, None)

class AnomalyWatch:
    """Counts denied, blocked and invalid events per session in a sliding window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._events: dict[str, deque[tuple[float, str]]] = {}

    def record(self, session_id: str, kind: str, max_events: int, window_s: float) -> bool:
        """True when this event makes the session's count within the last ``window_s`` reach ``max_events``."""
        now = self._clock()
        events = self._events.setdefault(session_id, deque())
        events.append((now, kind))
        self._trim(events, now, window_s)
        # Only the newest max_events can decide, so memory per session stays bounded by the policy.
        while len(events) > max_events:
            events.popleft()
        return len(events) >= max_events

    def recent(self, session_id: str, window_s: float) -> Mapping[str, int]:
        """Events per kind within the window, for the message that explains a quarantine."""
        events = self._events.get(session_id)
        if not events:
            return {}
        self._trim(events, self._clock(), window_s)
        return dict(Counter(kind for _, kind in events))

    def forget(self, session_id: str) -> None:
        self._events.pop(session_id, None)

    @staticmethod
    def _trim(events: deque[tuple[float, str]], now: float, window_s: float) -> None:
        while events and events[0][0] <= now - window_s:
            events.popleft()
