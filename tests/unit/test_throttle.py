"""Token buckets, per-caller and per-session limits, and the anomaly window, on a hand-driven clock."""

from __future__ import annotations

import pytest

from runner.errors import QuotaExceeded, RateLimited
from runner.policy import Rates
from runner.throttle import CONCURRENCY_RETRY_S, AnomalyWatch, Throttle, TokenBucket

NONE = Rates()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def throttle(clock: Clock) -> Throttle:
    return Throttle(clock)


def calls(rate: float, burst: int | None = None, concurrent: int | None = None, entry: str = "") -> Rates:
    return Rates(calls_per_s=rate, call_burst=burst, concurrent_calls=concurrent, entry=entry)


def concurrent(n: int, entry: str = "") -> Rates:
    return Rates(concurrent_calls=n, entry=entry)


def admitted(throttle: Throttle, caller: str, session: str, mine: Rates, its: Rates) -> bool:
    try:
        with throttle.call_slot(caller, session, mine, its):
            return True
    except RateLimited:
        return False


# ---- the bucket ----------------------------------------------------------------------------------------------------


def test_bucket_starts_full_and_allows_a_burst() -> None:
    bucket = TokenBucket(rate_per_s=2, burst=3, now=0)
    assert [bucket.take(0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0) == pytest.approx(0.5, abs=1e-5)


def test_bucket_refills_at_its_rate_and_never_beyond_burst() -> None:
    bucket = TokenBucket(rate_per_s=4, burst=2, now=0)
    bucket.take(0)
    bucket.take(0)
    assert bucket.take(0.1) == pytest.approx(0.15, abs=1e-5)  # 0.4 tokens, needs 0.6 more at 4/s
    assert bucket.take(0.25) == 0.0
    # A long idle time refills to the burst, not more.
    assert [bucket.take(100) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.25, abs=1e-5)]


@pytest.mark.parametrize(
    ("rate", "start", "elapsed"),
    [(3, 0.7, 0.2), (7, 0.3, 0.1), (1000, 10_000_000.1, 0.0003), (0.01, 5e6, 7.3)],
)
def test_retry_after_is_exact_enough_to_succeed_then(rate: float, start: float, elapsed: float) -> None:
    # These values make plain float arithmetic land a hair below one token at the promised time.
    bucket = TokenBucket(rate_per_s=rate, burst=1, now=start)
    assert bucket.take(start) == 0.0
    now = start + elapsed
    wait = bucket.take(now)
    assert wait == pytest.approx(1 / rate - elapsed, rel=1e-3, abs=1e-5)
    assert bucket.take(now + wait * 0.99) > 0.0, "just before the promised time there is no token"
    assert bucket.take(now + wait) == 0.0, "at the promised time there is"


def test_a_refused_take_takes_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1, burst=1, now=0)
    bucket.take(0)
    for _ in range(5):
        assert bucket.take(0.5) == pytest.approx(0.5, abs=1e-5)
    assert bucket.take(1.0) == 0.0


def test_bucket_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0)
    with pytest.raises(ValueError):
        TokenBucket(1, 0, 0)


# ---- opening sessions ----------------------------------------------------------------------------------------------


def test_admit_open_enforces_max_sessions_with_the_policy_entry(throttle: Throttle) -> None:
    throttle.admit_open("alice", Rates(entry="callers.alice.rates"), open_sessions=3, max_sessions=4)
    with pytest.raises(QuotaExceeded) as caught:
        throttle.admit_open("alice", Rates(entry="callers.alice.rates"), open_sessions=4, max_sessions=4)
    assert caught.value.message == (
        "caller alice has 4 sessions open, its limit is 4 (policy: callers.alice.max_sessions); close one"
    )
    with pytest.raises(QuotaExceeded, match=r"policy: default_caller.max_sessions"):
        throttle.admit_open("carol", Rates(entry="default_caller.rates"), open_sessions=9, max_sessions=1)
    throttle.admit_open("alice", NONE, open_sessions=10_000, max_sessions=None)


