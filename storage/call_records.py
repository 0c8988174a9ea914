"""A call's own records in Redis: its session, its URL binding (auth state), its end-of-call
summary, and the once-only claim to answer an incoming call.

Owns the ``call:{id}`` session, auth, summary and answer keys; never reads or writes a
conversation or an affinity record.
"""

from __future__ import annotations

from typing import Any

from storage.keys import ANSWER_CLAIM_SECONDS, TTL_POLICIES, Component, DataType
from storage.redis_connection import RedisConnection


class CallRecordStore(RedisConnection):
    """Call session, auth state, call summary (JSON with their TTLs) and the answer claim."""

    async def store_call_session(self, call_id: str, session: dict[str, Any]) -> None:
        key = self.keys.call_key(call_id, Component.SESSION)
        await self._set_json("store_call_session", key, session, TTL_POLICIES["session_history"])

    async def load_call_session(self, call_id: str) -> dict[str, Any] | None:
        key = self.keys.call_key(call_id, Component.SESSION)
        return await self._get_json("load_call_session", key)

    async def set_auth_state(self, call_id: str, state: dict[str, Any]) -> None:
        key = self.keys.call_key(call_id, Component.AUTH)
        await self._set_json("set_auth_state", key, state, TTL_POLICIES["authentication_state"])

    async def get_auth_state(self, call_id: str) -> dict[str, Any] | None:
        return await self._get_json("get_auth_state", self.keys.call_key(call_id, Component.AUTH))

    async def claim_answer(self, context_digest: str) -> bool:
        """True for the first claim of an incoming call context (its digest), across replicas:
        Event Grid redelivers, and a context must be answered at most once."""
        key = self.keys.key(DataType.CALL, f"ctx-{context_digest}", Component.ANSWER)
        async with self._op("claim_answer"):
            won = await self._client.set(key, b"1", nx=True, ex=ANSWER_CLAIM_SECONDS)
        return bool(won)

    async def set_call_summary(self, call_id: str, summary: dict[str, Any]) -> None:
        key = self.keys.call_key(call_id, Component.SUMMARY)
        await self._set_json("set_call_summary", key, summary, TTL_POLICIES["call_summary"])

    async def get_call_summary(self, call_id: str) -> dict[str, Any] | None:
        key = self.keys.call_key(call_id, Component.SUMMARY)
        return await self._get_json("get_call_summary", key)
