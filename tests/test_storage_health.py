"""gateway/storage_health.py against a real redis-server: memory, pool use and the TTL headroom
of the contexts of the calls a replica carries, as /metrics shows them."""

from __future__ import annotations

import uuid

from prometheus_client import CollectorRegistry, generate_latest

from gateway.storage_health import StorageHealth
from simulator.devstack.local_redis import free_port
from storage.conversation import ConversationManager
from storage.keys import RedisKeyManager
from storage.redis_manager import AsyncAzureRedisManager


async def test_a_scrape_reads_memory_pool_and_live_calls_ttl(
    redis_mgr: AsyncAzureRedisManager,
) -> None:
    call_id = f"call-{uuid.uuid4().hex[:8]}"
    cm = await ConversationManager.from_redis(call_id, redis_mgr)
    await cm.claim_epoch()
    await cm.update_context({"customer": "Ada"})
    await cm.persist()
    await redis_mgr.add_worker_call("gw-health", call_id)

    health = StorageHealth(redis_mgr, "gw-health")
    await health.refresh()
    assert health.health is not None and health.health.memory_used_bytes > 0
    assert health.health.pool_max > 0
    assert health.ttl_headroom_s is not None and 1700 < health.ttl_headroom_s <= 1800

    registry = CollectorRegistry()
    registry.register(health)
    text = generate_latest(registry).decode()
    assert "rtvoice_gateway_call_context_ttl_headroom_seconds 1" in text
    assert "rtvoice_gateway_redis_pool_utilisation_ratio" in text


async def test_without_redis_the_figures_go_missing_and_the_failure_is_counted(
    key_manager: RedisKeyManager,
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with AsyncAzureRedisManager.from_url(nowhere, key_manager, op_timeout=0.5) as redis:
        health = StorageHealth(redis, "gw-health")
        health.ttl_headroom_s = 1.0  # a previous reading
        await health.refresh()
    assert health.health is None and health.ttl_headroom_s is None
    assert health.read_failures == 1
