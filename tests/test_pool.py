"""The warm pool against real Ray and a real redis-server: spares started ahead of demand, one
actor per call when replicas race to bind it, a restarted bound actor finding its call again,
and a fresh process for every call."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import signal
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import ray
import redis.asyncio as aioredis

from actors.activation import SPARE_PREFIX, get_call_actor
from actors.config import CallActorConfig
from actors.pool import LIVE_HOLD_S, WarmPool, live_task_name, pool_target
from actors.stream_client import bind_spare, open_stream
from actors.stream_protocol import HandshakeRefused
from storage.affinity import Endpoint
from storage.conversation_store import CHECKPOINT_LUA
from storage.keys import Component
from storage.pool_store import encode_address
from storage.redis_manager import AsyncAzureRedisManager
from tests.helpers import eventually, spares_ready

pytestmark = pytest.mark.slow  # starts call actors on local Ray


@pytest.fixture
def config(
    actor_config: Callable[..., CallActorConfig], ray_cluster: dict[str, Any]
) -> CallActorConfig:
    return actor_config(
        ray_namespace=str(ray_cluster["namespace"]),
        checkpoint_interval_s=0.3,
        heartbeat_interval_s=0.5,
    )


def new_pool(
    redis_mgr: AsyncAzureRedisManager, config: CallActorConfig, spares: int = 2
) -> WarmPool:
    owner = f"gw-{uuid.uuid4().hex[:6]}"
    return WarmPool(redis_mgr, config, owner=owner, min_spares=spares, max_spares=spares)


@pytest.fixture
async def pool(
    redis_mgr: AsyncAzureRedisManager, config: CallActorConfig
) -> AsyncIterator[WarmPool]:
    warm = new_pool(redis_mgr, config)
    yield warm
    await warm.retire_all()


async def warm_up(pool: WarmPool, redis_mgr: AsyncAzureRedisManager, spares: int) -> None:
    await pool.refill_once()
    await spares_ready(pool, spares)


def actors_of(call_id: str, namespace: str) -> list[str]:
    """Every live spare bound to ``call_id``, from Ray's own actor list."""
    names = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") != namespace or not entry["name"].startswith(SPARE_PREFIX):
            continue
        handle = ray.get_actor(entry["name"], namespace=namespace)
        if ray.get(handle.bound_call.remote(), timeout=10) == call_id:
            names.append(entry["name"])
    return names


def test_the_target_follows_demand_between_floor_and_ceiling() -> None:
    assert pool_target(2, 16, 0) == 2
    assert pool_target(2, 16, 5) == 10
    assert pool_target(2, 16, 50) == 16


async def test_a_call_binds_a_warm_spare_and_the_pool_refills(
    pool: WarmPool,
    redis_mgr: AsyncAzureRedisManager,
    config: CallActorConfig,
    redis_url: str,
) -> None:
    checkpoint_sha = hashlib.sha1(CHECKPOINT_LUA.encode()).hexdigest()
    async with aioredis.Redis.from_url(redis_url) as admin:
        await admin.script_flush()  # as after a Redis restart
        await warm_up(pool, redis_mgr, 2)
        # A spare loads the scripts a call runs before it joins the pool, so a burst's binds
        # do not each meet NOSCRIPT (the checkpoint script: only an actor runs it).
        assert await admin.script_exists(checkpoint_sha) == [True]
    # What the spare's process holds is frozen out of the cyclic collector's reach (its exit
    # walks no module or client).
    spare = (await redis_mgr.spare_names(pool.name))[0]
    handle = await asyncio.to_thread(ray.get_actor, spare, namespace=config.namespace)
    assert await handle.__ray_call__.remote(lambda _: gc.get_freeze_count()) > 10_000
    call_id = f"call-{uuid.uuid4().hex[:10]}"
    handle, endpoint = await pool.activate(call_id, {"caller_id": "+14255550100"})
    assert pool.cold_starts == 0 and await redis_mgr.call_actor(call_id) is not None
    assert (pool.stream_binds, pool.ray_binds) == (1, 0)  # over its stream endpoint, not Ray
    info = await handle.info.remote()
    assert info["call_id"] == call_id and info["endpoint"] == endpoint
    incoming = await handle.__ray_call__.remote(lambda actor: actor.incoming)
    assert incoming["caller_id"] == "+14255550100"  # the answer's fields came with the bind
    # A bind again for its call gets the same epoch; a spare serves one call only.
    where = (endpoint.host, endpoint.port, endpoint.token)
    assert await bind_spare(*where, call_id, {}) == endpoint.epoch
    with pytest.raises(HandshakeRefused) as refused:
        await bind_spare(*where, f"call-{uuid.uuid4().hex[:10]}", {})
    assert refused.value.code == "spare_taken"
    # Operators and tests find it by call id; its repr names the call.
    found = await asyncio.to_thread(get_call_actor, call_id, config.namespace)
    assert found is not None
    assert await pool.spare_count() == 1
    await warm_up(pool, redis_mgr, 2)  # refilled
    await handle.shutdown.remote("test")


