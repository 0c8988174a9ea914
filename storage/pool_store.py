"""The warm pool's records in Redis: the queue of spare call actors ready to take a call, where
each listens, and each call's owning actor (``call:{id}:actor``), set once.

Owns the ``worker:{pool}:spares`` lists (one per pool: spares of one actor configuration), their
claims and ``worker:{pool}:addresses`` (a queued spare's stream endpoint and token: the gateway
binds it there) and the ``call:{id}:actor`` keys; never creates or talks to an actor
(actors/pool.py does).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from storage.affinity import Endpoint
from storage.keys import SPARE_CLAIMS_SECONDS, TTL_POLICIES, Component
from storage.redis_connection import RedisConnection, to_str

# KEYS: the call's actor key. ARGV: the candidate owner, TTL. The first owner named stays; every
# caller gets that owner back, so racing replicas agree on one actor per call.
BIND_CALL_ACTOR_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""

# KEYS: the pool's spares list, its claims hash, its addresses hash (one slot: all are the
# pool's keys). ARGV: the call id, the claims' TTL. The call's claimed spare, else the oldest
# spare claimed for it, else false; with its address (false if unknown). Idempotent per call: a
# replica whose reply was lost, or a second replica answering the same call, gets the same spare
# again, so no spare leaves the queue without a call holding it.
CLAIM_SPARE_LUA = """
local spare = redis.call('HGET', KEYS[2], ARGV[1])
if not spare then
  spare = redis.call('LPOP', KEYS[1])
  if not spare then return false end
  redis.call('HSET', KEYS[2], ARGV[1], spare)
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return {spare, redis.call('HGET', KEYS[3], spare)}
"""

# KEYS: the spares list, the claims hash, the addresses hash. ARGV: the call id, the call's
# owner. Ends the call's claim; a claimed spare that is not the owner (the call was bound
# another way) goes back to the front of the queue, else its address goes. Idempotent: a second
# settle finds no claim.
SETTLE_CLAIM_LUA = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if held ~= ARGV[2] then
  redis.call('LPUSH', KEYS[1], held)
  return 1
end
redis.call('HDEL', KEYS[3], held)
return 0
"""

# KEYS: the spares list, the addresses hash. ARGV: LPOP (the oldest) or RPOP (the newest). The
# spare taken out of the queue, its address with it; false when the queue is empty.
POP_SPARE_LUA = """
local spare = redis.call(ARGV[1], KEYS[1])
if spare then redis.call('HDEL', KEYS[2], spare) end
return spare
"""


@dataclass(frozen=True, slots=True)
class SpareClaim:
    """The spare claimed for a call, and where it listens (None: unknown, bind it through Ray)."""

    name: str
    address: Endpoint | None


def encode_address(endpoint: Endpoint) -> bytes:
    return orjson.dumps({"host": endpoint.host, "port": endpoint.port, "token": endpoint.token})


def decode_address(raw: bytes | str | None) -> Endpoint | None:
    """A stored address, or None if there is none or it is not one (never trusted blindly)."""
    if raw is None:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    host, port, token = doc.get("host"), doc.get("port"), doc.get("token")
    if not (isinstance(host, str) and isinstance(port, int) and isinstance(token, str)):
        return None
    return Endpoint(host, port, token, 0)


class PoolStore(RedisConnection):
    """Spare actors (a FIFO list: the oldest spare is taken first) and call -> actor bindings."""

    def _register_scripts(self) -> None:
        super()._register_scripts()
        self._bind_call_actor = self._script(BIND_CALL_ACTOR_LUA)
        self._claim_spare = self._script(CLAIM_SPARE_LUA)
        self._settle_claim = self._script(SETTLE_CLAIM_LUA)
        self._pop_spare = self._script(POP_SPARE_LUA)

    def _spares_key(self, pool: str) -> str:
        return self.keys.worker_key(pool, Component.SPARES)

    def _addresses_key(self, pool: str) -> str:
        return self.keys.worker_key(pool, Component.ADDRESSES)

    def _claim_keys(self, pool: str) -> list[str]:
        return [
            self._spares_key(pool),
            self.keys.worker_key(pool, Component.CLAIMS),
            self._addresses_key(pool),
        ]

    async def claim_spare(self, pool: str, call_id: str) -> SpareClaim | None:
        """The spare claimed for ``call_id``: the same one on every call (retries, replicas
        racing), the oldest spare the first time; None when the queue is empty."""
        async with self._op("claim_spare"):
            claimed = await self._claim_spare(
                keys=self._claim_keys(pool), args=[call_id, SPARE_CLAIMS_SECONDS]
            )
        if claimed is None:
            return None
        name, address = claimed
        return SpareClaim(to_str(name), decode_address(address))

    async def settle_spare_claim(self, pool: str, call_id: str, owner: str) -> bool:
        """End ``call_id``'s claim now that its owner is known; True if the claimed spare was
        not the owner and went back to the queue."""
        async with self._op("settle_spare_claim"):
            returned = await self._settle_claim(
                keys=self._claim_keys(pool), args=[call_id, owner]
            )
        return bool(returned)

    async def add_spare(self, pool: str, actor_name: str, address: Endpoint | None = None) -> None:
        """Queue a spare, with where it listens when known (its epoch is not stored)."""
        pipe = self._client.pipeline(transaction=False)  # in order: the address is there first
        if address is not None:
            pipe.hset(self._addresses_key(pool), actor_name, encode_address(address))
            pipe.expire(self._addresses_key(pool), SPARE_CLAIMS_SECONDS)
        pipe.rpush(self._spares_key(pool), actor_name)
        async with self._op("add_spare"):
            await pipe.execute()

    async def pop_spare(self, pool: str) -> str | None:
        """Take one spare (atomic: two replicas never take the same one); None when empty."""
        async with self._op("pop_spare"):
            name = await self._pop_spare(keys=self._pop_keys(pool), args=["LPOP"])
        return None if name is None else to_str(name)

    async def pop_newest_spare(self, pool: str) -> str | None:
        """Take the most recently queued spare (to retire it); None when empty."""
        async with self._op("pop_newest_spare"):
            name = await self._pop_spare(keys=self._pop_keys(pool), args=["RPOP"])
        return None if name is None else to_str(name)

    def _pop_keys(self, pool: str) -> list[str]:
        return [self._spares_key(pool), self._addresses_key(pool)]

    async def remove_spare(self, pool: str, actor_name: str) -> bool:
        """Take one named spare out of the queue; False if a call took it first."""
        pipe = self._client.pipeline(transaction=False)
        pipe.lrem(self._spares_key(pool), 1, actor_name)
        pipe.hdel(self._addresses_key(pool), actor_name)
        async with self._op("remove_spare"):
            removed, _ = await pipe.execute()
        return bool(removed)

    async def spare_names(self, pool: str) -> list[str]:
        async with self._op("spare_names"):
            names = await self._client.lrange(self._spares_key(pool), 0, -1)
        return [to_str(name) for name in names]

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
