"""The warm pool: spare call actors started ahead of demand, and binding a call to its actor.

A spare is a fully started CallActor (process up, modules imported, storage clients connected)
named ``spare-…`` and queued in Redis (storage/pool_store.py). Answering a call takes the oldest
spare (an atomic LPOP: two replicas never take the same one) and binds the call to it with a
set-once record (``call:{id}:actor``): racing replicas agree on the first owner named, a loser
puts its spare back, and every later lookup (events, a restarted actor's reconnect) finds the
same actor. The epoch fence of the affinity record still refuses a stale owner's writes.
Without a spare, or without Redis, the call gets an actor named by its call id as before (Ray's
named-actor registry decides then). Each actor serves one call and exits after it; the keeper
refills the pool under a Redis lease, so one replica refills at a time, and holds its spare
starts (up to ``refill_hold_s``) while calls are being set up on its replica. While calls come
and the queue outlasts a spare's start, it starts one at a time; else all it lacks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any

import ray
from cachetools import LRUCache

from actors.activation import create_call_actor, create_spare, forget_actor
from actors.call_state import CallEnded
from actors.config import CallActorConfig
from actors.stream_client import bind_spare
from actors.stream_protocol import HandshakeRefused, ProtocolViolation
from storage.affinity import Endpoint
from storage.errors import RedisTimeoutError, StorageError
from storage.pool_store import SpareClaim
from storage.redis_manager import AsyncAzureRedisManager

log = logging.getLogger(__name__)

# One replica at a time keeps a pool full: the lease "pool-keeper-<pool name>". Per pool, as a
# new release (another actor configuration) has its own pool to keep, beside the old one.
KEEPER_LEASE = "pool-keeper"
MAX_TAKE_ATTEMPTS = 3  # spares found dead before falling back to a cold actor
DEMAND_WINDOW_S = 30.0
# Spare starts wait at most this long for the calls being set up: starting a spare's process
# costs about a second of CPU, which those set-ups would otherwise queue behind.
REFILL_HOLD_S = 2.0
# While the queue outlasts a spare's start at the arrival rate of the last RATE_WINDOW_S, spares
# start one at a time. SPARE_START_S: a start, asked to queued, is 0.6-0.9 s on an idle node and
# about 2 s on a busy one.
RATE_WINDOW_S = 5.0
SPARE_START_S = 2.0
LIVE_TASK_PREFIX = "call:"
# The live tasks of calls bound in a burst start once the burst's set-ups are done, or after
# this long: each is a Ray call (about 1 ms of CPU in the gateway and the actor together) that
# the calls still waiting for their actor would otherwise queue behind.
LIVE_HOLD_S = 0.5
# A spare is bound over its stream endpoint (a Ray actor call costs the gateway and the actor
# about 3.5 ms of CPU; the spare's activation itself 0.4 ms); past this, or refused, through Ray.
STREAM_BIND_TIMEOUT_S = 5.0


def live_task_name(call_id: str) -> str:
    """The name of the task that runs while a call lives (CallActor.live): Ray's dashboard
    and state API show the call id with the task's actor, node and worker logs."""
    return f"{LIVE_TASK_PREFIX}{call_id}"


def pool_target(minimum: int, maximum: int, taken_recently: int) -> int:
    """Spares to keep: the floor, raised to twice what was taken in the last window, capped."""
    return max(minimum, min(maximum, math.ceil(2 * taken_recently)))


