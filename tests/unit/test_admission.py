"""Admission: bounded concurrent boots, a FIFO queue within each open's deadline, and opens that leave it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from types import MappingProxyType

import pytest

from runner import errors
from runner.config import Limits, Profile, Settings
from runner.sandbox.base import SandboxSpec
from runner.sandbox.fake import FakeBackend, FakeIO, Handler
from runner.sessions.admission import BootSlots, BootStatus, Preempted
from runner.sessions.manager import SessionManager
from tests.unit.fake_agent import FakeAgent

LIMITS = Limits(call_timeout_s=2.0, idle_timeout_s=60, max_lifetime_s=600)
PROFILES = {"good": Profile(name="good", image="fake", command=("good",), limits=LIMITS)}


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


# -- BootSlots -------------------------------------------------------------------------------------------------------


async def test_opens_get_their_slots_in_the_order_they_asked() -> None:
    slots = BootSlots(1)
    order: list[int] = []
    release = asyncio.Event()

    async def boot(n: int) -> None:
        async with slots.open_slot(time.monotonic() + 60, f"open {n}"):
            order.append(n)
            await release.wait()

    first = asyncio.create_task(boot(0))
    await settle()
    waiting = [asyncio.create_task(boot(n)) for n in range(1, 5)]
    await settle()
    assert slots.status() == BootStatus(booting=1, queued=4, limit=1)
    release.set()
    await asyncio.gather(first, *waiting)
    assert order == [0, 1, 2, 3, 4]
    assert slots.status() == BootStatus(booting=0, queued=0, limit=1)


async def test_an_open_whose_deadline_passes_in_the_queue_says_it_waited_for_a_slot() -> None:
    slots = BootSlots(1)
    hold = asyncio.Event()

    async def holder() -> None:
        async with slots.open_slot(time.monotonic() + 60, "holder"):
            await hold.wait()

    held = asyncio.create_task(holder())
    await settle()
    ahead = asyncio.create_task(slots.open_slot(time.monotonic() + 60, "ahead").__aenter__())
    await settle()
    with pytest.raises(errors.DeadlineExceeded, match=r"boot slot \(1 booting, 1 ahead\)"):
        async with slots.open_slot(time.monotonic() + 0.01, "late"):
            pass
    assert slots.status().queued == 1  # the late one left; the one ahead still waits
    ahead.cancel()
    hold.set()
    await held
    await settle()
    assert slots.status() == BootStatus(booting=0, queued=0, limit=1)


async def test_a_cancelled_open_leaves_the_queue_at_once() -> None:
    slots = BootSlots(1)
    hold = asyncio.Event()
    got: list[str] = []

    async def boot(name: str) -> None:
        async with slots.open_slot(time.monotonic() + 60, name):
            got.append(name)
            await hold.wait()

    tasks = {name: asyncio.create_task(boot(name)) for name in ("a", "b", "c")}
    await settle()
    assert slots.status().queued == 2
    tasks["b"].cancel()
    await settle()
    assert slots.status().queued == 1
    hold.set()
    await asyncio.gather(tasks["a"], tasks["c"])
    assert got == ["a", "c"]
    assert slots.status() == BootStatus(booting=0, queued=0, limit=1)


async def test_a_background_boot_waits_while_any_open_is_queued() -> None:
    slots = BootSlots(1)
    hold = asyncio.Event()
    order: list[str] = []

    async def open_boot(name: str) -> None:
        async with slots.open_slot(time.monotonic() + 60, name):
            order.append(name)
            await hold.wait()

    async def refill() -> None:
        async with slots.background_slot():
            order.append("refill")

    first = asyncio.create_task(open_boot("open 1"))
    await settle()
    background = asyncio.create_task(refill())
    await settle()
    second = asyncio.create_task(open_boot("open 2"))
    await settle()
    hold.set()
    await asyncio.gather(first, second, background)
    assert order == ["open 1", "open 2", "refill"]  # the refill asked before open 2, and still went last


async def test_a_slot_granted_as_its_open_was_cancelled_goes_on_to_the_next() -> None:
    slots = BootSlots(1)
    hold = asyncio.Event()

    async def boot() -> None:
        async with slots.open_slot(time.monotonic() + 60, "boot"):
            await hold.wait()

    first = asyncio.create_task(boot())
    await settle()
    second = asyncio.create_task(boot())
    third = asyncio.create_task(boot())
    await settle()
    hold.set()
    await first  # the slot passes to the second ...
    second.cancel()  # ... which leaves before it ran: the slot must reach the third
    await asyncio.gather(third)
    assert slots.status() == BootStatus(booting=0, queued=0, limit=1)


# -- through the manager ---------------------------------------------------------------------------------------------


@dataclass
class GatedBackend(FakeBackend):
    """Every sandbox waits at the gate before its agent says ready; counts how many boot at once."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    booting: int = 0
    most: int = 0
    specs: list[SandboxSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self._agent)

    def _agent(self, spec: SandboxSpec) -> Handler:
        self.specs.append(spec)
        agent = FakeAgent("good")

        async def gated(io: FakeIO) -> int:
            self.booting += 1
            self.most = max(self.most, self.booting)
            try:
                await self.gate.wait()
            finally:
                self.booting -= 1
            return await agent(io)

        return gated