async def test_a_spare_whose_endpoint_cannot_be_reached_is_bound_through_ray(
    pool: WarmPool, redis_mgr: AsyncAzureRedisManager, redis_url: str
) -> None:
    await warm_up(pool, redis_mgr, 2)
    spare = (await redis_mgr.spare_names(pool.name))[0]
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    async with aioredis.Redis.from_url(redis_url) as admin:
        key = redis_mgr.keys.worker_key(pool.name, Component.ADDRESSES)
        stale = Endpoint("127.0.0.1", dead_port, "stale-token", 0)
        await admin.hset(key, spare, encode_address(stale))
    await serve_a_call_bound_through_ray(pool)


async def test_a_queued_spare_restarted_by_ray_is_bound_through_ray(
    pool: WarmPool, redis_mgr: AsyncAzureRedisManager
) -> None:
    """Its new process listens elsewhere with another token: the address queued with it is
    stale, so the stream bind fails (refused, or ``bad_token`` on a port reused) and Ray binds."""
    await warm_up(pool, redis_mgr, 2)
    oldest = (await redis_mgr.spare_names(pool.name))[0]  # the next call's
    handle = await pool.handle(oldest)
    pid = (await handle.info.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: _restarted(handle, pid), timeout=60)
    assert (await serve_a_call_bound_through_ray(pool))["pid"] != pid


async def serve_a_call_bound_through_ray(pool: WarmPool) -> dict[str, Any]:
    """A new call on the pool's next spare: bound through Ray, not over the spare's stream
    endpoint, and its stream endpoint opens. Returns the actor's ``info``."""
    call_id = f"call-{uuid.uuid4().hex[:10]}"
    handle, endpoint = await pool.activate(call_id, {"caller_id": "+14255550100"})
    assert (pool.stream_binds, pool.ray_binds, pool.cold_starts) == (0, 1, 0)
    info: dict[str, Any] = await handle.info.remote()
    assert info["call_id"] == call_id
    conn = await open_stream(endpoint.host, endpoint.port, endpoint.token, call_id, "media")
    await conn.close()
    await handle.shutdown.remote("test")
    return info


async def test_spare_starts_wait_while_calls_are_set_up_but_not_for_long(
    redis_mgr: AsyncAzureRedisManager, config: CallActorConfig
) -> None:
    # Starting a spare's process costs about a second of CPU; calls being set up come first.
    pool = WarmPool(
        redis_mgr, config, owner="gw-hold", min_spares=1, max_spares=1, refill_hold_s=0.3
    )
    pool._setting_up = 1  # a call is being set up on this replica
    try:
        assert await pool.refill_once() == 0
        await asyncio.sleep(0.35)
        assert await pool.refill_once() == 1  # held long enough: the spare starts
        await spares_ready(pool, 1)
    finally:
        pool._setting_up = 0
        await pool.retire_all()


async def test_spares_start_one_at_a_time_while_the_queue_outlasts_a_start(
    redis_mgr: AsyncAzureRedisManager, config: CallActorConfig
) -> None:
    # Two or three processes starting at once took both cores: a call answered meanwhile
    # waited about 100 ms for its bind (the demo's third call, two runs of three).
    pool = WarmPool(redis_mgr, config, owner="gw-gentle", min_spares=4, max_spares=4)
    release = asyncio.Event()

    async def start() -> None:  # stands in for a spare's process start
        try:
            await release.wait()
        finally:
            pool._starting -= 1

    pool._start_spare = start  # type: ignore[method-assign]
    await redis_mgr.add_spare(pool.name, "spare-queued")
    pool._taken.append(time.monotonic())  # a call took a spare just now
    try:
        assert await pool.refill_once() == 1  # three missing, one started
        assert await pool.refill_once() == 0  # the next waits for it
        # Four more calls in a moment: at that rate the one spare queued lasts less than a
        # start, so everything missing starts.
        pool._taken.extend([time.monotonic()] * 4)
        assert await pool.refill_once() == 2
        # And with the queue dry (the next call would start cold), whatever the rate.
        pool._taken = deque([time.monotonic() - 20])
        await redis_mgr.pop_spare(pool.name)
        pool.min_spares = pool.max_spares = 5
        assert await pool.refill_once() == 2
    finally:
        release.set()
        await eventually(lambda: pool._starting == 0)
        await redis_mgr.pop_spare(pool.name)