class WarmPool:
    def __init__(
        self,
        redis: AsyncAzureRedisManager,
        config: CallActorConfig,
        *,
        owner: str,
        min_spares: int,
        max_spares: int,
        timeout_s: float = 60.0,
        start_concurrency: int = 4,
        bind_deadline_s: float = 5.0,
        demand_window_s: float = DEMAND_WINDOW_S,
        refill_hold_s: float = REFILL_HOLD_S,
    ) -> None:
        self._redis = redis
        self._config = config
        self.name = config.spare_pool
        self._owner = owner
        self.min_spares = min_spares
        self.max_spares = max(min_spares, max_spares)
        self.demand_window_s = demand_window_s
        self.refill_hold_s = refill_hold_s
        self._setting_up = 0  # activations in flight on this replica
        self._holding_since: float | None = None
        self._timeout_s = timeout_s
        self._bind_deadline_s = bind_deadline_s  # retrying a slow Redis before going cold
        self._starting = 0
        self._start_slots = asyncio.Semaphore(start_concurrency)
        self._taken: deque[float] = deque(maxlen=10_000)  # when spares were taken (this replica)
        self._starts: set[asyncio.Task[None]] = set()
        # One lookup-or-bind per call at a time: the answer and the media socket's first resolve
        # race on this replica, and each would otherwise take (and give back) a spare.
        self._owners: dict[str, asyncio.Future[str]] = {}
        # Handles of the spares this replica started or took: no GCS lookup on the hot path.
        self._known: LRUCache[str, Any] = LRUCache(maxsize=4096)
        # Where the spares this replica claimed listen, until they are bound.
        self._addresses: LRUCache[str, Endpoint] = LRUCache(maxsize=4096)
        self.stream_binds = 0  # calls bound over their spare's stream endpoint
        self.ray_binds = 0  # and through Ray (cold actors, restarts, a spare's endpoint failing)
        self.bind_seconds: deque[float] = deque(maxlen=1000)  # spare taken -> endpoint up
        self._live_pending: list[tuple[Any, str]] = []  # (handle, call id): live tasks held
        self._live_timer: asyncio.TimerHandle | None = None
        self.cold_starts = 0
        self.spares_seen = 0  # queued spares at the last refill pass

    # -- taking a call ---------------------------------------------------------------------

    async def activate(
        self,
        call_id: str,
        incoming: dict[str, Any] | None = None,
        *,
        alongside: Awaitable[object] | None = None,
    ) -> tuple[Any, Endpoint]:
        """The call's actor (a spare bound to it, or a cold one) once its stream endpoint is up.
        ``alongside``: what the actor must find done when it is called (the caller's own Redis
        writes), run while its owner is looked up rather than before.

        Raises CallEnded for a call that is over."""
        started = time.perf_counter()
        self._setting_up += 1
        try:
            # A call this replica has just answered has no owner yet: skip asking for one.
            owner_of = self.owner_of(call_id, fresh=incoming is not None)
            if alongside is None:
                owner = await owner_of
            else:  # in a burst, each sequential round trip waits behind the whole loop
                owner, _ = await asyncio.gather(owner_of, alongside)
            if owner == call_id:  # no pool for this call: an actor named by the call id
                handle = await asyncio.to_thread(create_call_actor, call_id, self._config)
            else:
                handle = await self._actor(owner)
            try:
                endpoint = await self._bind(handle, owner, call_id, incoming)
            except CallEnded:
                await asyncio.to_thread(forget_actor, handle)
                raise
            if owner != call_id:
                self.bind_seconds.append(time.perf_counter() - started)
            self._live_pending.append((handle, call_id))
        finally:
            self._setting_up -= 1
            self._start_live_tasks()
        return handle, endpoint

    async def _bind(
        self, handle: Any, owner: str, call_id: str, incoming: dict[str, Any] | None
    ) -> Endpoint:
        """Bind the call's actor: over the spare's stream endpoint when this replica claimed it
        with its address, else (or when that fails) through Ray. Both are idempotent per call."""
        address = self._addresses.pop(owner, None)
        if address is not None:
            try:
                epoch = await bind_spare(
                    address.host,
                    address.port,
                    address.token,
                    call_id,
                    incoming or {},
                    timeout=STREAM_BIND_TIMEOUT_S,
                )
            except HandshakeRefused as exc:
                if exc.code == "call_ended":
                    raise CallEnded(call_id) from None
                log.warning("spare refused its bind, binding through Ray: %s", exc.code)
            except (OSError, TimeoutError, ProtocolViolation) as exc:
                log.warning("spare unreachable, binding through Ray: %s", type(exc).__name__)
            else:
                self.stream_binds += 1
                return dataclasses.replace(address, epoch=epoch)
        endpoint: Endpoint = await asyncio.wait_for(
            handle.bind.remote(call_id, incoming), self._timeout_s
        )
        self.ray_binds += 1
        return endpoint

    def _start_live_tasks(self) -> None:
        """Start the held live tasks once no set-up is in flight here, or ``LIVE_HOLD_S`` after
        the first was held."""
        if not self._live_pending:
            return
        if self._setting_up and self._live_timer is None:
            loop = asyncio.get_running_loop()
            self._live_timer = loop.call_later(LIVE_HOLD_S, self._flush_live_tasks)
        elif not self._setting_up:
            self._flush_live_tasks()

    def _flush_live_tasks(self) -> None:
        if self._live_timer is not None:
            self._live_timer.cancel()
            self._live_timer = None
        pending, self._live_pending = self._live_pending, []
        for handle, call_id in pending:
            # Not awaited: it runs until the call ends, named so operators find it by call id.
            # No retry: after a restart, the gateway's next bind starts it again on the new
            # process. A failure costs the dashboard's view of one call, never a call.
            try:
                handle.live.options(name=live_task_name(call_id), max_task_retries=0).remote()
            except Exception as exc:
                log.warning("starting a call's live task failed: %s", type(exc).__name__)

    async def handle(self, call_id: str) -> Any:
        """The live actor of a call already bound (None if it has none now)."""
        try:
            owner = await self._redis.call_actor(call_id) or call_id
        except StorageError:
            owner = call_id
        try:
            return await self._actor(owner)
        except ValueError:
            return None

    async def _actor(self, name: str) -> Any:
        """The actor named ``name`` (ValueError if there is none)."""
        handle = self._known.get(name)
        if handle is None:
            handle = await asyncio.to_thread(ray.get_actor, name, namespace=self._config.namespace)
            self._known[name] = handle
        return handle

    async def owner_of(self, call_id: str, *, fresh: bool = False) -> str:
        """The name of the call's actor, binding a spare to it if it has none yet (no actor is
        started or called: ``activate`` does that). ``fresh``: the call was just answered, so
        its first look-up is skipped; the binding stays set-once, so a call another replica
        bound still gets that replica's owner."""
        pending = self._owners.get(call_id)
        if pending is None:
            pending = self._owners[call_id] = asyncio.ensure_future(
                self._bind_owner(call_id, fresh)
            )
            pending.add_done_callback(lambda _: self._owners.pop(call_id, None))
        return await asyncio.shield(pending)

    async def _bind_owner(self, call_id: str, fresh: bool) -> str:
        """Ask Redis until it answers. A timed-out command may still have run (a slow Redis),
        and only the set-once record knows: giving up on it would start a second actor for a
        call another replica bound. Redis unreachable: a cold actor named by the call id."""
        deadline = time.monotonic() + self._bind_deadline_s
        claimed = False
        while True:
            try:
                owner = None if fresh else await self._redis.call_actor(call_id)
                if owner is None:
                    claimed = True
                    spare = await self._take_spare(call_id)
                    owner = await self._redis.bind_call_actor(
                        call_id, spare.name if spare else call_id
                    )
                    if spare and spare.address and owner == spare.name:
                        self._addresses[owner] = spare.address
                if claimed:  # a spare claimed for the call but not its owner goes back
                    await self._redis.settle_spare_claim(self.name, call_id, owner)
            except StorageError as exc:
                if isinstance(exc, RedisTimeoutError) and time.monotonic() < deadline:
                    continue
                log.warning("pool unavailable, starting a cold actor: %s", type(exc).__name__)
                owner = call_id
            if owner == call_id:
                self.cold_starts += 1
            return owner

    async def _take_spare(self, call_id: str) -> SpareClaim | None:
        """The spare claimed for the call: the same one again on a retry or on another replica
        answering it, so a lost reply leaks no spare."""
        for _ in range(MAX_TAKE_ATTEMPTS):
            spare = await self._redis.claim_spare(self.name, call_id)
            if spare is None:
                return None
            try:
                await self._actor(spare.name)
            except ValueError:  # died while waiting: its claim ends, the keeper replaces it
                await self._redis.settle_spare_claim(self.name, call_id, spare.name)
                continue
            self._taken.append(time.monotonic())
            return spare
        return None

    # -- keeping the pool full ----------------------------------------------------------------

    async def spare_count(self) -> int:
        return await self._redis.spare_count(self.name)

    def target(self) -> int:
        recent = self._taken_within(self.demand_window_s)
        return pool_target(self.min_spares, self.max_spares, recent)

    def _taken_within(self, seconds: float) -> int:
        """Spares taken on this replica in the last ``seconds``."""
        now = time.monotonic()
        return sum(1 for t in self._taken if now - t <= seconds)

    async def refill_once(self) -> int:
        """Start the spares the pool lacks, if this replica holds the keeper lease; returns how
        many it started (each is queued once warm). Past the target, retires one spare per
        pass: each holds a call slot, so surplus spares would keep idle nodes in the cluster."""
        self.spares_seen = await self.spare_count()
        if not await self._redis.hold_lease(f"{KEEPER_LEASE}-{self.name}", self._owner, lease_s=30):
            return 0
        missing = self.target() - self.spares_seen - self._starting
        if missing < 0 and self._starting == 0:
            await self._retire_newest()
        if missing > 0 and self._holds_starts():
            return 0
        if self._queue_outlasts_a_start():
            # No call will miss a spare meanwhile: start one at a time, so the processes
            # starting do not take the node's cores from the calls being set up and talking.
            missing = min(missing, 1 - self._starting)
        for _ in range(max(0, missing)):
            self._starting += 1
            task = asyncio.get_running_loop().create_task(self._start_spare())
            self._starts.add(task)
            task.add_done_callback(self._starts.discard)
        return max(0, missing)

    def _queue_outlasts_a_start(self) -> bool:
        """Calls are live or arriving (a spare was taken here within the demand window), and
        the queued spares last longer than a spare takes to start, at the recent arrival rate."""
        if not self._taken_within(self.demand_window_s):
            return False
        recent = self._taken_within(RATE_WINDOW_S)
        return self.spares_seen >= max(1, math.ceil(recent / RATE_WINDOW_S * SPARE_START_S))

    def _holds_starts(self) -> bool:
        """True while calls are being set up on this replica, for at most ``refill_hold_s`` in
        a row (then the spares start, and the next pass may hold again)."""
        if not self._setting_up:
            self._holding_since = None
            return False
        now = time.monotonic()
        if self._holding_since is None:
            self._holding_since = now
        if now - self._holding_since < self.refill_hold_s:
            return True
        self._holding_since = None
        return False

    async def _start_spare(self) -> None:
        handle = None
        try:
            async with self._start_slots:
                name, handle = await asyncio.to_thread(create_spare, self._config)
                address: Endpoint = await asyncio.wait_for(handle.prewarm.remote(), self._timeout_s)
                self._known[name] = handle
                await self._redis.add_spare(self.name, name, address)
                handle = None  # queued: the pool owns it now
        except Exception as exc:  # the next pass tries again
            log.warning("starting a spare call actor failed: %s", type(exc).__name__)
        finally:
            self._starting -= 1
            if handle is not None:  # failed or cancelled before it was queued
                forget_actor(handle)

    async def run(self, stop: asyncio.Event, interval_s: float = 0.5) -> None:
        while not stop.is_set():
            try:
                await self.refill_once()
            except StorageError as exc:
                log.info("pool refill waits for Redis: %s", type(exc).__name__)
            except Exception:
                log.exception("pool refill failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
        for task in list(self._starts):  # spares half started are finished or forgotten
            task.cancel()
        await asyncio.gather(*self._starts, return_exceptions=True)

    async def _retire_newest(self) -> None:
        """Stop the most recently queued spare (the oldest are taken first, so the newest is
        the one demand would reach last)."""
        name = await self._redis.pop_newest_spare(self.name)
        if name is None:
            return
        self.spares_seen -= 1
        with contextlib.suppress(ValueError):
            await asyncio.to_thread(forget_actor, await self._actor(name))
        self._known.pop(name, None)

    async def retire_all(self) -> int:
        """Stop every queued spare (a deployment going away, or a test's stack); returns count."""
        retired = 0
        while (name := await self._redis.pop_spare(self.name)) is not None:
            with contextlib.suppress(ValueError):
                handle = await asyncio.to_thread(
                    ray.get_actor, name, namespace=self._config.namespace
                )
                await asyncio.to_thread(forget_actor, handle)
                retired += 1
        return retired
