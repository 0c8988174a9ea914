"""Caches in Redis: synthesized speech (binary PCM, by voice, format and text) and user profiles.

Owns the TTS cache and profile cache keys and their TTLs; a cache is never the only copy of
anything (a miss costs a synthesis or an archive read, never data).
"""

from __future__ import annotations

from typing import Any

from storage.errors import PayloadTooLargeError, SerializationError
from storage.keys import PROFILE_CACHE_SECONDS, TTL_POLICIES
from storage.redis_connection import RedisConnection


class CacheStore(RedisConnection):
    """Get and set cached TTS audio; get, set and invalidate cached profiles."""

    async def get_tts(self, voice: str, audio_format: str, text: str) -> bytes | None:
        key = self.keys.tts_cache_key(voice, audio_format, text)
        async with self._op("get_tts"):
            value = await self._client.get(key)
        return value.encode() if isinstance(value, str) else value

    async def set_tts(self, voice: str, audio_format: str, text: str, pcm: bytes) -> None:
        if not isinstance(pcm, bytes | bytearray | memoryview):
            raise SerializationError("pcm must be bytes")
        if len(pcm) > self.limits.max_binary_bytes:
            raise PayloadTooLargeError(f"TTS audio is {len(pcm)} bytes")
        key = self.keys.tts_cache_key(voice, audio_format, text)
        async with self._op("set_tts"):
            await self._client.set(key, bytes(pcm), ex=TTL_POLICIES["tts_cache"])

    async def get_cached_profile(self, user_id: str) -> dict[str, Any] | None:
        return await self._get_json("get_cached_profile", self.keys.user_key(user_id))

    async def set_cached_profile(self, user_id: str, profile: dict[str, Any]) -> None:
        key = self.keys.user_key(user_id)
        await self._set_json("set_cached_profile", key, profile, PROFILE_CACHE_SECONDS)

    async def invalidate_profile(self, user_id: str) -> None:
        key = self.keys.user_key(user_id)
        async with self._op("invalidate_profile"):
            await self._client.delete(key)
