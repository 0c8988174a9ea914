"""Which call a callback or WebSocket URL opens: the URL's nonce bound to one call id.

ACS assigns the call connection id only in the answer's reply, so the URLs handed to ACS with the
answer cannot name their call. As soon as the answer returns, the answering replica binds the
URLs' nonce (its SHA-256, never the nonce itself) to the call id in ``call:{id}:auth``, which the
call actor's heartbeat keeps alive while the call lives. Every replica then checks that a request
for call X carries the nonce issued for X, in constant time. A bounded local copy lets a replica
that has seen a call once go on through a Redis outage. Never logs a nonce.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass

from cachetools import TTLCache

from gateway.auth import AuthError
from storage.errors import StorageError
from storage.keys import TTL_POLICIES
from storage.redis_manager import AsyncAzureRedisManager

LOCAL_ENTRIES = 10_000  # calls a replica remembers; each entry is < 300 bytes
LOCAL_TTL_S = TTL_POLICIES["session_history"]
POLL_S = 0.1


class BindingUnavailable(Exception):
    """Redis is unreachable and this replica has no copy: the request cannot be checked now."""


@dataclass(frozen=True, slots=True)
class Binding:
    nonce_sha256: str
    correlation_id: str

    def to_dict(self) -> dict[str, str]:
        return {"nonce_sha256": self.nonce_sha256, "correlation_id": self.correlation_id}

    @classmethod
    def from_dict(cls, doc: dict[str, object]) -> Binding | None:
        digest, correlation = doc.get("nonce_sha256"), doc.get("correlation_id", "")
        if not isinstance(digest, str) or not isinstance(correlation, str):
            return None
        return cls(digest, correlation)


def nonce_digest(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


class CallBindings:
    def __init__(self, redis: AsyncAzureRedisManager, *, local_entries: int = LOCAL_ENTRIES):
        self._redis = redis
        self._local: TTLCache[str, Binding] = TTLCache(maxsize=local_entries, ttl=LOCAL_TTL_S)

    async def bind(self, call_id: str, nonce: str, correlation_id: str) -> None:
        """Bind the answered call's URL nonce to its id; raises StorageError if Redis is down
        (this replica still knows the binding; others learn it once Redis is back)."""
        binding = Binding(nonce_digest(nonce), correlation_id)
        self._local[call_id] = binding
        await self._redis.set_auth_state(call_id, binding.to_dict())

    async def lookup(self, call_id: str) -> Binding | None:
        """The call's binding; None if no call of that id was answered here."""
        found = self._local.get(call_id)
        if found is not None:
            return found
        try:
            doc = await self._redis.get_auth_state(call_id)
        except StorageError as exc:
            raise BindingUnavailable(call_id) from exc
        binding = Binding.from_dict(doc) if doc is not None else None
        if binding is not None:
            self._local[call_id] = binding
        return binding

    async def wait_for(self, call_id: str, timeout_s: float) -> Binding | None:
        """ACS may connect a WebSocket before the answer's reply reached us: wait a little."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            binding = await self.lookup(call_id)
            if binding is not None or loop.time() >= deadline:
                return binding
            await asyncio.sleep(POLL_S)

    @staticmethod
    def check(
        binding: Binding | None, nonce: str, correlation_id: str | None = None
    ) -> None:
        """Refuse a request whose URL nonce was not issued for this call (or whose ACS
        correlation id header names another call)."""
        if binding is None:
            raise AuthError("unknown_call")
        if not hmac.compare_digest(binding.nonce_sha256, nonce_digest(nonce)):
            raise AuthError("call_mismatch")
        if correlation_id and binding.correlation_id and correlation_id != binding.correlation_id:
            raise AuthError("correlation_mismatch")
