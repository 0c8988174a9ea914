"""Admission: can this replica serve one more call right now?

Capacity is the call slots Ray has free, plus the warm pool's spare actors (each already holds
its slot, so an answered call binding one takes nothing more from Ray), minus the calls this
replica has admitted whose actor is not up yet. Owns that in-flight count and a short cache of
the two sources; never answers, rejects or places a call (gateway/app.py does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import ray

log = logging.getLogger(__name__)

CACHE_S = 0.5  # how long one reading of Ray's free slots and the spare count is trusted

SlotSource = Callable[[], float]  # blocking: run in a thread
SpareSource = Callable[[], Awaitable[int]]
DrainSource = Callable[[], Awaitable[bool]]  # this replica is draining (``rtvoice drain``)


def ray_free_slots(slot_resource: str) -> SlotSource:
    """Free ``slot_resource`` across the Ray cluster (a GCS round trip: call it off the loop)."""

    def free() -> float:
        return float(ray.available_resources().get(slot_resource, 0))

    return free


class Admission:
    """Say yes to a call only when a slot or a spare actor is there for it.

    ``admit()`` reserves one unit of capacity for the call until ``release()`` (once the call's
    actor is up, or the attempt failed); ``has_capacity()`` only looks. The figures are an
    estimate: Ray's view lags placements by a moment and other replicas admit from the same
    slots, so a call admitted on the last slot may still find none; the activation timeout
    (RTVOICE_ACTIVATION_TIMEOUT_S) then gives it a clear end.
    """

    def __init__(
        self,
        slot_resource: str = "call_slot",
        *,
        spares: SpareSource | None = None,
        free_slots: SlotSource | None = None,
        draining: DrainSource | None = None,
        cache_s: float = CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free_slots = free_slots or ray_free_slots(slot_resource)
        self._spares = spares
        self._drain_source = draining
        self.draining = False  # at the last reading: a draining replica admits nothing
        self._cache_s = cache_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._reading = 0.0
        self._read_at: float | None = None
        self.in_flight = 0

    async def capacity(self) -> float:
        """Calls this replica could take now (may be negative while over-committed)."""
        available = await self._available()
        return available - self.in_flight  # read after the await: no call is counted twice

    async def has_capacity(self) -> bool:
        return await self.capacity() >= 1

    async def admit(self) -> bool:
        """True, with one unit reserved for the call, when there is room for it."""
        if await self.capacity() < 1:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        """The admitted call's actor is up (it holds its slot now) or the attempt is over."""
        self.in_flight = max(0, self.in_flight - 1)

    async def _available(self) -> float:
        async with self._lock:  # one reading at a time; the others use it
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._cache_s:
                self.draining = await self._is_draining()
                if self.draining:
                    self._reading = 0.0
                else:
                    self._reading = await self._slots() + await self._spare_count()
                self._read_at = self._clock()
            return self._reading

    async def _slots(self) -> float:
        try:
            return await asyncio.to_thread(self._free_slots)
        except Exception as exc:  # Ray unreachable: no slot can be promised
            log.warning("reading free call slots failed: %s", type(exc).__name__)
            return 0.0

    async def _is_draining(self) -> bool:
        if self._drain_source is None:
            return False
        try:
            return await self._drain_source()
        except Exception as exc:  # Redis down: no drain can have been asked through it
            log.warning("reading the drain mark failed: %s", type(exc).__name__)
            return self.draining

    async def _spare_count(self) -> int:
        if self._spares is None:
            return 0
        try:
            return max(0, await self._spares())
        except Exception as exc:  # Redis down: no spare can be taken from the queue either
            log.warning("reading the spare actor count failed: %s", type(exc).__name__)
            return 0