def manager_with(backend: GatedBackend, boots: int, **pool: int) -> SessionManager:
    settings = Settings(
        profiles=MappingProxyType(PROFILES), max_sessions=50, reap_interval_s=3600, max_concurrent_boots=boots,
        pool=MappingProxyType(pool), open_timeout_s=30,
    )
    return SessionManager(backend, settings)


async def test_no_more_than_the_limit_boot_at_once_and_every_open_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    backend = GatedBackend()
    manager = manager_with(backend, 2)
    await manager.start()
    try:
        with caplog.at_level(logging.INFO, logger="runner.sessions.admission"):
            opens = [asyncio.create_task(manager.open("good", caller=f"c{i}")) for i in range(7)]
            await settle()
            assert manager.admission.status() == BootStatus(booting=2, queued=5, limit=2)
            backend.gate.set()
            opened = await asyncio.gather(*opens)
        assert len({o.info.session_id for o in opened}) == 7
        assert backend.most == 2
        waits = [r.message for r in caplog.records if "waits for a boot slot" in r.message]
        assert len(waits) == 5 and "2 booting (limit 2)" in waits[0]
    finally:
        await manager.shutdown()


async def test_a_pool_refill_counts_as_a_boot_and_yields_to_opens() -> None:
    backend = GatedBackend()
    manager = manager_with(backend, 1, good=1)
    await manager.start()
    try:
        await settle()
        assert manager.admission.status() == BootStatus(booting=1, queued=0, limit=1)  # the pool's first boot
        assert manager.list_sessions(caller="anyone") == []
        opening = asyncio.create_task(manager.open("good", caller="alice"))
        await settle()
        # Nothing was ready: the open takes the refill's slot (the refill is cancelled, to boot again later) rather
        # than wait behind a boot that may hang for open_timeout_s.
        assert manager.admission.status() == BootStatus(booting=1, queued=0, limit=1)
        assert len(backend.specs) == 2
        backend.gate.set()
        await opening
        assert manager.pool._pools["good"].failures == 0  # the preempted refill was no failure: no backoff
        await manager.pool.filled("good")
    finally:
        await manager.shutdown()


async def test_an_open_that_times_out_in_the_queue_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    backend = GatedBackend()
    manager = manager_with(backend, 1)
    await manager.start()
    try:
        first = asyncio.create_task(manager.open("good", caller="alice"))
        await settle()
        with (
            caplog.at_level(logging.WARNING, logger="runner.sessions.manager"),
            pytest.raises(errors.DeadlineExceeded, match=r"boot slot \(1 booting, 0 ahead\)"),
        ):
            await manager.open("good", caller="bob", timeout=0.05)
        failed = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert any("'good'" in r.message and "'bob'" in r.message and "boot slot" in r.message for r in failed)
        assert manager.admission.status().queued == 0
        backend.gate.set()
        await first
        assert len(backend.specs) == 1  # the refused open never booted
    finally:
        await manager.shutdown()


async def test_a_cancelled_open_leaves_the_queue_and_never_boots() -> None:
    backend = GatedBackend()
    manager = manager_with(backend, 1)
    await manager.start()
    try:
        first = asyncio.create_task(manager.open("good", caller="alice"))
        await settle()
        leaving = asyncio.create_task(manager.open("good", caller="bob"))
        await settle()
        assert manager.admission.status().queued == 1
        leaving.cancel()
        await settle()
        assert manager.admission.status().queued == 0
        backend.gate.set()
        await first
        assert len(backend.specs) == 1
        with pytest.raises(asyncio.CancelledError):
            await leaving
    finally:
        await manager.shutdown()