def test_admit_open_session_rate(throttle: Throttle, clock: Clock) -> None:
    rates = Rates(sessions_per_min=6, session_burst=2, entry="callers.alice.rates")
    throttle.admit_open("alice", rates, 0, None)
    throttle.admit_open("alice", rates, 0, None)
    with pytest.raises(RateLimited) as caught:
        throttle.admit_open("alice", rates, 0, None)
    assert caught.value.retry_after_s == pytest.approx(10.0, abs=1e-5)
    assert "caller alice exceeded 6 sessions/min (burst 2) (policy: callers.alice.rates)" in caught.value.message
    throttle.admit_open("bob", rates, 0, None)  # another caller has its own bucket
    clock.now += 10
    throttle.admit_open("alice", rates, 0, None)


def test_a_quota_refusal_spends_no_open_token(throttle: Throttle) -> None:
    rates = Rates(sessions_per_min=1, session_burst=1)
    for _ in range(3):
        with pytest.raises(QuotaExceeded):
            throttle.admit_open("alice", rates, 1, 1)
    throttle.admit_open("alice", rates, 0, 1)


# ---- calls ---------------------------------------------------------------------------------------------------------


def test_caller_call_rate_message_and_retry(throttle: Throttle, clock: Clock) -> None:
    mine = calls(5, 20, entry="callers.alice.rates")
    for _ in range(20):
        assert admitted(throttle, "alice", "s1", mine, NONE)
    with pytest.raises(RateLimited) as caught, throttle.call_slot("alice", "s1", mine, NONE):
        pass
    assert caught.value.message == (
        "caller alice exceeded 5 calls/s (burst 20) (policy: callers.alice.rates); retry in 0.20 s"
    )
    assert caught.value.retry_after_s == pytest.approx(0.2, abs=1e-5)
    clock.now += caught.value.retry_after_s
    assert admitted(throttle, "alice", "s1", mine, NONE)
    assert not admitted(throttle, "alice", "s1", mine, NONE)


def test_a_rate_without_burst_allows_one_seconds_worth(throttle: Throttle) -> None:
    mine = calls(3)
    assert [admitted(throttle, "a", "s", mine, NONE) for _ in range(4)] == [True, True, True, False]


def test_session_rate_is_per_session(throttle: Throttle, clock: Clock) -> None:
    its = calls(1, 2, entry="callers.alice.session_rates")
    assert admitted(throttle, "alice", "s1", NONE, its)
    assert admitted(throttle, "alice", "s1", NONE, its)
    with pytest.raises(RateLimited) as caught, throttle.call_slot("alice", "s1", NONE, its):
        pass
    assert "session s1 of caller alice exceeded 1 calls/s (burst 2) (policy: callers.alice.session_rates)" in (
        caught.value.message
    )
    assert caught.value.retry_after_s == pytest.approx(1.0, abs=1e-5)
    assert admitted(throttle, "alice", "s2", NONE, its), "another session has its own bucket"
    assert admitted(throttle, "alice", "s2", NONE, its)
    clock.now += 1
    assert admitted(throttle, "alice", "s1", NONE, its)


def test_a_refusal_by_the_session_bucket_spends_no_caller_token(throttle: Throttle) -> None:
    mine, its = calls(1, 3), calls(1, 1)
    assert admitted(throttle, "alice", "s1", mine, its)  # caller 2 tokens left
    for _ in range(10):
        assert not admitted(throttle, "alice", "s1", mine, its)
    # Had the refusals taken caller tokens, these would fail.
    assert admitted(throttle, "alice", "s2", mine, its)
    assert admitted(throttle, "alice", "s3", mine, its)
    assert not admitted(throttle, "alice", "s4", mine, its)


def test_a_refusal_by_the_caller_bucket_spends_no_session_token(throttle: Throttle, clock: Clock) -> None:
    mine, its = calls(1, 1), calls(0.001, 2)
    assert admitted(throttle, "alice", "s1", mine, its)  # session 1 token left, refills in ~1000 s
    for _ in range(10):
        assert not admitted(throttle, "alice", "s1", mine, its)
    clock.now += 1
    assert admitted(throttle, "alice", "s1", mine, its)


