"""Chaos: the archive under real faults. The Cosmos emulator refusing writes under load (calls
ending together on a fresh account race to create its containers), and the emulator stopped at
hang-up, drained by the production ArchiveDrainer of two replicas racing: nothing lost, every
document archived exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import ray

from actors.activation import aget_or_activate, get_call_actor
from actors.config import CallActorConfig
from actors.pool import WarmPool
from actors.stream_client import open_stream
from simulator.wire import transcription_data
from storage.archive_drainer import ArchiveDrainer
from storage.archiver import Archiver, Destination
from storage.cosmos_archive import CosmosArchive
from storage.errors import ArchiveError
from storage.redis_manager import AsyncAzureRedisManager
from storage.settings import load_settings
from tests.helpers import cosmos_settings, eventually, spares_ready, transcript
from tests.servers import CosmosEmulator

pytestmark = pytest.mark.chaos

CALLERS = 8  # call actors ending at the same moment, each with its own Cosmos client
CALLER = "+14255550900"


@pytest.fixture
def emulator(cosmos_emulator: CosmosEmulator) -> Iterator[CosmosEmulator]:
    """The session's emulator, running again after the test whatever it stopped."""
    yield cosmos_emulator
    if not cosmos_emulator.running:
        cosmos_emulator.start()


@pytest.fixture
def cosmos_env(emulator: CosmosEmulator, cosmos_key: str) -> dict[str, str]:
    """A fresh database: its containers do not exist until the first write."""
    return cosmos_settings(emulator, cosmos_key)


def new_archive(cosmos_env: dict[str, str]) -> CosmosArchive:
    return CosmosArchive.from_settings(load_settings(cosmos_env).storage.cosmos)


async def test_writes_the_emulator_refuses_under_load_are_never_lost(
    cosmos_env: dict[str, str], redis_mgr: AsyncAzureRedisManager, tmp_path: Path
) -> None:
    """Calls ending together on a fresh account: each actor's first write creates the database
    and containers, and all but one of those racing creations are refused (409 conflict). Every
    transcript, analytics record and audit entry still lands in the archive."""
    stores = [new_archive(cosmos_env) for _ in range(CALLERS)]
    archivers = [
        Archiver(store, redis_mgr, spool_path=tmp_path / f"spool-{i}.jsonl")
        for i, store in enumerate(stores)
    ]
    docs = [transcript(f"load-{uuid.uuid4().hex[:10]}", 2) for _ in range(CALLERS)]

    async def end_of_call(archiver: Archiver, doc: dict[str, Any]) -> list[Destination]:
        call_id = doc["call_id"]
        audit = [{"id": f"{call_id}-{n}", "call_id": call_id, "action": "ended"} for n in (1, 2)]
        kinds = [("audit", entry) for entry in audit]
        kinds += [("transcript", doc), ("analytics", {"id": f"{call_id}-a", "call_id": call_id})]
        return [await archiver.submit(kind, body) for kind, body in kinds]

    try:
        landed = await asyncio.gather(*map(end_of_call, archivers, docs))
        assert {d for per_call in landed for d in per_call} <= set(Destination)
        await archivers[0].drain()  # whatever was queued
        check = stores[0]
        for doc in docs:
            assert await check.get_transcript(doc["call_id"]) == doc
            assert len(await check.list_audit(doc["call_id"])) == 2
            assert len(await check.list_analytics(doc["call_id"])) == 1
    finally:
        for store in stores:
            await store.close()


async def test_a_document_refused_for_good_is_kept_aside_and_counted(
    cosmos_env: dict[str, str], redis_mgr: AsyncAzureRedisManager, tmp_path: Path
) -> None:
    """The archive refuses this document itself (an id Cosmos cannot hold): it is raised to the
    caller, which counts it, never queued to be refused forever, and kept in the rejected file."""
    async with new_archive(cosmos_env) as store:
        archiver = Archiver(store, redis_mgr, spool_path=tmp_path / "spool.jsonl")
        bad = {"id": "a/b", "call_id": "call-1", "action": "ended"}
        with pytest.raises(ArchiveError):
            await archiver.submit("audit", bad)
    assert await redis_mgr.outbox_length() == 0
    kept = [orjson.loads(line) for line in archiver.rejected_path.read_bytes().splitlines()]
    assert kept == [{"kind": "audit", "document": bad}]


def event(name: str) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "type": f"Microsoft.Communication.{name}", "data": {}}


async def talked(handle: Any, turns: int) -> bool:
    return bool((await handle.info.remote())["metrics"]["turns"] >= turns)


@pytest.fixture
def cosmos_config(
    actor_config: Callable[..., CallActorConfig],
    ray_cluster: dict[str, Any],
    cosmos_env: dict[str, str],
) -> CallActorConfig:
    return actor_config(
        ray_namespace=str(ray_cluster["namespace"]),
        cosmos_endpoint=cosmos_env["RTVOICE_COSMOS_ENDPOINT"],
        cosmos_key=cosmos_env["RTVOICE_COSMOS_KEY"],
        cosmos_verify_tls=False,
        cosmos_database=cosmos_env["RTVOICE_COSMOS_DATABASE"],
    )


