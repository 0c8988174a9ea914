"""Frame pacing: absolute deadlines on a monotonic clock so per-frame sleep error never accumulates.

Owns timing only; never sends anything. Clock and sleep are injectable so the schedule is testable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Pacer:
    """Yields once per ``interval_s``; tick k is due at ``start + k * interval_s``.

    After a stall longer than ``max_lag_s`` the schedule restarts from now instead of bursting
    the backlog out (a real media stack drops, it does not catch up at line rate).
    ``realtime=False`` never sleeps: as fast as possible, for benchmarks.
    """

    def __init__(
        self,
        interval_s: float,
        *,
        realtime: bool = True,
        max_lag_s: float = 0.5,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.interval_s = interval_s
        self.realtime = realtime
        self.max_lag_s = max_lag_s
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self.ticks = 0
        self.resyncs = 0

    def deadline(self, tick: int) -> float:
        if self._start is None:
            raise RuntimeError("pacer not started")
        return self._start + tick * self.interval_s

    async def wait(self) -> None:
        """Wait for the next tick (the first returns at once and starts the schedule)."""
        if not self.realtime:
            self.ticks += 1
            await asyncio.sleep(0)  # stay cooperative even when not pacing
            return
        now = self._clock()
        if self._start is None:
            self._start = now
        due = self.deadline(self.ticks)
        if now - due > self.max_lag_s:
            self._start = now - self.ticks * self.interval_s
            self.resyncs += 1
            due = now
        if due > now:
            await self._sleep(due - now)
        self.ticks += 1