async def test_the_boot_budget_is_what_is_left_of_the_deadline_and_the_agent_gets_it() -> None:
    backend = GatedBackend()
    backend.gate.set()
    manager = manager_with(backend, 2)
    await manager.start()
    try:
        await manager.open("good", caller="alice", timeout=5)
        await manager.open("good", caller="alice", timeout=500)
        short, capped = (float(spec.env["MCP_AGENT_INIT_TIMEOUT"]) for spec in backend.specs)
        assert 0 < short <= 5
        assert capped == 30  # never more than open_timeout_s
    finally:
        await manager.shutdown()


async def test_closing_refuses_the_queued_opens_and_every_later_one_without_losing_a_slot() -> None:
    slots = BootSlots(1)
    hold = asyncio.Event()

    async def boot() -> None:
        async with slots.open_slot(time.monotonic() + 600, "boot"):
            await hold.wait()

    first = asyncio.create_task(boot())
    await settle()
    queued = [asyncio.create_task(boot()) for _ in range(2)]
    await settle()
    slots.close("the service is shutting down")
    for task in queued:  # at once, not after their 600 s deadlines
        with pytest.raises(errors.Unavailable, match="shutting down"):
            await task
    with pytest.raises(errors.Unavailable, match="shutting down"):
        await boot()
    hold.set()
    await first  # the boot under way finishes and gives its slot back: nothing held by the refused ones
    assert slots.status() == BootStatus(booting=0, queued=0, limit=1)


async def test_shutdown_refuses_an_open_queued_for_a_boot_slot_at_once() -> None:
    backend = GatedBackend()
    manager = manager_with(backend, boots=1)
    await manager.start()
    booting = asyncio.create_task(manager.open("good", caller="a"))
    await settle()
    queued = asyncio.create_task(manager.open("good", caller="b", timeout=600))
    await settle()
    assert manager.admission.status().queued == 1
    closing = asyncio.create_task(manager.shutdown())
    with pytest.raises(errors.Unavailable, match="shutting down"):
        await queued
    backend.gate.set()
    await closing
    with pytest.raises(errors.RunnerError):
        await booting
    assert len(backend.specs) == 1  # the queued open never booted


async def test_an_open_that_finds_every_slot_held_by_refills_takes_one_of_theirs() -> None:
    slots = BootSlots(2)
    hung = asyncio.Event()  # never set: refills whose servers never start
    outcomes: list[str] = []

    async def refill() -> None:
        try:
            async with slots.background_slot():
                await hung.wait()
        except Preempted:
            outcomes.append("preempted")

    refills = [asyncio.create_task(refill()) for _ in range(2)]
    await settle()
    assert slots.status() == BootStatus(booting=2, queued=0, limit=2)
    got = asyncio.Event()

    async def open_() -> None:
        async with slots.open_slot(time.monotonic() + 600, "open"):
            got.set()
            await hung.wait()

    opening = asyncio.create_task(open_())
    await settle()
    assert got.is_set()  # at once, not when a hung refill's open_timeout_s runs out
    assert outcomes == ["preempted"]  # one refill gave its slot up, as a Preempted, not a cancelled task
    assert slots.status() == BootStatus(booting=2, queued=0, limit=2)
    for task in (opening, *refills):
        task.cancel()
    await asyncio.gather(opening, *refills, return_exceptions=True)
    assert slots.status() == BootStatus(booting=0, queued=0, limit=2)


async def test_a_refill_cancelled_by_its_owner_is_not_taken_for_a_preempted_one() -> None:
    slots = BootSlots(1)
    hung = asyncio.Event()

    async def refill() -> None:
        async with slots.background_slot():
            await hung.wait()

    task = asyncio.create_task(refill())
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slots.status() == BootStatus(booting=0, queued=0, limit=1)



async def test_a_cold_sessions_idle_and_lifetime_clocks_start_when_it_is_handed_over_not_while_it_queued() -> None:
    backend = GatedBackend()
    manager = manager_with(backend, boots=1)
    await manager.start()
    try:
        first = asyncio.create_task(manager.open("good", caller="a"))
        await settle()
        second = asyncio.create_task(manager.open("good", caller="b", timeout=600))
        await settle()
        assert manager.admission.status().queued == 1
        released = time.monotonic()  # the second has waited in the queue until now
        backend.gate.set()
        await first
        opened = await second
        session = manager._sessions[opened.info.session_id]
        # Ordering only: a queue wait past its idle or lifetime limit would have it reaped as soon as it opened.
        assert session.started >= released and session.last_used >= released
    finally:
        await manager.shutdown()
