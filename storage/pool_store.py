"""The warm pool's records in Redis: the queue of spare call actors ready to take a call, and
each call's owning actor (``call:{id}:actor``), set once.

Owns the ``worker:{pool}:spares`` lists (one per pool: spares of one actor configuration) and
the ``call:{id}:actor`` keys; never creates or talks to an actor (actors/pool.py does).
"""

from __future__ import annotations

from storage.keys import TTL_POLICIES, Component
from storage.redis_connection import RedisConnection, to_str

# KEYS: the call's actor key. ARGV: the candidate owner, TTL. The first owner named stays; every
# caller gets that owner back, so racing replicas agree on one actor per call.
BIND_CALL_ACTOR_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""


class PoolStore(RedisConnection):
    """Spare actors (a FIFO list: the oldest spare is taken first) and call -> actor bindings."""

    def _register_scripts(self) -> None:
        super()._register_scripts()
        self._bind_call_actor = self._client.register_script(BIND_CALL_ACTOR_LUA)

    def _spares_key(self, pool: str) -> str:
        return self.keys.worker_key(pool, Component.SPARES)

    async def add_spare(self, pool: str, actor_name: str) -> None:
        async with self._op("add_spare"):
            await self._client.rpush(self._spares_key(pool), actor_name)

    async def pop_spare(self, pool: str) -> str | None:
        """Take one spare (atomic: two replicas never take the same one); None when empty."""
        async with self._op("pop_spare"):
            name: bytes | str | None = await self._client.lpop(self._spares_key(pool))  # type: ignore[assignment]
        return None if name is None else to_str(name)

    async def spare_count(self, pool: str) -> int:
        async with self._op("spare_count"):
            return int(await self._client.llen(self._spares_key(pool)))

    async def bind_call_actor(self, call_id: str, actor_name: str) -> str:
        """Bind ``call_id`` to ``actor_name`` unless it has an owner; returns the owner."""
        key = self.keys.call_key(call_id, Component.ACTOR)
        async with self._op("bind_call_actor"):
            owner = await self._bind_call_actor(
                keys=[key], args=[actor_name, TTL_POLICIES["session_history"]]
            )
        return to_str(owner)

    async def call_actor(self, call_id: str) -> str | None:
        """The name of the actor that owns ``call_id`` (None: not bound through the pool)."""
        async with self._op("call_actor"):
            name = await self._client.get(self.keys.call_key(call_id, Component.ACTOR))
        return None if name is None else to_str(name)
