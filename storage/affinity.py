"""Which process serves a call: affinity records (endpoint, node, media replica) under an
epoch-fenced lease, the replicas' call sets and heartbeats, and deployment-wide named leases.

Owns the affinity, worker and lease keys and their Lua scripts (a renewal also slides the call's
URL binding, ``call:{id}:auth``); a record is written only by a claim at an epoch no older than
the stored one, and renewed or released only at its owner's epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from storage.errors import SerializationError
from storage.keys import AFFINITY_LEASE_SECONDS, TTL_POLICIES, Component, validate_identifier
from storage.redis_connection import RedisConnection, dumps, to_str

# KEYS: affinity. ARGV: record json, epoch, lease. Compare-and-set on the epoch.
CLAIM_AFFINITY_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and tonumber(rec['epoch'] or 0) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""

# KEYS: affinity, auth. ARGV: action ("renew"/"release"), epoch, lease, auth TTL. Owner-only.
# A renewal also slides the call's URL binding (auth), so it lives as long as the call does;
# a release leaves it to expire, so late callbacks of the ended call still authenticate.
OWNER_AFFINITY_LUA = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local rec = cjson.decode(cur)
if tonumber(rec['epoch']) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[1] == 'release' then
  redis.call('DEL', KEYS[1])
else
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return 1
"""

# KEYS: lease. ARGV: owner, seconds. Take a free lease or renew one's own; 1 when held.
LEASE_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

# KEYS: affinity. ARGV: "1" + replica id + socket opening time to set, or "0" to clear.
# A socket opened earlier than the recorded one never overwrites it. Keeps the lease TTL.
MEDIA_REPLICA_LUA = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local rec = cjson.decode(cur)
if ARGV[1] == '1' then
  local since = tonumber(ARGV[3])
  if type(rec['media_since']) == 'number' and rec['media_since'] > since then return 0 end
  rec['media_replica'] = ARGV[2]
  rec['media_since'] = since
else
  rec['media_replica'] = cjson.null
end
redis.call('SET', KEYS[1], cjson.encode(rec), 'KEEPTTL')
return 1
"""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a call actor's stream endpoint listens: the one shape the actor publishes, the
    affinity record stores and the gateway connects to. The token opens it; the epoch fences."""

    host: str
    port: int
    token: str
    epoch: int


@dataclass
class AffinityRecord:
    """``call:{id}:affinity``: the call's endpoint, its node and the replica holding its media."""

    call_id: str
    host: str
    port: int
    token: str
    epoch: int
    node_id: str = ""
    media_replica: str | None = None
    updated_at: float = 0.0

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, self.token, self.epoch)

    @classmethod
    def of(cls, call_id: str, endpoint: Endpoint, node_id: str, now: float) -> AffinityRecord:
        return cls(
            call_id, endpoint.host, endpoint.port, endpoint.token, endpoint.epoch, node_id,
            updated_at=now,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AffinityRecord:
        try:
            return cls(
                call_id=str(data["call_id"]),
                host=str(data["host"]),
                port=int(data["port"]),
                token=str(data["token"]),
                epoch=int(data["epoch"]),
                node_id=str(data.get("node_id") or ""),
                media_replica=data.get("media_replica"),
                updated_at=float(data.get("updated_at") or 0.0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SerializationError(f"invalid affinity record: {exc!r}") from None


class AffinityStore(RedisConnection):
    """Claim, renew, release and read call affinity; worker call sets; named leases."""

    def _register_scripts(self) -> None:
        super()._register_scripts()
        self._claim_affinity = self._script(CLAIM_AFFINITY_LUA)
        self._owner_affinity = self._script(OWNER_AFFINITY_LUA)
        self._media_replica = self._script(MEDIA_REPLICA_LUA)
        self._lease = self._script(LEASE_LUA)

    async def claim_affinity(
        self, record: AffinityRecord, *, lease_s: int = AFFINITY_LEASE_SECONDS
    ) -> bool:
        key = self.keys.call_key(record.call_id, Component.AFFINITY)
        data = dumps(record.to_dict(), "affinity record", self.limits.max_json_bytes)
        async with self._op("claim_affinity"):
            won = await self._claim_affinity(keys=[key], args=[data, record.epoch, lease_s])
        return bool(won)

    async def renew_affinity(
        self, call_id: str, epoch: int, *, lease_s: int = AFFINITY_LEASE_SECONDS
    ) -> bool:
        keys = self._owner_keys(call_id)
        args: list[str | int] = ["renew", epoch, lease_s, TTL_POLICIES["authentication_state"]]
        async with self._op("renew_affinity"):
            done = await self._owner_affinity(keys=keys, args=args)
        return bool(done)

    async def release_affinity(self, call_id: str, epoch: int) -> bool:
        keys = self._owner_keys(call_id)
        async with self._op("release_affinity"):
            done = await self._owner_affinity(keys=keys, args=["release", epoch, 0, 0])
        return bool(done)

    def _owner_keys(self, call_id: str) -> list[str]:
        return [
            self.keys.call_key(call_id, Component.AFFINITY),
            self.keys.call_key(call_id, Component.AUTH),
        ]

    async def get_affinity(self, call_id: str) -> AffinityRecord | None:
        raw = await self._get_json("get_affinity", self.keys.call_key(call_id, Component.AFFINITY))
        return None if raw is None else AffinityRecord.from_dict(raw)

    async def set_media_replica(
        self, call_id: str, replica_id: str | None, *, since: float = 0.0
    ) -> bool:
        """Record the replica holding the call's media socket, opened at ``since`` (epoch s).

        When ACS reconnects to another replica while the first one is still finishing its own
        claim, the socket opened last wins whichever write lands last. False: no record, or a
        newer socket is already recorded.
        """
        key = self.keys.call_key(call_id, Component.AFFINITY)
        args = (
            ["0", "", "0"]
            if replica_id is None
            else ["1", validate_identifier(replica_id, "replica"), repr(float(since))]
        )
        async with self._op("set_media_replica"):
            done = await self._media_replica(keys=[key], args=args)
        return bool(done)

    async def add_worker_call(
        self, replica_id: str, call_id: str, *, lease_s: int = AFFINITY_LEASE_SECONDS
    ) -> None:
        key = self.keys.worker_key(replica_id)
        validate_identifier(call_id, "call id")
        async with self._op("add_worker_call"):
            pipe = self._client.pipeline(transaction=False)
            pipe.sadd(key, call_id)
            pipe.expire(key, lease_s)
            await pipe.execute()

    async def remove_worker_call(self, replica_id: str, call_id: str) -> None:
        key = self.keys.worker_key(replica_id)
        async with self._op("remove_worker_call"):
            await self._client.srem(key, call_id)

    async def worker_calls(self, replica_id: str) -> set[str]:
        key = self.keys.worker_key(replica_id)
        async with self._op("worker_calls"):
            members = await self._client.smembers(key)
        return {to_str(m) for m in members}

    async def hold_lease(self, name: str, owner: str, *, lease_s: int) -> bool:
        """Take the named deployment-wide lease, or renew it if ``owner`` holds it already."""
        key = self.keys.worker_key(name, Component.LEASE)
        async with self._op("hold_lease"):
            held = await self._lease(keys=[key], args=[owner, lease_s])
        return bool(held)

    async def heartbeat_worker(
        self, replica_id: str, *, lease_s: int = AFFINITY_LEASE_SECONDS
    ) -> None:
        key = self.keys.worker_key(replica_id)
        async with self._op("heartbeat_worker"):
            await self._client.expire(key, lease_s)