class _LiveMethod:
    """Stands in for ``handle.live``: records the names of the tasks started."""

    def __init__(self, started: list[str]) -> None:
        self._started = started
        self._name = ""

    def options(self, name: str, max_task_retries: int) -> _LiveMethod:
        self._name = name
        return self

    def remote(self) -> None:
        self._started.append(self._name)


class _Handle:
    def __init__(self, started: list[str]) -> None:
        self.live = _LiveMethod(started)


async def test_live_tasks_wait_for_the_set_ups_in_flight_but_not_for_long(
    redis_mgr: AsyncAzureRedisManager, config: CallActorConfig
) -> None:
    # Each live task is a Ray call; in a burst, the calls still waiting for an actor go first.
    pool = new_pool(redis_mgr, config)
    started: list[str] = []
    pool._setting_up = 1  # another call is being set up on this replica
    pool._live_pending.append((_Handle(started), "c1"))
    pool._start_live_tasks()
    assert started == []
    pool._setting_up = 0  # the burst is done
    pool._start_live_tasks()
    assert started == [live_task_name("c1")]
    pool._setting_up = 1  # set-ups that go on and on: the hold ends anyway
    pool._live_pending.append((_Handle(started), "c2"))
    pool._start_live_tasks()
    await eventually(lambda: live_task_name("c2") in started, timeout=LIVE_HOLD_S * 20)
    pool._setting_up = 0
    # One handle that cannot start its task (Ray gone): the others still start theirs.
    broken = _Handle(started)
    broken.live.remote = _refuse  # type: ignore[method-assign]
    pool._live_pending += [(broken, "c3"), (_Handle(started), "c4")]
    pool._start_live_tasks()
    assert started[-1] == live_task_name("c4")


def _refuse() -> None:
    raise RuntimeError("Ray is not initialized")


async def test_pools_of_two_configurations_are_each_kept_full(
    redis_mgr: AsyncAzureRedisManager, config: CallActorConfig
) -> None:
    """A new release (another actor configuration) has a pool of its own: the replica keeping
    the old pool full must not keep the new one empty."""
    old = new_pool(redis_mgr, config, spares=1)
    new = new_pool(redis_mgr, config.with_changes(checkpoint_interval_s=0.4), spares=1)
    assert old.name != new.name
    try:
        await warm_up(old, redis_mgr, 1)  # its replica keeps the lease from here on
        assert await new.refill_once() == 1
        await spares_ready(new, 1)
    finally:
        await old.retire_all()
        await new.retire_all()


