"""Back-pressure for readers of untrusted output: spend freely up to a burst, then wait in proportion.

Unlike the callers' token buckets in ``runner.throttle``, which refuse, a ``Pace`` never refuses: what was
read is taken (and may run the balance into debt), and ``take`` answers how long the reader should wait
before it reads on. Waiting instead of dropping or queueing leaves the writer's output unread, so the writer
(a sandbox, an egress proxy) blocks on its own next write: nothing it did is lost, and nothing piles up here.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Pace:
    """``rate_per_s`` units a second after a ``burst``; ``take`` says how long to wait once past it."""

    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._left = float(burst)
        self._last = clock()

    def take(self, amount: float) -> float:
        """Spend ``amount``; the seconds to wait before reading on (0.0: none)."""
        now = self._clock()
        self._left = min(self._burst, self._left + (now - self._last) * self._rate) - amount
        self._last = now
        return 0.0 if self._left >= 0 else -self._left / self._rate
