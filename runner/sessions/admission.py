"""Admission: how many sandboxes boot at once, and who boots next.

A boot costs about a CPU-second; 200 booting side by side on two cores all finish late together, past any
start-up timeout. So at most ``limit`` boot at once (``Settings.max_concurrent_boots``): further opens wait in
FIFO order, each within its own deadline, and leave the queue the moment their caller gives up. Warm-pool refills
take a slot only when no open waits for one, and give it up when one comes to wait: an open that finds every
slot taken and a refill among the holders cancels that refill (``Preempted``) and boots in its place, so a pool
boot that hangs until ``open_timeout_s`` (a server that never starts) never makes a live session wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from runner.errors import DeadlineExceeded, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BootStatus:
    """What admission looks like now: sandboxes booting, opens waiting for a slot, and the limit."""

    booting: int
    queued: int
    limit: int


class Preempted(Exception):
    """A background boot gave its slot to an open that came to wait for one: not a failure of what it booted."""


class BootSlots:
    """At most ``limit`` boots at once; opens queue in FIFO order, background refills yield to them."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("at least one sandbox must be allowed to boot")
        self._limit = limit
        self._booting = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._changed = asyncio.Event()
        self._closed: str | None = None
        self._background: dict[asyncio.Task[Any], bool] = {}
        """Tasks holding a background slot -> whether an open preempted them."""

    def close(self, why: str) -> None:
        """Refuse every open waiting for a slot, and every later one, with Unavailable(``why``): the service shuts
        down, and an open queued for minutes (``open_queue_timeout_s``) must not hold its shutdown up or boot after."""
        self._closed = why
        while self._queue:
            self._queue.popleft().set_exception(Unavailable(why))
        self._signal()

    def status(self) -> BootStatus:
        return BootStatus(booting=self._booting, queued=len(self._queue), limit=self._limit)

    @contextlib.asynccontextmanager
    async def open_slot(self, deadline: float, what: str) -> AsyncIterator[None]:
        """Hold a slot for one open's boot; wait for it (FIFO) until ``deadline`` (``time.monotonic()``).

        DeadlineExceeded if the deadline passes in the queue, saying how many boot and how many were ahead.
        ``what`` names the open in the log line that says it has to wait.
        """
        await self._take(deadline, what)
        try:
            yield
        finally:
            self._release()

    @contextlib.asynccontextmanager
    async def background_slot(self) -> AsyncIterator[None]:
        """Hold a slot for a background boot (a pool refill): taken only while no open waits for one.

        The task holding it is cancelled when an open comes to wait for a slot; it then leaves with ``Preempted``.
        """
        while not (self._booting < self._limit and not self._queue):
            changed = self._changed
            await changed.wait()
        task = asyncio.current_task()
        assert task is not None
        self._booting += 1
        self._background[task] = False
        try:
            yield
        except asyncio.CancelledError:
            if self._background.get(task) and task.uncancel() == 0:
                raise Preempted("a waiting open took its boot slot") from None
            raise
        finally:
            self._background.pop(task, None)
            self._release()

    async def _take(self, deadline: float, what: str) -> None:
        if self._closed is not None:
            raise Unavailable(self._closed)
        if self._booting < self._limit and not self._queue:
            self._booting += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        self._preempt()
        log.info(
            "%s waits for a boot slot: %d booting (limit %d), %d queued", what, self._booting, self._limit,
            len(self._queue),
        )
        started = time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await asyncio.shield(turn)
        except TimeoutError:
            if turn.done():  # granted (or refused by close) just as the deadline passed: that answer stands
                turn.result()
                return
            ahead = self._queue.index(turn)
            self._queue.remove(turn)
            self._signal()
            raise DeadlineExceeded(
                f"waited {time.monotonic() - started:.1f} s for a boot slot ({self._booting} booting, "
                f"{ahead} ahead) and its deadline passed"
            ) from None
        except BaseException:
            # The caller left (a cancel): out of the queue at once, or the slot it was just given goes on. A turn
            # refused by ``close`` holds no slot.
            if turn.done():
                if not turn.cancelled() and turn.exception() is None:
                    self._release()
            else:
                self._queue.remove(turn)
                self._signal()
            raise

    def _preempt(self) -> None:
        """One background boot per waiting open gives its slot up (cancelled; its slot passes to the queue)."""
        wanted = len(self._queue) - sum(self._background.values())
        for task, preempted in self._background.items():
            if wanted <= 0:
                return
            if not preempted:
                self._background[task] = True
                task.cancel()
                wanted -= 1

    def _release(self) -> None:
        self._booting -= 1
        while self._queue and self._booting < self._limit:
            self._queue.popleft().set_result(None)  # the slot passes straight on: nobody can take it in between
            self._booting += 1
        self._signal()

    def _signal(self) -> None:
        """Wake background boots to look again: a slot freed or the queue emptied."""
        self._changed.set()
        self._changed = asyncio.Event()
