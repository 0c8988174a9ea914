"""The monitoring baselines read from Redis when Prometheus scrapes a replica: Redis memory
against its limit, this replica's connection-pool use, and the TTL headroom of the conversation
contexts of the calls whose media this replica carries (gateway/deploy/prometheus-rules.yaml
alerts on each).

Read at scrape time (every 15-60 s), not per call: two Redis round trips per scrape.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from storage.errors import StorageError
from storage.redis_health import RedisHealth, ttl_headroom_s
from storage.redis_manager import AsyncAzureRedisManager

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 2.0


class StorageHealth(Collector):
    def __init__(self, redis: AsyncAzureRedisManager, replica_id: str) -> None:
        self._redis = redis
        self._replica = replica_id
        self.health: RedisHealth | None = None
        self.ttl_headroom_s: float | None = None
        self.read_failures = 0

    async def refresh(self) -> None:
        """Read the figures anew; on a Redis failure they go missing (and are counted), so an
        alert on them does not fire on stale values (Redis down has alerts of its own)."""
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                self.health = await self._redis.health()
                calls = sorted(await self._redis.worker_calls(self._replica))
                self.ttl_headroom_s = ttl_headroom_s(await self._redis.context_ttls(calls))
        except (StorageError, TimeoutError) as exc:
            self.read_failures += 1
            self.health = self.ttl_headroom_s = None
            log.info("reading Redis health failed: %s", type(exc).__name__)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        health = self.health
        if health is not None:
            yield GaugeMetricFamily(
                "rtvoice_gateway_redis_memory_used_bytes",
                "Redis used_memory (INFO memory)",
                value=health.memory_used_bytes,
            )
            if health.memory_ratio is not None:
                yield GaugeMetricFamily(
                    "rtvoice_gateway_redis_memory_used_ratio",
                    "Redis used_memory over maxmemory",
                    value=health.memory_ratio,
                )
            if health.pool_utilisation is not None:
                yield GaugeMetricFamily(
                    "rtvoice_gateway_redis_pool_utilisation_ratio",
                    "This replica's Redis connections in use over its pool size",
                    value=health.pool_utilisation,
                )
        if self.ttl_headroom_s is not None:
            yield GaugeMetricFamily(
                "rtvoice_gateway_call_context_ttl_headroom_seconds",
                "Shortest remaining TTL of the conversation context of a live call on this "
                "replica (refreshed by each checkpoint; expired, a restarted actor finds nothing)",
                value=self.ttl_headroom_s,
            )
        yield GaugeMetricFamily(
            "rtvoice_gateway_redis_health_read_failures",
            "Scrapes whose Redis health reading failed",
            value=self.read_failures,
        )
