"""The embedded archive: one SQLite file (WAL), for runs without Cosmos DB.

Blocking sqlite3 calls run in a worker thread, never on the event loop. A transcript is one row
(SQLite has no item size limit), so the split layout of Cosmos is not needed here.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import orjson

from storage.archive import (
    prepare_profile,
    prepare_record,
    transcript_summary,
    validate_archive_id,
    validate_transcript,
)
from storage.errors import ArchiveError, ArchiveUnavailableError, SerializationError

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transcripts (
    call_id TEXT PRIMARY KEY, ended_at, turn_count INTEGER NOT NULL,
    body BLOB NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS transcripts_ended ON transcripts (ended_at);
CREATE TABLE IF NOT EXISTS user_profiles (
    user_id TEXT PRIMARY KEY, body BLOB NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS analytics (
    call_id TEXT NOT NULL, id TEXT NOT NULL, body BLOB NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (call_id, id));
CREATE TABLE IF NOT EXISTS audit (
    call_id TEXT NOT NULL, id TEXT NOT NULL, body BLOB NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (call_id, id));
"""
# The record tables share one shape; names are constants, never caller input.
_RECORD_TABLES = frozenset({"analytics", "audit"})


def _encode(value: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise SerializationError(f"document is not JSON-serializable: {exc}") from None


class SqliteArchive:
    """:class:`storage.archive.ArchiveStore` over one SQLite file; opened lazily on first use."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        # One connection shared by worker threads: serialize its use.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SqliteArchive({str(self.path)!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                try:
                    conn = self._connect()
                    with conn:  # one transaction: commit on success, roll back on error
                        return work(conn)
                except (sqlite3.OperationalError, OSError) as exc:
                    raise ArchiveUnavailableError(f"archive {self.path}: {exc}") from exc
                except sqlite3.Error as exc:
                    raise ArchiveError(f"archive {self.path}: {exc}") from exc

        return await asyncio.to_thread(call)

    # Transcripts

    async def put_transcript(self, doc: dict[str, Any]) -> None:
        call_id = validate_transcript(doc)
        body = _encode(doc)
        ended_at = doc.get("ended_at")
        if not isinstance(ended_at, int | float | str):
            ended_at = None
        row = (call_id, ended_at, len(doc["turns"]), body, time.time())
        await self._run(
            lambda c: c.execute(
                "INSERT INTO transcripts (call_id, ended_at, turn_count, body, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (call_id) DO UPDATE SET "
                "ended_at = excluded.ended_at, turn_count = excluded.turn_count, "
                "body = excluded.body, updated_at = excluded.updated_at",
                row,
            )
        )

    async def get_transcript(self, call_id: str) -> dict[str, Any] | None:
        validate_archive_id(call_id, "call_id")
        row = await self._run(
            lambda c: c.execute(
                "SELECT body FROM transcripts WHERE call_id = ?", (call_id,)
            ).fetchone()
        )
        return None if row is None else dict(orjson.loads(row[0]))

    async def list_transcripts(self, limit: int = 50) -> list[dict[str, Any]]:
        # SQLite orders text > numbers > NULL, the same order as archive.latest_first.
        rows = await self._run(
            lambda c: c.execute(
                "SELECT call_id, ended_at, turn_count FROM transcripts "
                "ORDER BY ended_at DESC, updated_at DESC LIMIT ?",
                (max(limit, 0),),
            ).fetchall()
        )
        return [
            transcript_summary({"call_id": r[0], "ended_at": r[1], "turn_count": r[2]})
            for r in rows
        ]

    # Profiles

    async def put_profile(self, profile: dict[str, Any]) -> None:
        item = prepare_profile(profile)
        row = (item["user_id"], _encode(item), time.time())
        await self._run(
            lambda c: c.execute(
                "INSERT INTO user_profiles (user_id, body, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET body = excluded.body, "
                "updated_at = excluded.updated_at",
                row,
            )
        )

    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        validate_archive_id(user_id, "user_id", user=True)
        row = await self._run(
            lambda c: c.execute(
                "SELECT body FROM user_profiles WHERE user_id = ?", (user_id,)
            ).fetchone()
        )
        return None if row is None else dict(orjson.loads(row[0]))

    # Analytics and audit

    async def put_analytics(self, record: dict[str, Any]) -> None:
        await self._put_record("analytics", prepare_record(record, "analytics"))

    async def list_analytics(self, call_id: str) -> list[dict[str, Any]]:
        return await self._list_records("analytics", call_id)

    async def put_audit(self, entry: dict[str, Any]) -> None:
        await self._put_record("audit", prepare_record(entry, "audit"))

    async def list_audit(self, call_id: str) -> list[dict[str, Any]]:
        return await self._list_records("audit", call_id)

    async def _put_record(self, table: str, record: dict[str, Any]) -> None:
        assert table in _RECORD_TABLES
        row = (record["call_id"], record["id"], _encode(record), time.time())
        await self._run(
            lambda c: c.execute(
                f"INSERT INTO {table} (call_id, id, body, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (call_id, id) DO UPDATE SET body = excluded.body, "
                "updated_at = excluded.updated_at",
                row,
            )
        )

    async def _list_records(self, table: str, call_id: str) -> list[dict[str, Any]]:
        assert table in _RECORD_TABLES
        validate_archive_id(call_id, "call_id")
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT body FROM {table} WHERE call_id = ? ORDER BY id", (call_id,)
            ).fetchall()
        )
        return [dict(orjson.loads(r[0])) for r in rows]
