"""Approvals: request, decide, claim once; expiry seen without polling; watchers; session close; limits."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from runner.approvals import Approval, ApprovalBook, ApprovalState
from runner.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    ResourceExhausted,
)

START = 1_700_000_000.0


class FakeClock:
    """Unix time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def book(clock: FakeClock) -> ApprovalBook:
    return ApprovalBook(clock=clock)


def ask(
    book: ApprovalBook, *, caller: str = "agent", session_id: str = "s1", timeout_s: float = 60.0, **extra: Any
) -> Approval:
    return book.request(
        session_id=session_id,
        caller=caller,
        profile="files",
        tool=extra.pop("tool", "delete_file"),
        arguments=extra.pop("arguments", {"path": "/data/x", "opts": {"force": True}}),
        rule="files.delete needs approval",
        timeout_s=timeout_s,
    )


async def next_within(watcher: AsyncIterator[Approval], seconds: float = 0.15) -> Approval:
    return await asyncio.wait_for(anext(watcher), seconds)


def test_request_records_a_pending_approval(book: ApprovalBook) -> None:
    a = ask(book)
    assert re.fullmatch(r"apr_[0-9a-f]{16}", a.approval_id)
    assert a.state is ApprovalState.PENDING
    assert (a.requested_at, a.expires_at) == (START, START + 60)
    assert a.rule == "files.delete needs approval"
    assert book.get(a.approval_id) == a
    assert book.pending() == [a]
    assert ask(book).approval_id != a.approval_id


def test_arguments_are_a_private_copy(book: ApprovalBook) -> None:
    arguments: dict[str, Any] = {"path": "/data/x", "opts": {"force": True}}
    a = ask(book, arguments=arguments)
    arguments["path"] = "/etc/passwd"
    arguments["opts"]["force"] = False
    with pytest.raises(TypeError):
        a.arguments["path"] = "/"  # type: ignore[index]
    a.arguments["opts"]["force"] = "changed through a handed-out copy"
    assert book.get(a.approval_id).arguments == {"path": "/data/x", "opts": {"force": True}}


def test_approve_then_claim_once(book: ApprovalBook, clock: FakeClock) -> None:
    a = ask(book)
    clock.advance(5)
    decided = book.decide(a.approval_id, approver="alice", approve=True, reason="", allow_self_approval=False)
    assert (decided.state, decided.decided_by, decided.decided_at) == (ApprovalState.APPROVED, "alice", START + 5)
    assert book.pending() == []

    claimed = book.claim(a.approval_id, caller="agent", session_id="s1")
    assert claimed.used and claimed.arguments == {"path": "/data/x", "opts": {"force": True}}
    with pytest.raises(FailedPrecondition, match="already used"):
        book.claim(a.approval_id, caller="agent", session_id="s1")


def test_deny_needs_a_reason_and_claim_carries_it(book: ApprovalBook) -> None:
    a = ask(book)
    with pytest.raises(InvalidArgument, match="reason"):
        book.decide(a.approval_id, approver="alice", approve=False, reason="  ", allow_self_approval=False)
    with pytest.raises(InvalidArgument, match="1000"):
        book.decide(a.approval_id, approver="alice", approve=False, reason="x" * 1001, allow_self_approval=False)
    assert book.get(a.approval_id).state is ApprovalState.PENDING

    book.decide(a.approval_id, approver="alice", approve=False, reason="not on prod data", allow_self_approval=False)
    with pytest.raises(PermissionDenied) as denied:
        book.claim(a.approval_id, caller="agent", session_id="s1")
    assert "alice" in denied.value.message and "not on prod data" in denied.value.message


def test_a_decision_is_final(book: ApprovalBook) -> None:
    a = ask(book)
    book.decide(a.approval_id, approver="alice", approve=True, reason="ok", allow_self_approval=False)
    with pytest.raises(FailedPrecondition, match=r"approved by 'alice' at 2023-11-14T22:13:20\+00:00"):
        book.decide(a.approval_id, approver="bob", approve=False, reason="no", allow_self_approval=False)
    assert book.get(a.approval_id).decided_by == "alice"


def test_self_approval_is_refused_unless_allowed(book: ApprovalBook) -> None:
    a = ask(book, caller="agent")
    with pytest.raises(PermissionDenied, match="may not approve their own call"):
        book.decide(a.approval_id, approver="agent", approve=True, reason="", allow_self_approval=False)
    assert book.get(a.approval_id).state is ApprovalState.PENDING
    decided = book.decide(a.approval_id, approver="agent", approve=True, reason="", allow_self_approval=True)
    assert decided.state is ApprovalState.APPROVED


