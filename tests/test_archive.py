"""The ArchiveStore contract, run on both stores (SQLite file and the Cosmos emulator)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from simulator.devstack.local_redis import free_port
from storage.archive import (
    ArchiveStore,
    encoded_size,
    open_archive,
    reassemble_transcript,
    split_transcript,
)
from storage.cosmos_archive import TRANSCRIPTS, CosmosArchive
from storage.errors import (
    ArchiveError,
    ArchiveUnavailableError,
    PayloadTooLargeError,
    SerializationError,
)
from storage.settings import ConfigError, load_settings
from storage.sqlite_archive import SqliteArchive
from tests.helpers import cosmos_settings, transcript
from tests.servers import CosmosEmulator


@pytest.fixture(params=["sqlite", "cosmos"])
async def archive(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ArchiveStore]:
    if request.param == "sqlite":
        env = {"RTVOICE_ARCHIVE_PATH": str(tmp_path / "archive.sqlite3")}
    else:
        env = cosmos_settings(
            request.getfixturevalue("cosmos_emulator"), request.getfixturevalue("cosmos_key")
        )
    async with open_archive(load_settings(env).storage) as store:
        yield store


def new_id(prefix: str = "call") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# Transcripts


async def test_transcript_round_trips_and_missing_is_none(archive: ArchiveStore) -> None:
    doc = transcript(new_id(), 5, caller="+15550100", summary={"intent": "billing"})
    await archive.put_transcript(doc)
    assert await archive.get_transcript(doc["call_id"]) == doc
    assert await archive.get_transcript(new_id()) is None


async def test_put_twice_keeps_one_document(archive: ArchiveStore) -> None:
    doc = transcript(new_id(), 3)
    await archive.put_transcript(doc)
    await archive.put_transcript(doc)
    assert await archive.get_transcript(doc["call_id"]) == doc
    listed = [t for t in await archive.list_transcripts(1000) if t["call_id"] == doc["call_id"]]
    assert listed == [{"call_id": doc["call_id"], "ended_at": 2000.0, "turn_count": 3}]

    changed = transcript(doc["call_id"], 4, ended_at=2500.0)
    await archive.put_transcript(changed)
    assert await archive.get_transcript(doc["call_id"]) == changed


async def test_large_transcript_is_split_and_read_back_whole(archive: ArchiveStore) -> None:
    call_id = new_id()
    big = transcript(call_id, 2500, text_bytes=2000)
    assert encoded_size(big) > 5_000_000  # well past the 2 MB Cosmos item limit
    await archive.put_transcript(big)
    back = await archive.get_transcript(call_id)
    assert back is not None
    assert [t["seq"] for t in back["turns"]] == list(range(1, 2501))
    assert back == big

    # A later, smaller write replaces it entirely: no turn of the big write leaks in.
    small = transcript(call_id, 2, ended_at=3000.0)
    await archive.put_transcript(small)
    assert await archive.get_transcript(call_id) == small
    listed = [t for t in await archive.list_transcripts(1000) if t["call_id"] == call_id]
    assert listed == [{"call_id": call_id, "ended_at": 3000.0, "turn_count": 2}]


async def test_list_transcripts_latest_first_without_turns(archive: ArchiveStore) -> None:
    ids = [new_id() for _ in range(3)]
    for ended, call_id in zip((10.0, 30.0, 20.0), ids, strict=True):
        await archive.put_transcript(transcript(call_id, 2, ended_at=ended))
    listed = await archive.list_transcripts(limit=2)
    assert [t["call_id"] for t in listed] == [ids[1], ids[2]]
    assert all(set(t) == {"call_id", "ended_at", "turn_count"} for t in listed)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"turns": []}, "call_id"),
        ({"call_id": "", "turns": []}, "call_id"),
        ({"call_id": "a:b", "turns": []}, "call_id"),
        ({"call_id": "a/b", "turns": []}, "call_id"),
        ({"call_id": "has space", "turns": []}, "call_id"),
        ({"call_id": "ok"}, "turns"),
        ({"call_id": "ok", "turns": ["not a dict"]}, "turns"),
        ({"call_id": "ok", "turns": [], "write_id": "x"}, "reserved"),
        ({"call_id": "ok", "turns": [], "_rid": "x"}, "_rid"),
    ],
)
async def test_bad_transcript_is_refused_clearly(
    archive: ArchiveStore, doc: dict[str, Any], message: str
) -> None:
    with pytest.raises(ArchiveError, match=message):
        await archive.put_transcript(doc)


async def test_unserializable_transcript_raises_serialization_error(archive: ArchiveStore) -> None:
    doc = {"call_id": new_id(), "turns": [{"text": object()}]}
    with pytest.raises(SerializationError):
        await archive.put_transcript(doc)


async def test_bad_lookup_id_is_refused(archive: ArchiveStore) -> None:
    with pytest.raises(ArchiveError, match="call_id"):
        await archive.get_transcript("bad id")
    with pytest.raises(ArchiveError, match="user_id"):
        await archive.get_profile("")


# Profiles, analytics, audit


async def test_profile_upsert_replaces(archive: ArchiveStore) -> None:
    user_id = new_id("user")
    await archive.put_profile({"user_id": user_id, "name": "Ada", "tier": "gold"})
    await archive.put_profile({"user_id": user_id, "name": "Ada L."})
    assert await archive.get_profile(user_id) == {
        "user_id": user_id,
        "id": user_id,
        "name": "Ada L.",
    }
    assert await archive.get_profile(new_id("user")) is None
    with pytest.raises(ArchiveError, match="user_id"):
        await archive.put_profile({"name": "nobody"})


@pytest.mark.parametrize("kind", ["analytics", "audit"])
async def test_records_with_same_id_are_one_record(archive: ArchiveStore, kind: str) -> None:
    put = archive.put_analytics if kind == "analytics" else archive.put_audit
    listing = archive.list_analytics if kind == "analytics" else archive.list_audit
    call_id, other = new_id(), new_id()
    await put({"id": "r1", "call_id": call_id, "value": 1})
    await put({"id": "r1", "call_id": call_id, "value": 2})
    await put({"id": "r2", "call_id": call_id, "value": 3})
    await put({"id": "r1", "call_id": other, "value": 4})
    assert await listing(call_id) == [
        {"id": "r1", "call_id": call_id, "value": 2},
        {"id": "r2", "call_id": call_id, "value": 3},
    ]
    assert await listing(other) == [{"id": "r1", "call_id": other, "value": 4}]
    with pytest.raises(ArchiveError, match="id"):
        await put({"call_id": call_id})
    with pytest.raises(ArchiveError, match="call_id"):
        await put({"id": "r3"})


# Backend specifics


async def test_cosmos_parts_fit_the_item_limit_and_stale_parts_are_removed(
    cosmos_emulator: CosmosEmulator, cosmos_key: str
) -> None:
    settings = load_settings(cosmos_settings(cosmos_emulator, cosmos_key))
    async with CosmosArchive.from_settings(settings.storage.cosmos) as store:
        call_id = new_id()
        await store.put_transcript(transcript(call_id, 2500, text_bytes=2000))
        container = await store._container(TRANSCRIPTS)
        items = [i async for i in container.query_items(
            "SELECT * FROM c WHERE c.call_id = @c",
            parameters=[{"name": "@c", "value": call_id}],
            partition_key=call_id,
        )]  # fmt: skip
        assert len(items) >= 4
        assert all(encoded_size(i) <= 2_000_000 for i in items)

        await store.put_transcript(transcript(call_id, 2))
        ids = [i["id"] async for i in container.query_items(
            "SELECT c.id FROM c WHERE c.call_id = @c",
            parameters=[{"name": "@c", "value": call_id}],
            partition_key=call_id,
        )]  # fmt: skip
        assert ids == [call_id]


async def test_unreachable_cosmos_raises_unavailable() -> None:
    settings = load_settings(
        {
            "RTVOICE_COSMOS_ENDPOINT": f"https://127.0.0.1:{free_port()}",
            "RTVOICE_COSMOS_KEY": "a2V5",
            "RTVOICE_COSMOS_VERIFY_TLS": "false",
        }
    )
    async with open_archive(settings.storage) as store:
        with pytest.raises(ArchiveUnavailableError):
            await store.put_transcript(transcript(new_id(), 1))


async def test_unusable_sqlite_path_raises_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    async with SqliteArchive(blocker / "archive.sqlite3") as store:
        with pytest.raises(ArchiveUnavailableError):
            await store.put_transcript(transcript(new_id(), 1))


def test_open_archive_picks_the_backend(tmp_path: Path) -> None:
    sqlite = open_archive(load_settings({"RTVOICE_ARCHIVE_PATH": str(tmp_path / "a.db")}).storage)
    assert isinstance(sqlite, SqliteArchive)
    cosmos = open_archive(
        load_settings(
            {"RTVOICE_COSMOS_ENDPOINT": "https://x.example", "RTVOICE_COSMOS_KEY": "k"}
        ).storage
    )
    assert isinstance(cosmos, CosmosArchive)
    with pytest.raises(ConfigError, match="key"):
        open_archive(load_settings({"RTVOICE_COSMOS_ENDPOINT": "https://x.example"}).storage)


# Pure layout


def test_split_orders_parts_and_reassembly_ignores_stale_parts() -> None:
    doc = transcript("c1", 50, text_bytes=200)
    items = split_transcript(doc, max_item_bytes=2000)
    assert items.head["part_count"] == len(items.parts) > 1
    assert all(encoded_size(p) <= 2000 for p in (items.head, *items.parts))
    older = split_transcript(transcript("c1", 80, text_bytes=200), max_item_bytes=2000)
    stored = [*reversed(older.parts), *reversed(items.parts), items.head]
    assert reassemble_transcript("c1", stored) == doc


def test_small_transcript_is_one_item() -> None:
    items = split_transcript(transcript("c1", 3), max_item_bytes=10_000)
    assert items.parts == [] and len(items.head["turns"]) == 3
    assert split_transcript(transcript("c1", 3)).head["write_id"] == items.head["write_id"]


def test_missing_part_is_an_error_and_oversized_turn_is_refused() -> None:
    items = split_transcript(transcript("c1", 50, text_bytes=200), max_item_bytes=2000)
    with pytest.raises(ArchiveError, match="missing"):
        reassemble_transcript("c1", [items.head, *items.parts[1:]])
    assert reassemble_transcript("c1", items.parts) is None
    with pytest.raises(PayloadTooLargeError):
        split_transcript(transcript("c1", 1, text_bytes=4000), max_item_bytes=2000)
