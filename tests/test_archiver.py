"""Archiver: archive, else Redis outbox, else spool file; drained later, nothing lost or doubled.

The outages are real: the Cosmos emulator and redis-server processes are stopped and restarted
(the emulator keeps data in memory, so a restart also drops the database and containers).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from simulator.devstack.local_redis import LocalRedisServer
from storage.archive_drainer import ArchiveDrainer
from storage.archiver import Archiver, Destination
from storage.cosmos_archive import CosmosArchive
from storage.errors import ArchiveError
from storage.redis_manager import AsyncAzureRedisManager
from storage.settings import load_settings
from tests.helpers import cosmos_settings, transcript
from tests.servers import CosmosEmulator


@pytest.fixture
def servers(
    cosmos_emulator: CosmosEmulator, redis_server: LocalRedisServer
) -> Iterator[tuple[CosmosEmulator, LocalRedisServer]]:
    """Both servers, running again after the test whatever it stopped."""
    yield cosmos_emulator, redis_server
    cosmos_emulator.start()
    redis_server.start()


@pytest.fixture
async def archive(cosmos_emulator: CosmosEmulator, cosmos_key: str) -> AsyncIterator[CosmosArchive]:
    settings = load_settings(cosmos_settings(cosmos_emulator, cosmos_key))
    async with CosmosArchive.from_settings(settings.storage.cosmos) as store:
        yield store


@pytest.fixture
def archiver(archive: CosmosArchive, redis_mgr: AsyncAzureRedisManager, tmp_path: Path) -> Archiver:
    return Archiver(
        archive,
        redis_mgr,
        spool_path=tmp_path / "spool.jsonl",
        consumer="test-archiver",
    )


def new_transcript(turns: int = 3) -> dict[str, Any]:
    return transcript(f"call-{uuid.uuid4().hex[:12]}", turns)


async def listed(archive: CosmosArchive, call_id: str) -> int:
    return sum(t["call_id"] == call_id for t in await archive.list_transcripts(1000))


async def test_archive_up_writes_directly(archiver: Archiver, archive: CosmosArchive) -> None:
    doc = new_transcript()
    assert await archiver.submit_transcript(doc) is Destination.ARCHIVE
    assert await archiver.submit_transcript(doc) is Destination.ARCHIVE
    assert await archive.get_transcript(doc["call_id"]) == doc
    assert await listed(archive, doc["call_id"]) == 1
    assert await archiver.drain_once() == 0


@pytest.mark.slow  # stops and restarts the Cosmos emulator
async def test_cosmos_down_goes_to_outbox_then_drains(
    servers: tuple[CosmosEmulator, LocalRedisServer],
    archiver: Archiver,
    archive: CosmosArchive,
    redis_mgr: AsyncAzureRedisManager,
) -> None:
    emulator, _ = servers
    warmup = new_transcript()
    await archive.put_transcript(warmup)  # client and containers exist before the outage

    emulator.stop()
    doc = new_transcript(turns=2000)  # large: split into parts on the way in
    assert await archiver.submit_transcript(doc) is Destination.OUTBOX
    assert await redis_mgr.outbox_length() == 1
    assert await archiver.drain_once() == 0  # still down: stays in the outbox, unacked
    assert await redis_mgr.outbox_length() == 1

    emulator.start()  # an empty account: the archive re-creates database and containers
    assert await archiver.drain_once() == 1
    assert await redis_mgr.outbox_length() == 0
    assert await archive.get_transcript(doc["call_id"]) == doc
    assert await listed(archive, doc["call_id"]) == 1
    assert await archiver.drain_once() == 0


@pytest.mark.slow  # stops and restarts the Cosmos emulator
async def test_cosmos_and_redis_down_spool_then_drain(
    servers: tuple[CosmosEmulator, LocalRedisServer],
    archiver: Archiver,
    archive: CosmosArchive,
    redis_mgr: AsyncAzureRedisManager,
) -> None:
    emulator, redis = servers
    doc = new_transcript()
    record = {"id": "a1", "call_id": doc["call_id"], "duration_s": 42}
    emulator.stop()
    redis.stop()
    assert await archiver.submit_transcript(doc) is Destination.SPOOL
    assert await archiver.submit_transcript(doc) is Destination.SPOOL  # a retry: still one doc
    assert await archiver.submit("analytics", record) is Destination.SPOOL
    assert len(archiver.spool_path.read_bytes().splitlines()) == 3
    assert await archiver.drain_once() == 0
    assert len(archiver.spool_path.read_bytes().splitlines()) == 3

    redis.start()  # Redis back first: the spool moves to the outbox
    assert await archiver.drain_once() == 3
    assert not archiver.spool_path.exists() or archiver.spool_path.read_bytes() == b""
    assert await redis_mgr.outbox_length() == 3

    emulator.start()
    assert await archiver.drain_once() == 3
    assert await redis_mgr.outbox_length() == 0
    assert await archive.get_transcript(doc["call_id"]) == doc
    assert await listed(archive, doc["call_id"]) == 1
    assert await archive.list_analytics(doc["call_id"]) == [record]


@pytest.mark.slow  # stops and restarts the Cosmos emulator
async def test_spool_drains_straight_to_the_archive(
    servers: tuple[CosmosEmulator, LocalRedisServer],
    archiver: Archiver,
    archive: CosmosArchive,
    redis_mgr: AsyncAzureRedisManager,
) -> None:
    emulator, redis = servers
    doc = new_transcript()
    emulator.stop()
    redis.stop()
    assert await archiver.submit_transcript(doc) is Destination.SPOOL
    redis.start()
    emulator.start()
    assert await archiver.drain_once() == 1
    assert await redis_mgr.outbox_length() == 0
    assert await archive.get_transcript(doc["call_id"]) == doc


@pytest.mark.slow  # stops and restarts the Cosmos emulator
async def test_the_drainer_archives_when_cosmos_returns(
    servers: tuple[CosmosEmulator, LocalRedisServer],
    archiver: Archiver,
    archive: CosmosArchive,
    redis_mgr: AsyncAzureRedisManager,
    tmp_path: Path,
) -> None:
    emulator, _ = servers
    doc = new_transcript()
    emulator.stop()
    assert await archiver.submit_transcript(doc) is Destination.OUTBOX
    stop = asyncio.Event()
    drainer = ArchiveDrainer(
        archive, redis_mgr, spool_dir=tmp_path, owner="t", idle_interval_s=0.05, backoff_max_s=0.5
    )
    task = asyncio.create_task(drainer.run(stop))
    try:
        await asyncio.sleep(0.5)  # a few failed passes while down
        assert await redis_mgr.outbox_length() == 1
        emulator.start()

        async def archived() -> None:
            while await redis_mgr.outbox_length():
                await asyncio.sleep(0.05)

        await asyncio.wait_for(archived(), timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert await archive.get_transcript(doc["call_id"]) == doc


async def test_invalid_document_raises_and_is_never_queued(
    archiver: Archiver, redis_mgr: AsyncAzureRedisManager
) -> None:
    with pytest.raises(ArchiveError, match="call_id"):
        await archiver.submit_transcript({"turns": []})
    with pytest.raises(ArchiveError, match="kind"):
        await archiver.submit("nonsense", {"id": "x", "call_id": "y"})
    assert await redis_mgr.outbox_length() == 0
    assert not archiver.spool_path.exists()


async def test_poison_entries_are_set_aside_not_retried_forever(
    archiver: Archiver, redis_mgr: AsyncAzureRedisManager, archive: CosmosArchive
) -> None:
    good = new_transcript()
    await redis_mgr.outbox_add("transcript", {"call_id": "bad:id", "turns": []})
    await redis_mgr.outbox_add("transcript", good)
    assert await archiver.drain_once() == 1
    assert await redis_mgr.outbox_length() == 0
    assert await archive.get_transcript(good["call_id"]) == good
    rejected = [orjson.loads(line) for line in archiver.rejected_path.read_bytes().splitlines()]
    assert rejected == [{"kind": "transcript", "document": {"call_id": "bad:id", "turns": []}}]


async def test_interrupted_drain_is_resumed(archiver: Archiver, archive: CosmosArchive) -> None:
    # A crash mid-drain leaves the .draining file, maybe with a torn last line.
    doc = new_transcript()
    line = orjson.dumps({"kind": "transcript", "document": doc})
    archiver.draining_path.write_bytes(line + b"\n" + line[:20])
    assert await archiver.drain_once() == 1
    assert not archiver.draining_path.exists()
    assert await archive.get_transcript(doc["call_id"]) == doc
    assert archiver.rejected_path.read_bytes() == line[:20] + b"\n"