@pytest.fixture
def call_ids(ray_cluster: dict[str, Any]) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for call_id in ids:  # detached actors a failed run may leave behind
        handle = get_call_actor(call_id, str(ray_cluster["namespace"]))
        if handle is not None:
            ray.kill(handle, no_restart=True)


@pytest.mark.slow
async def test_cosmos_stopped_at_hang_up_each_call_is_archived_once_by_the_drainers(
    emulator: CosmosEmulator,
    cosmos_env: dict[str, str],
    cosmos_config: CallActorConfig,
    call_ids: list[str],
    redis_mgr: AsyncAzureRedisManager,
    tmp_path: Path,
) -> None:
    """Two calls end while the Cosmos emulator is stopped: their transcripts, analytics and
    audit entries go to the Redis outbox. The production drainers of two replicas run through
    the outage (one holds the lease); once Cosmos is back, every document is there, once."""
    lines = {}
    for n in range(2):
        call_id = f"cosmos-down-{n}-{uuid.uuid4().hex[:8]}"
        call_ids.append(call_id)
        handle = await aget_or_activate(call_id, cosmos_config, incoming={"caller_id": CALLER})
        endpoint = await handle.activate.remote(None)
        await handle.handle_event.remote(event("CallConnected"))
        stream = await open_stream(
            endpoint.host, endpoint.port, endpoint.token, call_id, "transcription"
        )
        lines[call_id] = f"call {n}: keep this line safe"
        line = transcription_data(lines[call_id], 0.0, 1.0, "4:" + CALLER, final=True)
        await stream.send_acs(orjson.dumps(line))
        await eventually(lambda h=handle: talked(h, 2), timeout=60)
        await stream.close()

    await asyncio.to_thread(emulator.stop)  # the archive is gone at hang-up
    for call_id in call_ids:
        handle = get_call_actor(call_id, cosmos_config.namespace)
        await handle.handle_event.remote(event("CallDisconnected"))
    for call_id in call_ids:  # every document submitted: the actor has exited
        await eventually(lambda c=call_id: _gone(c, cosmos_config.namespace), timeout=60)
        assert await _queued(redis_mgr, call_id)

    stop = asyncio.Event()
    stores = [new_archive(cosmos_env) for _ in range(2)]
    drainers = [
        ArchiveDrainer(
            store,
            redis_mgr,
            spool_dir=tmp_path,
            owner=f"gw-{i}",
            idle_interval_s=0.05,
            backoff_max_s=0.5,
        )
        for i, store in enumerate(stores)
    ]
    running = [asyncio.create_task(d.run(stop)) for d in drainers]
    try:
        await asyncio.sleep(1.0)  # both drain against the stopped archive, backing off
        await asyncio.to_thread(emulator.start)  # empty: the database is created again
        await eventually(_outbox_empty(redis_mgr), timeout=60)
    finally:
        stop.set()
        await asyncio.gather(*running)
    try:
        check = stores[0]
        for call_id, line in lines.items():
            doc = await check.get_transcript(call_id)
            assert doc is not None and doc["turns"][0]["text"] == line
            heads = [t for t in await check.list_transcripts(100) if t["call_id"] == call_id]
            assert len(heads) == 1
            assert len(await check.list_analytics(call_id)) == 1
            actions = [entry["action"] for entry in await check.list_audit(call_id)]
            expected = ["activated", "CallConnected", "CallDisconnected", "ended"]
            assert sorted(actions) == sorted(expected), actions  # each entry once
    finally:
        for store in stores:
            await store.close()


@pytest.mark.slow
async def test_cosmos_stopped_the_pool_still_fills_and_binds_calls(
    emulator: CosmosEmulator, cosmos_config: CallActorConfig, redis_mgr: AsyncAzureRedisManager
) -> None:
    """A spare reads the archive once before joining the pool, to open its client ahead of
    calls. With Cosmos stopped that read gives up within ARCHIVE_WARM_S: the spare still joins,
    and a call binds it with no cold start."""
    await asyncio.to_thread(emulator.stop)
    pool = WarmPool(
        redis_mgr, cosmos_config, owner=f"gw-{uuid.uuid4().hex[:6]}", min_spares=1, max_spares=1
    )
    try:
        await pool.refill_once()
        await spares_ready(pool, 1)
        call_id = f"cosmos-down-spare-{uuid.uuid4().hex[:8]}"
        handle, _ = await pool.activate(call_id, {"caller_id": CALLER})
        assert pool.cold_starts == 0
        assert (await handle.info.remote())["call_id"] == call_id
        await handle.shutdown.remote("test")
    finally:
        await pool.retire_all()


async def _queued(redis_mgr: AsyncAzureRedisManager, call_id: str) -> bool:
    summary = await redis_mgr.get_call_summary(call_id)
    return summary is not None and summary["archived_to"] == "outbox"


def _outbox_empty(redis_mgr: AsyncAzureRedisManager) -> Callable[[], Any]:
    async def empty() -> bool:
        return await redis_mgr.outbox_length() == 0

    return empty


async def _gone(call_id: str, namespace: str) -> bool:
    return await asyncio.to_thread(get_call_actor, call_id, namespace) is None
