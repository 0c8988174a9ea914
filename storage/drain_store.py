"""Drain marks in Redis: a gateway replica that takes no new calls
(``worker:{replica}:draining``, set by ``rtvoice drain --replica``, read by its admission).

Owns those keys only; never refuses a call itself (gateway/admission.py does) and never
talks to Ray (gateway/drain.py does).
"""

from __future__ import annotations

from storage.keys import Component
from storage.redis_connection import RedisConnection


class DrainStore(RedisConnection):
    def _drain_key(self, target: str) -> str:
        return self.keys.worker_key(target, Component.DRAINING)

    async def set_draining(self, target: str, *, ttl_s: int) -> None:
        """Mark ``target`` draining for ``ttl_s`` (a drain left behind ends by itself)."""
        async with self._op("set_draining"):
            await self._client.set(self._drain_key(target), "1", ex=ttl_s)

    async def clear_draining(self, target: str) -> None:
        async with self._op("clear_draining"):
            await self._client.delete(self._drain_key(target))

    async def is_draining(self, target: str) -> bool:
        async with self._op("is_draining"):
            return bool(await self._client.exists(self._drain_key(target)))