def test_claim_checks_who_and_where(book: ApprovalBook) -> None:
    a = ask(book)
    with pytest.raises(FailedPrecondition, match="still waiting for an approver"):
        book.claim(a.approval_id, caller="agent", session_id="s1")
    book.decide(a.approval_id, approver="alice", approve=True, reason="", allow_self_approval=False)
    with pytest.raises(PermissionDenied, match="another caller"):
        book.claim(a.approval_id, caller="mallory", session_id="s1")
    with pytest.raises(PermissionDenied, match="another session"):
        book.claim(a.approval_id, caller="agent", session_id="s2")
    with pytest.raises(NotFound, match="no approval"):
        book.claim("apr_0000000000000000", caller="agent", session_id="s1")
    assert book.claim(a.approval_id, caller="agent", session_id="s1").used  # the refusals did not use it up


def test_unknown_approval(book: ApprovalBook) -> None:
    with pytest.raises(NotFound, match="no approval 'apr_nope'"):
        book.get("apr_nope")
    with pytest.raises(NotFound):
        book.decide("apr_nope", approver="alice", approve=True, reason="", allow_self_approval=False)


def test_expiry_by_clock_without_a_loop(book: ApprovalBook, clock: FakeClock) -> None:
    a = ask(book, timeout_s=10)
    clock.advance(10)
    assert book.pending() == []
    expired = book.get(a.approval_id)
    assert (expired.state, expired.decided_at) == (ApprovalState.EXPIRED, START + 10)
    with pytest.raises(FailedPrecondition, match="expired"):
        book.decide(a.approval_id, approver="alice", approve=True, reason="", allow_self_approval=False)
    with pytest.raises(FailedPrecondition, match="expired"):
        book.claim(a.approval_id, caller="agent", session_id="s1")


