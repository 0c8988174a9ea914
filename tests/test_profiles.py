"""ProfileRepository: read-through Redis cache over the archive, invalidated on write."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from simulator.devstack.local_redis import LocalRedisServer
from storage.errors import ArchiveError, RedisUnavailableError
from storage.keys import RedisKeyManager
from storage.profiles import ProfileRepository
from storage.redis_manager import AsyncAzureRedisManager
from storage.sqlite_archive import SqliteArchive


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[SqliteArchive]:
    async with SqliteArchive(tmp_path / "archive.sqlite3") as store:
        yield store


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def cached(raw_redis: Redis, key: str) -> dict[str, Any] | None:
    raw = await raw_redis.get(key)
    return None if raw is None else dict(orjson.loads(raw))


@pytest.fixture
def repo(archive: SqliteArchive, redis_mgr: AsyncAzureRedisManager) -> ProfileRepository:
    return ProfileRepository(archive, redis_mgr)


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


async def test_read_goes_through_the_cache(
    repo: ProfileRepository, archive: SqliteArchive, raw_redis: Redis, key_manager: RedisKeyManager
) -> None:
    user_id = new_user()
    await archive.put_profile({"user_id": user_id, "name": "Ada"})
    key = key_manager.user_key(user_id)
    assert await raw_redis.exists(key) == 0

    first = await repo.get(user_id)
    assert first == {"user_id": user_id, "id": user_id, "name": "Ada"}
    assert await cached(raw_redis, key) == first
    assert await raw_redis.ttl(key) > 0

    # Changed behind the repository's back: the cached copy is what a read returns.
    await archive.put_profile({"user_id": user_id, "name": "Changed"})
    assert await repo.get(user_id) == first


async def test_write_invalidates_the_cache(
    repo: ProfileRepository, raw_redis: Redis, key_manager: RedisKeyManager
) -> None:
    user_id = new_user()
    key = key_manager.user_key(user_id)
    await repo.put({"user_id": user_id, "name": "Ada"})
    assert (await repo.get(user_id) or {})["name"] == "Ada"
    assert await raw_redis.exists(key) == 1

    await repo.put({"user_id": user_id, "name": "Ada L."})
    assert await raw_redis.exists(key) == 0
    assert (await repo.get(user_id) or {})["name"] == "Ada L."
    assert (await cached(raw_redis, key) or {})["name"] == "Ada L."


async def test_missing_profile_is_not_cached(
    repo: ProfileRepository, raw_redis: Redis, key_manager: RedisKeyManager
) -> None:
    user_id = new_user()
    assert await repo.get(user_id) is None
    assert await raw_redis.exists(key_manager.user_key(user_id)) == 0


async def test_an_acs_user_callers_profile_is_read_and_cached(
    repo: ProfileRepository, raw_redis: Redis, key_manager: RedisKeyManager
) -> None:
    """Replay finding: most recorded callers are ACS users, whose raw id holds ':'."""
    user_id = f"8:acs:6b2c9e2a-1f3d-4c6b-9e1a-000000000000_{uuid.uuid4()}"
    await repo.put({"user_id": user_id, "name": "Ada"})
    assert (await repo.get(user_id) or {})["name"] == "Ada"
    key = key_manager.user_key(user_id)
    assert await raw_redis.exists(key) == 1 and user_id not in key


async def test_bad_user_id_is_refused(repo: ProfileRepository) -> None:
    with pytest.raises(ArchiveError, match="user_id"):
        await repo.get("a/b")
    with pytest.raises(ArchiveError, match="user_id"):
        await repo.put({"name": "nobody"})


async def test_redis_down_reads_the_archive_and_write_reports_stale_cache(
    repo: ProfileRepository, archive: SqliteArchive, redis_server: LocalRedisServer
) -> None:
    user_id = new_user()
    await repo.put({"user_id": user_id, "name": "Ada"})
    redis_server.stop()
    try:
        assert (await repo.get(user_id) or {})["name"] == "Ada"
        with pytest.raises(RedisUnavailableError):
            await repo.put({"user_id": user_id, "name": "Ada L."})
        # The archive write happened before the invalidation failed.
        assert (await archive.get_profile(user_id) or {})["name"] == "Ada L."
    finally:
        redis_server.start()
