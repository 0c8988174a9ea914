"""What the monitoring baselines read of Redis: its memory against its limit, this client's
connection-pool use, and how long live calls' conversation contexts have left to live.

Pure values and parsing; the reads are RedisConnection.health and
ConversationStore.context_ttls, the export is gateway/metrics.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RedisHealth:
    memory_used_bytes: int
    memory_max_bytes: int  # 0: no maxmemory configured (no ratio then)
    pool_in_use: int
    pool_max: int  # 0: not known (a cluster client keeps one pool per node)

    @property
    def memory_ratio(self) -> float | None:
        if self.memory_max_bytes <= 0:
            return None
        return self.memory_used_bytes / self.memory_max_bytes

    @property
    def pool_utilisation(self) -> float | None:
        if self.pool_max <= 0:
            return None
        return self.pool_in_use / self.pool_max


def memory_from_info(info: dict[str, Any]) -> tuple[int, int]:
    """(used_memory, maxmemory) from ``INFO memory``; missing or odd fields read as 0."""

    def number(name: str) -> int:
        try:
            return max(0, int(info.get(name) or 0))
        except (TypeError, ValueError):
            return 0

    return number("used_memory"), number("maxmemory")


def pool_usage(client: Any) -> tuple[int, int]:
    """(connections in use, pool size) of a redis-py client with one connection pool."""
    pool = getattr(client, "connection_pool", None)
    in_use = getattr(pool, "_in_use_connections", None)
    size = getattr(pool, "max_connections", 0)
    if pool is None or in_use is None or not isinstance(size, int):
        return 0, 0
    return len(in_use), size


def ttl_headroom_s(ttls_ms: list[int]) -> float | None:
    """The shortest remaining TTL, in seconds, among keys that exist and expire (PTTL >= 0);
    a live call whose context key is missing (-2) or never expires (-1) is not counted here."""
    alive = [ttl for ttl in ttls_ms if ttl >= 0]
    return min(alive) / 1000.0 if alive else None
