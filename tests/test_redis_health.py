"""storage/redis_health.py: the baselines' figures from Redis's own answers."""

from __future__ import annotations

from storage.redis_health import RedisHealth, memory_from_info, pool_usage, ttl_headroom_s


def test_ratios_only_when_there_is_a_limit() -> None:
    assert RedisHealth(70, 100, 9, 10).memory_ratio == 0.7
    assert RedisHealth(70, 100, 9, 10).pool_utilisation == 0.9
    assert RedisHealth(70, 0, 0, 0).memory_ratio is None  # no maxmemory
    assert RedisHealth(70, 0, 0, 0).pool_utilisation is None


def test_memory_fields_tolerate_odd_answers() -> None:
    assert memory_from_info({"used_memory": 5, "maxmemory": "10"}) == (5, 10)
    assert memory_from_info({"used_memory": "x", "maxmemory": None}) == (0, 0)
    assert memory_from_info({}) == (0, 0)


def test_pool_usage_of_a_client_without_one_pool_is_unknown() -> None:
    assert pool_usage(object()) == (0, 0)


def test_headroom_is_the_shortest_ttl_of_keys_that_expire() -> None:
    assert ttl_headroom_s([1_800_000, 299_000, -1, -2]) == 299.0
    assert ttl_headroom_s([-2, -1]) is None
    assert ttl_headroom_s([]) is None
