"""``rtvoice drain``: a gateway replica or a Ray node stops taking new calls, then waits, with
progress, until its live calls have ended.

- A replica: its drain mark in Redis (``worker:{replica}:draining``) makes its admission refuse
  every new call (rejected busy, ``/readyz`` says ``draining``); the calls whose media it
  carries (``worker:{replica}:affinity``) go on to their end.
- A node: Ray's own drain (the GCS ``DrainNode`` request the autoscaler uses, reason
  preemption, no deadline) stops new actors from being placed on it; the warm pool's spares
  there leave the queue and stop; the live call actors there go on to their end. Then the
  autoscaler removes the idle node, or the operator stops it.

Never ends a call itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import ray

from actors.activation import forget_actor
from actors.cluster import call_actor_nodes
from actors.config import CallActorConfig
from storage.redis_manager import AsyncAzureRedisManager
from storage.settings import Settings

# A drain mark left behind (a drain never undone) ends by itself after a day.
DRAIN_MARK_S = 24 * 60 * 60


class DrainRefused(RuntimeError):
    """Ray did not accept draining the node (its message says why)."""


@dataclass(frozen=True)
class Progress:
    target: str
    live_calls: int
    elapsed_s: float

    def line(self) -> str:
        if self.live_calls == 0:
            return f"{self.target}: drained after {self.elapsed_s:.0f} s"
        return f"{self.target}: {self.live_calls} live calls, {self.elapsed_s:.0f} s"


async def wait_drained(
    target: str,
    live_calls: Callable[[], Awaitable[int]],
    *,
    timeout_s: float,
    interval_s: float,
    on_progress: Callable[[Progress], None],
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Poll ``live_calls`` until it reads 0 (True) or ``timeout_s`` passes (False)."""
    start = clock()
    while True:
        progress = Progress(target, await live_calls(), clock() - start)
        on_progress(progress)
        if progress.live_calls == 0:
            return True
        if progress.elapsed_s >= timeout_s:
            return False
        await asyncio.sleep(interval_s)


async def drain_replica(
    redis: AsyncAzureRedisManager,
    replica_id: str,
    *,
    timeout_s: float,
    interval_s: float,
    on_progress: Callable[[Progress], None],
) -> bool:
    await redis.set_draining(replica_id, ttl_s=DRAIN_MARK_S)

    async def live() -> int:
        return len(await redis.worker_calls(replica_id))

    return await wait_drained(
        f"replica {replica_id}",
        live,
        timeout_s=timeout_s,
        interval_s=interval_s,
        on_progress=on_progress,
    )


def ray_drain_node(node_id: str, message: str) -> None:
    """Ask the GCS to drain ``node_id``: no new actor or task is placed on it, running ones go
    on (Ray's preemption drain, as ``ray drain-node`` sends it). Needs ``ray.init`` first."""
    from ray.core.generated import autoscaler_pb2

    # Ray's developer API (hidden `ray drain-node`), untyped: the GCS client and its enum.
    gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)  # type: ignore[attr-defined]
    reason = autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")  # type: ignore[attr-defined]
    accepted, why = gcs.drain_node(
        node_id,
        reason,
        message,
        0,  # no deadline: the calls end when their callers hang up
    )
    if not accepted:
        raise DrainRefused(why or "refused")


async def retire_spares_on(
    redis: AsyncAzureRedisManager, pool: str, node_id: str, namespace: str
) -> int:
    """Take the pool's spares on ``node_id`` out of the queue and stop them; returns how many
    (a spare a call took meanwhile is a live call now, and stays)."""
    retired = 0
    queued = set(await redis.spare_names(pool))
    for name in await asyncio.to_thread(call_actor_nodes, namespace, node_id):
        if name in queued and await redis.remove_spare(pool, name):
            retired += 1
            with contextlib.suppress(ValueError):  # died meanwhile: gone all the same
                handle = await asyncio.to_thread(ray.get_actor, name, namespace=namespace)
                await asyncio.to_thread(forget_actor, handle)
    return retired


async def drain_node(
    redis: AsyncAzureRedisManager,
    node_id: str,
    *,
    pool: str,
    namespace: str,
    timeout_s: float,
    interval_s: float,
    on_progress: Callable[[Progress], None],
    on_retired: Callable[[int], None] = lambda _: None,
) -> bool:
    """Drain a node; True once its live calls have ended within the timeout."""
    await asyncio.to_thread(ray_drain_node, node_id, "rtvoice drain")
    on_retired(await retire_spares_on(redis, pool, node_id, namespace))

    async def live() -> int:
        # Spares that were placed on the node before the drain and queued since go too.
        await retire_spares_on(redis, pool, node_id, namespace)
        return len(await asyncio.to_thread(call_actor_nodes, namespace, node_id))

    return await wait_drained(
        f"node {node_id}",
        live,
        timeout_s=timeout_s,
        interval_s=interval_s,
        on_progress=on_progress,
    )


async def drain_target(
    settings: Settings,
    *,
    replica: str | None,
    node: str | None,
    timeout_s: float,
    interval_s: float,
    undo: bool = False,
    out: Callable[[str], None],
) -> int:
    """``rtvoice drain``: 0 once drained (or undone), 1 if calls are still live at the timeout,
    2 when Ray refuses to drain the node. A node's drain needs ``ray.init`` first."""

    def progress(p: Progress) -> None:
        out(p.line())

    async with AsyncAzureRedisManager.from_settings(settings.storage) as redis:
        if undo:
            if not replica:
                out("--undo is for a replica: Ray's drain of a node cannot be taken back")
                return 2
            await redis.clear_draining(replica)
            out(f"replica {replica}: takes new calls again")
            return 0
        if replica:
            drained = await drain_replica(
                redis, replica, timeout_s=timeout_s, interval_s=interval_s, on_progress=progress
            )
        else:
            assert node is not None
            pool = CallActorConfig.from_settings(settings).spare_pool
            try:
                drained = await drain_node(
                    redis,
                    node,
                    pool=pool,
                    namespace=settings.actors.ray_namespace,
                    timeout_s=timeout_s,
                    interval_s=interval_s,
                    on_progress=progress,
                    on_retired=lambda n: out(f"node {node}: {n} spare actors retired"),
                )
            except DrainRefused as exc:
                out(f"node {node}: Ray refused to drain it: {exc}")
                return 2
    if not drained:
        out("still live calls at the timeout; run it again to keep waiting")
    return 0 if drained else 1
