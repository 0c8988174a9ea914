"""User profiles: the archive is the record, Redis a read-through cache invalidated on write.

A Redis outage only costs cache hits: reads fall back to the archive. It never writes a profile
to the cache that it did not just read from the archive.
"""

from __future__ import annotations

import logging
from typing import Any

from storage.archive import ArchiveStore, prepare_profile, validate_archive_id
from storage.errors import RedisUnavailableError
from storage.redis_manager import AsyncAzureRedisManager

log = logging.getLogger(__name__)


class ProfileRepository:
    """Reads profiles through the Redis cache; writes go to the archive, then drop the cache."""

    def __init__(self, archive: ArchiveStore, redis_mgr: AsyncAzureRedisManager) -> None:
        self.archive = archive
        self.redis = redis_mgr

    async def get(self, user_id: str) -> dict[str, Any] | None:
        validate_archive_id(user_id, "user_id", user=True)
        try:
            cached = await self.redis.get_cached_profile(user_id)
        except RedisUnavailableError as exc:
            log.warning("profile cache unavailable, reading the archive: %s", type(exc).__name__)
            return await self.archive.get_profile(user_id)
        if cached is not None:
            return cached
        profile = await self.archive.get_profile(user_id)
        if profile is not None:
            try:
                await self.redis.set_cached_profile(user_id, profile)
            except RedisUnavailableError as exc:
                # The user id is a phone number: never logged.
                log.warning("could not cache a profile: %s", type(exc).__name__)
        return profile

    async def put(self, profile: dict[str, Any]) -> None:
        """Write the profile, then invalidate its cache entry.

        If Redis is unreachable the archive write stands and RedisUnavailableError is raised, so
        the caller knows the cache may still serve the old profile (until its TTL) and can retry.
        """
        user_id = prepare_profile(profile)["user_id"]
        await self.archive.put_profile(profile)
        await self.redis.invalidate_profile(user_id)
