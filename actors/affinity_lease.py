"""A call actor's affinity lease (``call:{id}:affinity``): claimed at activation, renewed by the
heartbeat, claimed again after a lapse, released at the end of the call; it tells the actor when
a newer epoch has fenced it out.

A plain object over the storage affinity calls. It never touches the conversation or the
per-frame path, and never writes the call session itself (the actor's ``on_reclaimed`` does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from enum import Enum

from storage.affinity import AffinityRecord, AffinityStore, Endpoint
from storage.errors import RedisUnavailableError, StaleEpochError, StorageError

log = logging.getLogger(__name__)


class Renewal(Enum):
    HELD = "held"  # renewed at our epoch
    RECLAIMED = "reclaimed"  # it had lapsed (a Redis outage or restart): claimed again
    FENCED = "fenced"  # a newer epoch owns the call


class AffinityLease:
    def __init__(self, redis: AffinityStore, call_id: str, epoch: int, *, lease_s: int) -> None:
        self._redis = redis
        self.call_id = call_id
        self.epoch = epoch
        self.lease_s = lease_s
        self._endpoint: Endpoint | None = None
        self._node_id = ""

    def _record(self) -> AffinityRecord:
        assert self._endpoint is not None
        return AffinityRecord.of(self.call_id, self._endpoint, self._node_id, time.time())

    async def claim(self, endpoint: Endpoint, node_id: str) -> None:
        """Publish ``endpoint`` (at this lease's epoch); StaleEpochError if a newer owner holds
        the call."""
        self._endpoint, self._node_id = endpoint, node_id
        if not await self._redis.claim_affinity(self._record(), lease_s=self.lease_s):
            raise StaleEpochError(f"a newer owner holds call {self.call_id}")

    async def renew(self) -> Renewal:
        """One heartbeat; StorageError when Redis cannot say."""
        if await self._redis.renew_affinity(self.call_id, self.epoch, lease_s=self.lease_s):
            return Renewal.HELD
        current = await self._redis.get_affinity(self.call_id)
        if current is not None and current.epoch > self.epoch:
            return Renewal.FENCED
        await self._redis.claim_affinity(self._record(), lease_s=self.lease_s)
        return Renewal.RECLAIMED

    async def heartbeat(
        self,
        interval_s: float,
        *,
        on_reclaimed: Callable[[], Awaitable[None]],
        on_fenced: Callable[[], None],
        on_failure: Callable[[str, StorageError], None],
    ) -> None:
        """Renew every ``interval_s`` until fenced. After a lapse, ``on_reclaimed`` rewrites what
        the gateway needs to accept new sockets (the call session); Redis errors never end it."""
        assert self._endpoint is not None
        while True:
            await asyncio.sleep(interval_s)
            try:
                renewal = await self.renew()
                if renewal is Renewal.FENCED:
                    on_fenced()
                    return
                if renewal is Renewal.RECLAIMED:
                    await on_reclaimed()
            except RedisUnavailableError:
                log.info("heartbeat: redis unavailable; serving from memory")
            except StorageError as exc:
                on_failure("heartbeat", exc)

    async def release(self) -> bool:
        """Give the call up (only at this lease's epoch); StorageError when Redis fails."""
        return await self._redis.release_affinity(self.call_id, self.epoch)