@pytest.mark.parametrize("answered", [False, True], ids=["resolved", "answered"])
async def test_racing_replicas_bind_one_actor_per_call(
    redis_mgr: AsyncAzureRedisManager, config: CallActorConfig, answered: bool
) -> None:
    # answered: both replicas answered the call (with its fields), so neither looks for an
    # owner first; the set-once binding still names one.
    replicas = [new_pool(redis_mgr, config, spares=4), new_pool(redis_mgr, config, spares=4)]
    await warm_up(replicas[0], redis_mgr, 4)
    call_ids = [f"race-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    fields = {"caller_id": "+14255550100"} if answered else None
    try:
        results = await asyncio.gather(
            *(replica.activate(call_id, fields) for call_id in call_ids for replica in replicas)
        )
        for i, call_id in enumerate(call_ids):
            a, b = results[2 * i], results[2 * i + 1]
            assert a[1] == b[1]  # the same endpoint: the same actor, the same epoch
            bound = await asyncio.to_thread(actors_of, call_id, config.namespace)
            assert len(bound) == 1, bound
        # The losers' spares went back to the pool, unbound.
        assert await replicas[0].spare_count() == 2
    finally:
        for a, _ in results[::2]:
            await a.shutdown.remote("test")
        await replicas[0].retire_all()


async def test_a_restarted_bound_actor_finds_its_call_again(
    pool: WarmPool, redis_mgr: AsyncAzureRedisManager, config: CallActorConfig
) -> None:
    await warm_up(pool, redis_mgr, 1)
    call_id = f"call-{uuid.uuid4().hex[:10]}"
    handle, first = await pool.activate(call_id)
    owner = await redis_mgr.call_actor(call_id)
    pid = (await handle.info.remote())["pid"]
    os.kill(pid, signal.SIGKILL)  # Ray restarts the spare's process, which knows no call

    handle2, second = await pool.activate(call_id)  # as the gateway's reconnect does
    assert await redis_mgr.call_actor(call_id) == owner
    info = await handle2.info.remote()
    assert info["call_id"] == call_id and info["pid"] != pid and info["restarts"] == 1
    assert second.epoch > first.epoch  # the dead process's epoch is fenced
    await handle2.shutdown.remote("test")


async def test_a_restarted_actor_nobody_binds_exits_after_its_grace(
    redis_mgr: AsyncAzureRedisManager, config: CallActorConfig
) -> None:
    """A call that ended while its node went away: Ray restarts the actor, no gateway binds it
    again, and it must not hold a call slot for good. A restarted spare still queued stays."""
    pool = WarmPool(
        redis_mgr, config.with_changes(orphan_grace_s=1.0), owner="t", min_spares=1, max_spares=1
    )
    await warm_up(pool, redis_mgr, 1)
    (name,) = await redis_mgr.spare_names(pool.name)
    handle = await pool.handle(name)
    pid = (await handle.info.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: _restarted(handle, pid), timeout=60)
    await asyncio.sleep(2.5)  # past two grace periods: queued, so it stays
    assert not await _gone(name, config.namespace)
    await redis_mgr.remove_spare(pool.name, name)  # as a drained node leaves it: unqueued
    await eventually(lambda: _gone(name, config.namespace), timeout=60)


async def _restarted(handle: Any, old_pid: int) -> bool:
    try:
        return bool((await handle.info.remote())["pid"] != old_pid)
    except ray.exceptions.RayActorError:
        return False


async def test_consecutive_calls_never_share_a_process(
    pool: WarmPool, redis_mgr: AsyncAzureRedisManager, config: CallActorConfig
) -> None:
    await warm_up(pool, redis_mgr, 2)
    pids: list[int] = []
    for caller in ("+14255550101", "+14255550102"):
        call_id = f"call-{uuid.uuid4().hex[:10]}"
        handle, endpoint = await pool.activate(call_id, {"caller_id": caller})
        conn = await open_stream(endpoint.host, endpoint.port, endpoint.token, call_id, "media")
        await conn.send_acs(orjson.dumps({"kind": "DtmfData", "dtmfData": {"data": "7"}}).decode())
        info = await handle.info.remote()
        assert info["context"]["caller"]["id"] == caller  # nothing of the previous call
        assert info["ring_participants"] == [] and info["turns"] == 0
        pids.append(info["pid"])
        await conn.close()
        await handle.shutdown.remote("test")
        await eventually(lambda cid=call_id: _gone(cid, config.namespace), timeout=30)
    assert pids[0] != pids[1]


async def test_what_runs_alongside_overlaps_the_owner_look_up_and_precedes_the_bind(
    pool: WarmPool, redis_mgr: AsyncAzureRedisManager, config: CallActorConfig
) -> None:
    """The gateway's Redis writes for an answered call run while its spare is claimed, one
    round trip of waiting instead of three, and are done before the spare is called."""
    await warm_up(pool, redis_mgr, 2)
    call_id = f"call-{uuid.uuid4().hex[:10]}"
    seen: dict[str, str | None] = {}

    async def alongside() -> None:
        owner = None
        for _ in range(500):  # the claim lands while this still runs
            if (owner := await redis_mgr.call_actor(call_id)) is not None:
                break
            await asyncio.sleep(0.01)
        assert owner is not None
        spare = await asyncio.to_thread(ray.get_actor, owner, namespace=config.namespace)
        seen["owner"] = owner
        seen["bound_then"] = await spare.bound_call.remote()  # not called yet

    handle, _ = await pool.activate(call_id, {"caller_id": "+14255550104"}, alongside=alongside())
    assert seen["bound_then"] == ""
    assert await handle.bound_call.remote() == call_id
    assert await redis_mgr.call_actor(call_id) == seen["owner"]
    await handle.shutdown.remote("test")


async def _gone(call_id: str, namespace: str) -> bool:
    return await asyncio.to_thread(get_call_actor, call_id, namespace) is None


async def test_surplus_spares_retire_to_the_floor_once_demand_passes(
    redis_mgr: AsyncAzureRedisManager, config: CallActorConfig
) -> None:
    """A burst raises the target; once the demand window passes, spares past the floor retire
    (their call slots free, so the autoscaler can remove idle nodes)."""
    pool = WarmPool(
        redis_mgr, config, owner="gw-retire", min_spares=1, max_spares=3, demand_window_s=0.5
    )
    try:
        pool._taken.append(time.monotonic())  # one spare just taken: the target doubles
        assert pool.target() == 2
        await warm_up(pool, redis_mgr, 2)
        names = await redis_mgr.spare_names(pool.name)

        async def at_floor() -> bool:
            await pool.refill_once()
            return await pool.spare_count() == 1

        await eventually(at_floor, timeout=30, interval=0.2)
        [kept] = await redis_mgr.spare_names(pool.name)
        assert kept == names[0]  # the oldest stays; the newest retired
        retired = names[1]

        async def gone() -> bool:
            listed = await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True)
            return retired not in {entry["name"] for entry in listed}

        await eventually(gone, timeout=30)
    finally:
        await pool.retire_all()
