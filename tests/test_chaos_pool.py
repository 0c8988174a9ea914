"""Chaos: two gateway replicas racing to answer and bind the same calls through the warm pool
while Redis is slowed (every reply held back, many past the operations' timeout, so a command
the replica gave up on may still have run). Zero duplicate actors, counted from Ray's own
registry of actors.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import ray

from actors.activation import SPARE_PREFIX, forget_actor
from actors.config import CallActorConfig
from actors.pool import WarmPool
from storage.keys import RedisKeyManager
from storage.pool_store import SpareClaim
from storage.redis_manager import AsyncAzureRedisManager
from tests.chaos import TcpProxy
from tests.helpers import spares_ready

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

CALLS = 100
SPARES = 6
OP_TIMEOUT_S = 0.3  # the replicas' Redis operation timeout
DELAY_S, JITTER_S = 0.01, 0.05  # every Redis reply held 10-60 ms
STALL_S = 0.6  # and every other 0.6 s, all of them held 0.6 s: what was sent then times out


@pytest.fixture
def config(
    actor_config: Callable[..., CallActorConfig], ray_cluster: dict[str, Any]
) -> CallActorConfig:
    return actor_config(ray_namespace=str(ray_cluster["namespace"]), heartbeat_interval_s=0.5)


@pytest.fixture
async def slow_redis(redis_url: str) -> AsyncIterator[TcpProxy]:
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    async with TcpProxy([(host, int(port))], seed=12) as proxy:
        yield proxy


@pytest.fixture
async def replicas(
    slow_redis: TcpProxy, key_manager: RedisKeyManager, config: CallActorConfig
) -> AsyncIterator[list[WarmPool]]:
    """Two replicas' pools, each on its own Redis connection through the slowing proxy."""
    managers = [
        AsyncAzureRedisManager.from_url(
            slow_redis.redis_url(), key_manager, op_timeout=OP_TIMEOUT_S
        )
        for _ in range(2)
    ]
    pools = [
        # The bind deadline is well past the slowdown, so every replica gets Redis's answer.
        WarmPool(
            mgr, config, owner=f"gw-{i}", min_spares=SPARES, max_spares=SPARES, bind_deadline_s=30
        )
        for i, mgr in enumerate(managers)
    ]
    yield pools
    for mgr in managers:
        await mgr.close()


def call_actors(namespace: str) -> list[str]:
    """Every live call actor of the namespace (each is named: by its call id, or ``spare-…``),
    from Ray's own registry (the GCS), not from our records."""
    named = ray.util.list_named_actors(all_namespaces=True)
    return [entry["name"] for entry in named if entry.get("namespace") == namespace]


async def bound_calls(namespace: str) -> collections.Counter[str]:
    """How many live actors serve each call ("" for spares), asking every actor Ray lists."""
    names = await asyncio.to_thread(call_actors, namespace)
    handles = [ray.get_actor(name, namespace=namespace) for name in names]
    bound = await asyncio.gather(*(h.bound_call.remote() for h in handles))
    return collections.Counter(bound)


async def test_racing_replicas_on_a_slow_redis_bind_one_actor_per_call(
    replicas: list[WarmPool],
    slow_redis: TcpProxy,
    redis_mgr: AsyncAzureRedisManager,
    config: CallActorConfig,
) -> None:
    """100 calls, each answered by both replicas at once while Redis is slow: every reply
    held 10-60 ms, and every other 0.6 s all of them held 0.6 s, past the 0.3 s operation
    timeout (the command still ran: only its reply is late).

    Size: all 100 calls race through the binding (the set-once ``call:{id}:actor`` record, which
    decides which actor a call gets), but the pool holds 6 warm spares, so 6 calls bind a spare
    and the other 94 bind a cold actor's name. Those 94 are not started: one process per call
    would be 100 actor processes (about 2 minutes of process starts on this 2-core machine, past
    the chaos suite's CI budget), and a cold actor is named by its call id, so Ray's registry
    already makes it one per call. Every actor that is started (the spares, then the calls
    bound to them, activated by both replicas racing again) is counted from Ray's registry
    (``ray.util.list_named_actors``: the dashboard's state API is not started here)."""
    a, b = replicas
    before = await bound_calls(config.namespace)  # other tests' actors, if any
    await a.refill_once()
    await spares_ready(a, SPARES, timeout=90)
    call_ids = [f"race-{uuid.uuid4().hex[:8]}" for _ in range(CALLS)]

    slow_redis.reply_delay_s, slow_redis.reply_jitter_s = DELAY_S, JITTER_S
    stalls = asyncio.create_task(_stall_every_other_period(slow_redis))
    try:
        owners = await asyncio.gather(*(p.owner_of(c) for c in call_ids for p in (a, b)))
        # Both replicas named the same actor for every call, and the record (once written)
        # names it too.
        for i, call_id in enumerate(call_ids):
            named = {owners[2 * i], owners[2 * i + 1], await redis_mgr.call_actor(call_id)}
            assert len(named - {None}) == 1, (call_id, named)
        warm = [c for c, o in zip(call_ids, owners[::2], strict=True) if o.startswith(SPARE_PREFIX)]
        assert warm and len({owners[2 * call_ids.index(c)] for c in warm}) == len(warm)
        # The warm calls' actors, activated by both replicas racing again on the slow Redis.
        activated = await asyncio.gather(*(p.activate(c) for c in warm for p in (a, b)))
    finally:
        stalls.cancel()
        slow_redis.stall(0.0)
        slow_redis.reply_delay_s = slow_redis.reply_jitter_s = 0.0
    try:
        now = await bound_calls(config.namespace)
        assert all(now[c] == 1 for c in warm), now
        assert not [c for c in call_ids if c not in warm and now[c]], now  # none started cold
        # No spare was lost in the race: every spare Ray lists is bound or back in the queue.
        assert now[""] - before[""] == await a.spare_count()
    finally:
        for handle, _ in activated:
            await asyncio.to_thread(forget_actor, handle)
        await a.retire_all()


async def _stall_every_other_period(proxy: TcpProxy) -> None:
    while True:
        await asyncio.sleep(STALL_S)
        proxy.stall(STALL_S)
        await asyncio.sleep(STALL_S)


async def test_a_spare_claim_is_idempotent_per_call_and_settles_once(
    redis_mgr: AsyncAzureRedisManager,
) -> None:
    """What makes a lost reply harmless: asking again for the same call gets the same spare,
    and settling on another owner puts the claimed spare back at the front, once."""
    pool = f"pool-{uuid.uuid4().hex[:8]}"
    for name in ("spare-a", "spare-b", "spare-c"):
        await redis_mgr.add_spare(pool, name)
    assert await redis_mgr.claim_spare(pool, "call-1") == SpareClaim("spare-a", None)
    again = await redis_mgr.claim_spare(pool, "call-1")  # a retry, or the other replica
    assert again == SpareClaim("spare-a", None)
    assert await redis_mgr.claim_spare(pool, "call-2") == SpareClaim("spare-b", None)
    assert await redis_mgr.settle_spare_claim(pool, "call-1", "spare-a") is False  # it is the owner
    assert await redis_mgr.settle_spare_claim(pool, "call-2", "call-2") is True  # bound otherwise
    assert await redis_mgr.settle_spare_claim(pool, "call-2", "call-2") is False  # settled once
    assert await redis_mgr.pop_spare(pool) == "spare-b"  # back first: the oldest spare
    assert await redis_mgr.spare_count(pool) == 1