async def test_wait_returns_the_decision(book: ApprovalBook) -> None:
    a = ask(book)
    waiting = asyncio.create_task(book.wait(a.approval_id, timeout=1.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    book.decide(a.approval_id, approver="alice", approve=True, reason="", allow_self_approval=False)
    done = await asyncio.wait_for(waiting, 0.1)
    assert done.state is ApprovalState.APPROVED


async def test_wait_timeout_returns_still_pending(book: ApprovalBook) -> None:
    a = ask(book)
    assert (await book.wait(a.approval_id, timeout=0.01)).state is ApprovalState.PENDING
    assert (await book.wait(a.approval_id, timeout=0)).state is ApprovalState.PENDING


async def test_wait_sees_expiry_at_the_deadline(book: ApprovalBook, clock: FakeClock) -> None:
    a = ask(book, timeout_s=0.03)
    waiting = asyncio.create_task(book.wait(a.approval_id, timeout=None))
    await asyncio.sleep(0)
    assert not waiting.done()
    clock.advance(0.03)  # the fake clock reaches the deadline; the loop's timer fires ~0.03 s later
    done = await asyncio.wait_for(waiting, 0.15)
    assert (done.state, done.reason) == (ApprovalState.EXPIRED, "no decision before the deadline")


async def test_watch_yields_pending_first_then_changes(book: ApprovalBook) -> None:
    first = ask(book)
    async with contextlib.aclosing(book.watch()) as watcher:
        assert await next_within(watcher) == first
        second = ask(book, tool="drop_table")
        assert await next_within(watcher) == second
        book.decide(first.approval_id, approver="alice", approve=False, reason="no", allow_self_approval=False)
        denied = await next_within(watcher)
        assert (denied.approval_id, denied.state, denied.reason) == (first.approval_id, ApprovalState.DENIED, "no")
        assert book.watcher_count == 1
    assert book.watcher_count == 0


async def test_watcher_sees_expiry_without_anyone_polling(book: ApprovalBook, clock: FakeClock) -> None:
    async with contextlib.aclosing(book.watch()) as watcher:
        nothing_yet = asyncio.create_task(anext(watcher))
        await asyncio.sleep(0)
        a = ask(book, timeout_s=0.03)
        assert await asyncio.wait_for(nothing_yet, 0.1) == a
        clock.advance(0.03)
        expired = await next_within(watcher)
        assert (expired.approval_id, expired.state) == (a.approval_id, ApprovalState.EXPIRED)


async def test_two_watchers_see_the_same_events(book: ApprovalBook) -> None:
    async with contextlib.aclosing(book.watch()) as w1, contextlib.aclosing(book.watch()) as w2:
        t1, t2 = asyncio.create_task(anext(w1)), asyncio.create_task(anext(w2))
        await asyncio.sleep(0)
        assert book.watcher_count == 2
        a = ask(book)
        assert await asyncio.wait_for(t1, 0.1) == await asyncio.wait_for(t2, 0.1) == a
        book.decide(a.approval_id, approver="alice", approve=True, reason="", allow_self_approval=False)
        assert (await next_within(w1)).state is (await next_within(w2)).state is ApprovalState.APPROVED


async def test_a_cancelled_watcher_is_removed(book: ApprovalBook) -> None:
    seen: list[Approval] = []

    async def consume() -> None:
        async for approval in book.watch():
            seen.append(approval)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    assert book.watcher_count == 1
    ask(book)
    await asyncio.sleep(0)
    assert len(seen) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert book.watcher_count == 0
    ask(book)  # publishing to nobody is fine


async def test_a_watcher_that_stops_iterating_is_removed(book: ApprovalBook) -> None:
    ask(book)
    async for _ in book.watch():
        break
    for _ in range(5):  # the loop closes an abandoned async generator soon after it is dropped
        if book.watcher_count == 0:
            break
        await asyncio.sleep(0)
    assert book.watcher_count == 0


async def test_a_slow_watcher_is_dropped_without_blocking_others(clock: FakeClock) -> None:
    book = ApprovalBook(clock=clock, watch_queue=2)
    first = ask(book)
    slow = book.watch()
    fast = book.watch()
    assert await next_within(slow) == first
    assert await next_within(fast) == first
    made = []
    for _ in range(3):
        made.append(ask(book))
        assert await next_within(fast) == made[-1]
    assert book.watcher_count == 1  # the slow one was dropped at its third unread event
    assert [await next_within(slow), await next_within(slow)] == made[:2]
    with pytest.raises(ResourceExhausted, match="fell more than 2 events behind"):
        await next_within(slow)
    await fast.aclose()
    assert book.watcher_count == 0


def test_forget_session_expires_its_pending_approvals(book: ApprovalBook) -> None:
    mine, other = ask(book, session_id="s1"), ask(book, session_id="s2")
    approved = ask(book, session_id="s1")
    book.decide(approved.approval_id, approver="alice", approve=True, reason="", allow_self_approval=False)
    book.forget_session("s1")
    gone = book.get(mine.approval_id)
    assert (gone.state, gone.reason) == (ApprovalState.EXPIRED, "session closed")
    assert book.get(approved.approval_id).state is ApprovalState.APPROVED
    assert book.pending() == [other]
    with pytest.raises(FailedPrecondition, match="session closed"):
        book.claim(mine.approval_id, caller="agent", session_id="s1")


async def test_forget_session_is_seen_by_waiters(book: ApprovalBook) -> None:
    a = ask(book)
    waiting = asyncio.create_task(book.wait(a.approval_id, timeout=1.0))
    await asyncio.sleep(0)
    book.forget_session("s1")
    assert (await asyncio.wait_for(waiting, 0.1)).reason == "session closed"


def test_max_pending(clock: FakeClock) -> None:
    book = ApprovalBook(clock=clock, max_pending=2)
    a = ask(book)
    ask(book)
    with pytest.raises(QuotaExceeded, match="2 approvals are already pending"):
        ask(book)
    book.decide(a.approval_id, approver="alice", approve=True, reason="", allow_self_approval=False)
    ask(book)  # a decided one no longer counts


def test_each_caller_has_its_own_pending_cap_below_the_global_one(clock: FakeClock) -> None:
    book = ApprovalBook(clock=clock, max_pending=5, max_pending_per_caller=2)
    first = ask(book, caller="mallory")
    ask(book, caller="mallory")
    with pytest.raises(QuotaExceeded, match="caller mallory has 2 approvals pending, the limit per caller is 2") as cap:
        ask(book, caller="mallory")
    assert cap.value.status.value == "RESOURCE_EXHAUSTED"
    ask(book, caller="agent")  # one caller at its cap locks nobody else out
    ask(book, caller="agent")
    book.decide(first.approval_id, approver="alice", approve=False, reason="no", allow_self_approval=False)
    ask(book, caller="mallory")  # a decided one no longer counts
    ask(book, caller="carol")
    with pytest.raises(QuotaExceeded, match="5 approvals are already pending, the limit is 5"):
        ask(book, caller="dave")  # and the service's cap still holds


def test_list_and_sweep_retention(book: ApprovalBook, clock: FakeClock) -> None:
    a, b = ask(book), ask(book, timeout_s=7200)
    book.decide(a.approval_id, approver="alice", approve=True, reason="", allow_self_approval=False)
    assert book.list_approvals() == [b]
    assert [x.approval_id for x in book.list_approvals(include_decided=True)] == [a.approval_id, b.approval_id]
    clock.advance(3599)
    book.sweep()
    assert book.get(a.approval_id).state is ApprovalState.APPROVED
    clock.advance(2)
    book.sweep()
    with pytest.raises(NotFound):
        book.get(a.approval_id)
    assert book.get(b.approval_id).state is ApprovalState.PENDING


def test_request_rejects_a_bad_timeout(book: ApprovalBook) -> None:
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(InvalidArgument):
            ask(book, timeout_s=bad)