def test_concurrency_slots_are_held_and_released(throttle: Throttle) -> None:
    mine, its = concurrent(2, "callers.alice.rates"), concurrent(1, "callers.alice.session_rates")
    with throttle.call_slot("alice", "s1", mine, its):
        with pytest.raises(RateLimited) as caught, throttle.call_slot("alice", "s1", mine, its):
            pass
        assert caught.value.retry_after_s == CONCURRENCY_RETRY_S
        assert "session s1 has 1 calls in progress, its limit is 1 (policy: callers.alice.session_rates." in (
            caught.value.message
        )
        with throttle.call_slot("alice", "s2", mine, its):
            with pytest.raises(RateLimited) as caught, throttle.call_slot("alice", "s3", mine, its):
                pass
            assert caught.value.message.startswith(
                "caller alice has 2 calls in progress, its limit is 2 (policy: callers.alice.rates.concurrent_calls)"
            )
    # Released: both sessions again, at once.
    with throttle.call_slot("alice", "s1", mine, its), throttle.call_slot("alice", "s2", mine, its):
        pass


def test_concurrency_is_released_when_the_call_raises(throttle: Throttle) -> None:
    mine = concurrent(1)
    with pytest.raises(ZeroDivisionError), throttle.call_slot("alice", "s1", mine, NONE):
        _ = 1 / 0
    assert admitted(throttle, "alice", "s1", mine, NONE)


def test_a_concurrency_refusal_spends_no_tokens(throttle: Throttle) -> None:
    mine = Rates(calls_per_s=1, call_burst=2, concurrent_calls=1)
    with throttle.call_slot("alice", "s1", mine, NONE):
        for _ in range(5):
            assert not admitted(throttle, "alice", "s2", mine, NONE)
    assert admitted(throttle, "alice", "s2", mine, NONE)


def test_changed_caller_rates_rebuild_its_buckets(throttle: Throttle) -> None:
    old = calls(1, 1)
    assert admitted(throttle, "alice", "s1", old, NONE)
    assert not admitted(throttle, "alice", "s1", old, NONE)
    assert not admitted(throttle, "alice", "s1", calls(1, 1), NONE), "equal rates keep the bucket"
    new = calls(1, 3)
    assert [admitted(throttle, "alice", "s1", new, NONE) for _ in range(4)] == [True, True, True, False]


def test_changed_rates_keep_counting_calls_in_flight(throttle: Throttle) -> None:
    with throttle.call_slot("alice", "s1", concurrent(1), NONE):
        assert not admitted(throttle, "alice", "s2", Rates(concurrent_calls=1, calls_per_s=100), NONE)


def test_forgotten_session_starts_afresh(throttle: Throttle) -> None:
    its = calls(1, 1)
    assert admitted(throttle, "alice", "s1", NONE, its)
    assert not admitted(throttle, "alice", "s1", NONE, its)
    throttle.forget_session("s1")
    assert admitted(throttle, "alice", "s1", NONE, its)
    throttle.forget_session("never-seen")


# ---- anomalies -----------------------------------------------------------------------------------------------------


def test_anomaly_fires_when_the_count_reaches_the_limit_within_the_window(clock: Clock) -> None:
    watch = AnomalyWatch(clock)
    assert [watch.record("s1", "denied", 3, 10) for _ in range(2)] == [False, False]
    assert not watch.record("s2", "denied", 3, 10), "sessions are counted apart"
    assert watch.record("s1", "invalid", 3, 10)
    assert dict(watch.recent("s1", 10)) == {"denied": 2, "invalid": 1}


def test_anomaly_window_slides(clock: Clock) -> None:
    watch = AnomalyWatch(clock)
    assert not watch.record("s1", "denied", 3, 10)  # t=0
    clock.now += 6
    assert not watch.record("s1", "blocked", 3, 10)  # t=6
    clock.now += 4
    assert not watch.record("s1", "denied", 3, 10), "t=0 is exactly one window old: out"  # t=10
    clock.now += 3
    assert watch.record("s1", "invalid", 3, 10), "t=6, 10, 13 are within 10 s"  # t=13
    assert dict(watch.recent("s1", 10)) == {"blocked": 1, "denied": 1, "invalid": 1}
    clock.now += 100
    assert dict(watch.recent("s1", 10)) == {}


def test_anomaly_forget(clock: Clock) -> None:
    watch = AnomalyWatch(clock)
    assert not watch.record("s1", "denied", 2, 60)
    watch.forget("s1")
    assert not watch.record("s1", "denied", 2, 60)
    assert watch.record("s1", "denied", 2, 60)
    watch.forget("unknown")
