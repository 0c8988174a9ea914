"""AffinityRouter against the real redis-server: known/ended calls, resolve()'s affinity cache,
and this replica's worker affinity (media sockets held, heartbeat).

Ray itself (activating an actor through the warm pool) is covered by the e2e tests: here the
pool fails the test if it is reached, except in the one test that stands in for it to check when
resolve() activates.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import pytest

from actors.call_state import CallEnded
from actors.pool import WarmPool
from gateway import affinity_routing
from gateway.affinity_routing import AffinityRouter
from storage.affinity import AffinityRecord, Endpoint
from storage.errors import RedisUnavailableError
from storage.redis_manager import AsyncAzureRedisManager
from tests.helpers import eventually


class Clock:
    """Stands in for the ``time`` module inside gateway.affinity_routing (only monotonic())."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(affinity_routing, "time", fake)
    return fake


class NoRayPool:
    """Stands in for the warm pool: these tests cover the Redis paths, never Ray."""

    async def activate(
        self, call_id: str, incoming: Any = None, *, alongside: Any = None
    ) -> tuple[Any, Endpoint]:
        pytest.fail("resolve() went to Ray: these tests cover the Redis paths only")

    async def handle(self, call_id: str) -> Any:
        return None


@pytest.fixture
def router(redis_mgr: AsyncAzureRedisManager) -> AffinityRouter:
    pool = cast(WarmPool, NoRayPool())
    return AffinityRouter(redis_mgr, pool, f"gw-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def call_id() -> str:
    return f"call-{uuid.uuid4().hex[:12]}"


def record(call_id: str, epoch: int, port: int = 40_000) -> AffinityRecord:
    return AffinityRecord(
        call_id=call_id,
        host="10.0.0.7",
        port=port + epoch,
        token=f"token-{epoch}",
        epoch=epoch,
        node_id="node-1",
    )


def endpoint_of(rec: AffinityRecord) -> Endpoint:
    return rec.endpoint


async def test_known_and_ended_come_from_the_call_session_and_summary(
    router: AffinityRouter, redis_mgr: AsyncAzureRedisManager, call_id: str
) -> None:
    assert not await router.is_known(call_id)
    assert not await router.has_ended(call_id)

    await redis_mgr.store_call_session(call_id, {"state": "connected"})
    assert await router.is_known(call_id)
    assert not await router.has_ended(call_id)

    await redis_mgr.set_call_summary(call_id, {"turns": 2, "ended_by": "caller"})
    assert await router.has_ended(call_id)
    assert not await router.has_ended(f"{call_id}-other")


async def test_unknown_call_resolves_to_none(router: AffinityRouter, call_id: str) -> None:
    assert await router.resolve(call_id, False) is None
    assert await router.resolve(call_id, True) is None


async def test_resolve_uses_the_affinity_record_and_caches_it_for_two_seconds(
    router: AffinityRouter,
    redis_mgr: AsyncAzureRedisManager,
    call_id: str,
    clock: Clock,
) -> None:
    await redis_mgr.store_call_session(call_id, {"state": "connected"})
    first = record(call_id, 1)
    assert await redis_mgr.claim_affinity(first)
    assert await router.resolve(call_id, False) == endpoint_of(first)

    # The actor restarts: a new epoch on a new port. Within 2 s the cached endpoint is used.
    second = record(call_id, 2)
    assert await redis_mgr.claim_affinity(second)
    clock.now += 1.9
    assert await router.resolve(call_id, False) == endpoint_of(first)


async def test_cache_expires_after_two_seconds(
    router: AffinityRouter,
    redis_mgr: AsyncAzureRedisManager,
    call_id: str,
    clock: Clock,
) -> None:
    first, second = record(call_id, 1), record(call_id, 2)
    assert await redis_mgr.claim_affinity(first)
    assert await router.resolve(call_id, False) == endpoint_of(first)
    assert await redis_mgr.claim_affinity(second)
    clock.now += 2.0
    assert await router.resolve(call_id, False) == endpoint_of(second)
    clock.now += 1.0  # re-cached at the last lookup
    assert await redis_mgr.claim_affinity(record(call_id, 3))
    assert await router.resolve(call_id, False) == endpoint_of(second)


async def test_refresh_reads_the_newer_record_at_once(
    router: AffinityRouter,
    redis_mgr: AsyncAzureRedisManager,
    call_id: str,
    clock: Clock,
) -> None:
    first, second = record(call_id, 1), record(call_id, 2)
    assert await redis_mgr.claim_affinity(first)
    assert await router.resolve(call_id, False) == endpoint_of(first)
    assert await redis_mgr.claim_affinity(second)
    assert await router.resolve(call_id, True) == endpoint_of(second)  # no waiting for 2 s
    assert await router.resolve(call_id, False) == endpoint_of(second)  # and cached


async def test_without_a_cache_entry_any_record_is_used(
    router: AffinityRouter, redis_mgr: AsyncAzureRedisManager, call_id: str
) -> None:
    rec = record(call_id, 5)
    assert await redis_mgr.claim_affinity(rec)
    assert await router.resolve(call_id, True) == endpoint_of(rec)


async def test_an_ended_call_raises_call_ended_and_is_forgotten(
    router: AffinityRouter,
    redis_mgr: AsyncAzureRedisManager,
    call_id: str,
    clock: Clock,
) -> None:
    await redis_mgr.store_call_session(call_id, {"state": "connected"})
    first = record(call_id, 1)
    assert await redis_mgr.claim_affinity(first)
    assert await router.resolve(call_id, False) == endpoint_of(first)

    # The call ends: the actor writes the summary and its lease is released.
    await redis_mgr.set_call_summary(call_id, {"turns": 0})
    assert await redis_mgr.release_affinity(call_id, first.epoch)
    assert await redis_mgr.get_affinity(call_id) is None
    with pytest.raises(CallEnded):
        await router.resolve(call_id, True)
    # Forgotten: no stale endpoint is served from the cache afterwards.
    with pytest.raises(CallEnded):
        await router.resolve(call_id, False)


async def test_an_ended_call_that_never_had_an_actor_raises_call_ended(
    router: AffinityRouter, redis_mgr: AsyncAzureRedisManager, call_id: str
) -> None:
    await redis_mgr.store_call_session(call_id, {"state": "disconnected"})
    await redis_mgr.set_call_summary(call_id, {"turns": 0})
    with pytest.raises(CallEnded):
        await router.resolve(call_id, False)


async def test_refresh_never_returns_the_endpoint_it_already_had(
    router: AffinityRouter,
    redis_mgr: AsyncAzureRedisManager,
    call_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bridge refreshes because the cached endpoint failed: an unchanged record means the
    actor is gone, so the router (re)activates it rather than handing the dead one back."""
    first = record(call_id, 1)
    assert await redis_mgr.claim_affinity(first)
    assert await router.resolve(call_id, False) == endpoint_of(first)
    assert await router.resolve(call_id, True) is None  # not ours to activate: unknown call

    activated: list[str] = []

    async def activate(
        cid: str, incoming: Any = None, *, alongside: Any = None
    ) -> tuple[Any, Endpoint]:
        activated.append(cid)
        return object(), Endpoint("10.0.0.8", 41_002, "t2", 2)

    monkeypatch.setattr(router.pool, "activate", activate)
    await redis_mgr.store_call_session(call_id, {"state": "connected"})
    assert await router.resolve(call_id, True) == Endpoint("10.0.0.8", 41_002, "t2", 2)
    assert activated == [call_id]
    assert await router.resolve(call_id, False) == Endpoint("10.0.0.8", 41_002, "t2", 2)


async def test_only_the_media_socket_is_held_in_worker_affinity(
    router: AffinityRouter, redis_mgr: AsyncAzureRedisManager, call_id: str
) -> None:
    assert await redis_mgr.claim_affinity(record(call_id, 1))
    await router.claim_socket(call_id, "transcription", opened_at=1.0)
    assert await redis_mgr.worker_calls(router.replica_id) == set()

    await router.claim_socket(call_id, "media", opened_at=1.0)
    assert await redis_mgr.worker_calls(router.replica_id) == {call_id}
    rec = await redis_mgr.get_affinity(call_id)
    assert rec is not None and rec.media_replica == router.replica_id

    await router.release_socket(call_id, "transcription")
    assert await redis_mgr.worker_calls(router.replica_id) == {call_id}
    await router.release_socket(call_id, "media")
    assert await redis_mgr.worker_calls(router.replica_id) == set()


async def test_heartbeat_renews_the_replica_and_outlives_redis_errors(
    router: AffinityRouter, redis_mgr: AsyncAzureRedisManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    beats: list[str] = []

    async def heartbeat_worker(replica_id: str) -> None:
        beats.append(replica_id)
        if len(beats) == 1:
            raise RedisUnavailableError("down")

    monkeypatch.setattr(redis_mgr, "heartbeat_worker", heartbeat_worker)
    monkeypatch.setattr(affinity_routing, "WORKER_HEARTBEAT_S", 0.01)
    task = asyncio.create_task(router.heartbeat())
    try:
        await eventually(lambda: len(beats) >= 3)
    finally:
        task.cancel()
    assert set(beats) == {router.replica_id}


async def test_callbacks_wait_for_the_calls_being_set_up_here(router: AffinityRouter) -> None:
    released = asyncio.Event()

    async def set_up(call_id: str) -> None:
        async with router.answering(call_id):
            await released.wait()

    setups = [asyncio.create_task(set_up(f"call-{n}")) for n in range(2)]
    await asyncio.sleep(0)
    waiting = asyncio.create_task(router.setups_settled(max_wait_s=30))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # both set-ups still hold it
    released.set()
    await asyncio.wait_for(waiting, 5)
    await asyncio.gather(*setups)
    await asyncio.wait_for(router.setups_settled(max_wait_s=30), 1)  # none: no wait at all


async def test_a_set_up_that_never_ends_holds_callbacks_only_briefly(
    router: AffinityRouter,
) -> None:
    stuck = asyncio.Event()

    async def set_up() -> None:
        async with router.answering("call-stuck"):
            await stuck.wait()

    setup = asyncio.create_task(set_up())
    await asyncio.sleep(0)
    await asyncio.wait_for(router.setups_settled(max_wait_s=0.05), 5)  # returns, not raises
    stuck.set()
    await setup
