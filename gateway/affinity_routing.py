"""Affinity routing: which call actor gets a call's frames and events, and this replica's side of
worker affinity (the media sockets it holds, its heartbeat).

The gateway's only link to actors: affinity records in Redis (with a small local cache) and
Ray. Activates an actor only for calls this deployment answered (a call session exists in
Redis) and never for a call that has ended (its summary exists).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import ray

from actors.call_state import CallEnded
from actors.pool import WarmPool
from storage.affinity import AffinityRecord, Endpoint
from storage.errors import StorageError
from storage.redis_manager import AsyncAzureRedisManager

log = logging.getLogger(__name__)

WORKER_HEARTBEAT_S = 10.0
# While calls are being set up here, callbacks wait for them, at most this long: in a burst the
# CPU goes to answering and binding first (set-up p99 of 20 calls at once 0.35 -> 0.22-0.25 s,
# bench call_setup). Media sockets never wait: the caller's first words ride on them.
SETUP_PRIORITY_S = 0.25


class AffinityRouter:
    """Routes one replica's calls to their actors through the affinity records."""

    def __init__(
        self,
        redis_mgr: AsyncAzureRedisManager,
        pool: WarmPool,
        replica_id: str,
        *,
        cache_ttl_s: float = 2.0,
    ) -> None:
        self._redis = redis_mgr
        self.pool = pool
        self.replica_id = replica_id
        self._cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[float, Endpoint]] = {}
        self._handles: dict[str, Any] = {}
        self._inflight: set[asyncio.Future[Any]] = set()
        # Calls this replica is answering (binding, session, actor): their events and sockets
        # wait for it, rather than race it to an actor that lacks the call's fields.
        self._answering: dict[str, asyncio.Event] = {}
        self._settled = asyncio.Event()  # no call is being set up
        self._settled.set()

    async def activate(
        self,
        call_id: str,
        incoming: dict[str, Any] | None = None,
        *,
        alongside: Awaitable[object] | None = None,
    ) -> Endpoint:
        """Get or create the call's actor and wait until its stream endpoint is registered;
        ``alongside`` runs while the actor is looked up and is done before it is called.

        Raises CallEnded if the call is already over (the actor refuses to come back).
        """
        try:
            handle, endpoint = await self.pool.activate(call_id, incoming, alongside=alongside)
        except CallEnded:
            self.forget(call_id)
            raise
        self._handles[call_id] = handle
        self._cache[call_id] = (time.monotonic(), endpoint)
        return endpoint

    @contextlib.asynccontextmanager
    async def answering(self, call_id: str) -> AsyncIterator[None]:
        """While this replica answers ``call_id``: CallConnected can overtake the answer's
        activation, and with Redis down nothing else would give the actor the call's fields."""
        done = self._answering[call_id] = asyncio.Event()
        self._settled.clear()
        try:
            yield
        finally:
            done.set()
            del self._answering[call_id]
            if not self._answering:
                self._settled.set()

    async def setups_settled(self, max_wait_s: float = SETUP_PRIORITY_S) -> None:
        """Wait until no call is being set up on this replica, at most ``max_wait_s``."""
        if not self._settled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), max_wait_s)

    async def _answered(self, call_id: str) -> None:
        answering = self._answering.get(call_id)
        if answering is not None:
            await answering.wait()

    async def is_known(self, call_id: str) -> bool:
        """This deployment answered the call (its session is in Redis)."""
        return await self._redis.load_call_session(call_id) is not None

    async def has_ended(self, call_id: str) -> bool:
        return await self._redis.get_call_summary(call_id) is not None

    async def resolve(self, call_id: str, refresh: bool) -> Endpoint | None:
        """The actor's current endpoint; None while unknown or unreachable; CallEnded when over."""
        await self._answered(call_id)
        cached = self._cache.get(call_id)
        if cached and not refresh and time.monotonic() - cached[0] < self._cache_ttl_s:
            return cached[1]
        try:
            record: AffinityRecord | None = await self._redis.get_affinity(call_id)
            if record is not None and not (refresh and cached and record.epoch <= cached[1].epoch):
                endpoint = record.endpoint
                self._cache[call_id] = (time.monotonic(), endpoint)
                return endpoint
            if await self.has_ended(call_id):
                self.forget(call_id)
                raise CallEnded(call_id)
            if not await self.is_known(call_id):
                return None
        except StorageError as exc:
            # Redis unreachable: fall back to asking Ray, which holds the actor regardless.
            log.warning("affinity lookup failed: %s", type(exc).__name__)
        try:
            return await self.activate(call_id)
        except ray.exceptions.RayError as exc:
            log.warning("actor activation failed: %s", type(exc).__name__)
            return None

    async def deliver(self, call_id: str, event: dict[str, Any]) -> bool:
        """Hand one callback event to the call's actor without waiting for it to be handled.

        False for a call nobody here answered; CallEnded once the call is over: ACS goes on
        sending events after CallDisconnected, and they must not reach the ended call's actor.
        """
        await self._answered(call_id)
        with contextlib.suppress(StorageError):  # Redis down: the actor itself decides
            if await self.has_ended(call_id):
                self.forget(call_id)
                raise CallEnded(call_id)
        handle: Any = self._handles.get(call_id)
        if handle is None:
            handle = await self.pool.handle(call_id)
            if handle is None:
                if not await self.is_known(call_id):
                    return False
                await self.activate(call_id)  # CallEnded if the call is over
                return await self.deliver(call_id, event)
            self._handles[call_id] = handle
        future = asyncio.wrap_future(handle.handle_event.remote(event, call_id).future())
        self._inflight.add(future)
        future.add_done_callback(self._event_done)
        return True

    def _event_done(self, future: asyncio.Future[Any]) -> None:
        self._inflight.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.warning("actor event delivery failed: %s", type(future.exception()).__name__)

    def forget(self, call_id: str) -> None:
        self._cache.pop(call_id, None)
        self._handles.pop(call_id, None)

    # Worker affinity: which replica holds each call's media socket. Best effort: without
    # Redis the call goes on, only the record of where its socket is goes stale.

    async def claim_socket(self, call_id: str, stream: str, opened_at: float) -> None:
        if stream != "media":
            return
        with contextlib.suppress(StorageError):
            await self._redis.add_worker_call(self.replica_id, call_id)
            await self._redis.set_media_replica(call_id, self.replica_id, since=opened_at)

    async def release_socket(self, call_id: str, stream: str) -> None:
        if stream != "media":
            return
        with contextlib.suppress(StorageError):
            await self._redis.remove_worker_call(self.replica_id, call_id)

    async def heartbeat(self) -> None:
        """Keep this replica's worker-affinity record alive; runs until cancelled."""
        while True:
            with contextlib.suppress(StorageError):
                await self._redis.heartbeat_worker(self.replica_id)
            await asyncio.sleep(WORKER_HEARTBEAT_S)
