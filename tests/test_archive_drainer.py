"""ArchiveDrainer against a real redis-server and the embedded archive: one drainer at a time
(a Redis lease), the outbox drained, the spools of dead processes adopted, live ones left alone."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from storage.archive_drainer import ArchiveDrainer, dead_spools
from storage.redis_manager import AsyncAzureRedisManager
from storage.sqlite_archive import SqliteArchive
from tests.helpers import eventually, transcript


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[SqliteArchive]:
    async with SqliteArchive(tmp_path / "archive.sqlite3") as store:
        yield store


def drainer(
    archive: SqliteArchive, redis_mgr: AsyncAzureRedisManager, spool_dir: Path, owner: str
) -> ArchiveDrainer:
    return ArchiveDrainer(
        archive, redis_mgr, spool_dir=spool_dir, owner=owner, idle_interval_s=0.05
    )


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def spool_line(doc: dict[str, object]) -> bytes:
    return orjson.dumps({"kind": "transcript", "document": doc}) + b"\n"


async def test_one_drainer_at_a_time_moves_the_outbox_to_the_archive(
    archive: SqliteArchive, redis_mgr: AsyncAzureRedisManager, tmp_path: Path
) -> None:
    doc = transcript(f"call-{uuid.uuid4().hex[:8]}", 3)
    await redis_mgr.outbox_add("transcript", doc)
    first = drainer(archive, redis_mgr, tmp_path, "gw-a")
    second = drainer(archive, redis_mgr, tmp_path, "gw-b")
    report = await first.drain_once()
    assert report is not None and report.archived == 1
    assert await second.drain_once() is None  # gw-a holds the lease
    assert await first.drain_once() is not None  # and renews it
    assert await archive.get_transcript(doc["call_id"]) is not None
    assert await redis_mgr.outbox_length() == 0


async def test_dead_processes_spools_are_adopted_and_live_ones_left(
    archive: SqliteArchive, redis_mgr: AsyncAzureRedisManager, tmp_path: Path
) -> None:
    host = socket.gethostname()
    dead = transcript(f"call-{uuid.uuid4().hex[:8]}", 2)
    live = transcript(f"call-{uuid.uuid4().hex[:8]}", 2)
    dead_path = tmp_path / f"{host}-{dead_pid()}.jsonl"
    dead_path.write_bytes(spool_line(dead))
    live_path = tmp_path / f"{host}-{os.getpid()}.jsonl"
    live_path.write_bytes(spool_line(live))
    (tmp_path / f"otherhost-{dead_pid()}.jsonl").write_bytes(spool_line(live))
    assert dead_spools(tmp_path) == [dead_path]

    report = await drainer(archive, redis_mgr, tmp_path, "gw-a").drain_once()

    assert report is not None and report.archived == 1
    assert await archive.get_transcript(dead["call_id"]) is not None
    assert not dead_path.exists()
    assert live_path.exists() and await archive.get_transcript(live["call_id"]) is None


async def test_run_drains_until_stopped(
    archive: SqliteArchive, redis_mgr: AsyncAzureRedisManager, tmp_path: Path
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(drainer(archive, redis_mgr, tmp_path, "gw-a").run(stop))
    doc = transcript(f"call-{uuid.uuid4().hex[:8]}", 1)
    await redis_mgr.outbox_add("transcript", doc)
    await eventually(lambda: archive.get_transcript(doc["call_id"]), timeout=10)
    stop.set()
    await asyncio.wait_for(task, 5)
