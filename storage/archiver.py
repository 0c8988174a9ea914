"""Durable archive writes: the archive, else the Redis outbox, else a local spool file; and one
drain pass that moves queued documents into the archive (archive_drainer.py runs it for good).

A document leaves a queue only after the next stage accepted it (archive put, outbox add); it is
never dropped. Puts are idempotent upserts, so a document delivered twice is still one document.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from storage.archive import ArchiveStore
from storage.errors import (
    ArchiveError,
    ArchiveUnavailableError,
    PayloadTooLargeError,
    RedisUnavailableError,
    SerializationError,
    StorageError,
)
from storage.outbox import OutboxEntry
from storage.redis_manager import AsyncAzureRedisManager
from storage.settings import StorageSettings

log = logging.getLogger(__name__)

Writer = Callable[[dict[str, Any]], Awaitable[None]]


class Destination(StrEnum):
    """Where a submitted document landed."""

    ARCHIVE = "archive"
    OUTBOX = "outbox"
    SPOOL = "spool"


@dataclass
class DrainReport:
    archived: int = 0
    queued: int = 0  # moved from the spool file to the outbox
    rejected: int = 0  # refused by the archive as invalid; kept in the .rejected file
    archive_down: bool = False
    redis_down: bool = False

    @property
    def blocked(self) -> bool:
        return self.archive_down or self.redis_down


@dataclass(frozen=True)
class _Queued:
    kind: str
    document: dict[str, Any]

    def line(self) -> bytes:
        try:
            return orjson.dumps({"kind": self.kind, "document": self.document}) + b"\n"
        except TypeError as exc:
            raise SerializationError(f"cannot spool {self.kind}: {exc}") from None


def _parse_line(raw: bytes) -> _Queued | None:
    try:
        value = orjson.loads(raw)
        kind, document = value["kind"], value["document"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
    if not isinstance(kind, str) or not isinstance(document, dict):
        return None
    return _Queued(kind, document)


def process_spool_path(settings: StorageSettings) -> Path:
    """This process's own spool file: one writer per file (a drainer adopts it once the process
    is dead, see archive_drainer.py)."""
    return Path(settings.spool_dir) / f"{socket.gethostname()}-{os.getpid()}.jsonl"


def _append_lines(path: Path, lines: list[bytes]) -> None:
    """Append and fsync: the document is on disk before the caller is told it is safe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())


class Archiver:
    """Writes finished-call documents so that none is lost while Cosmos or Redis is down.

    One Archiver per process owns its spool file. Entries a crashed drain left in the outbox are
    re-delivered to the same ``consumer`` name, so keep it stable across restarts (default: host).
    """

    def __init__(
        self,
        archive: ArchiveStore,
        redis_mgr: AsyncAzureRedisManager,
        *,
        spool_path: str | Path,
        consumer: str | None = None,
        batch_size: int = 10,
    ) -> None:
        self.archive = archive
        self.redis = redis_mgr
        self.spool_path = Path(spool_path)
        self.consumer = consumer or f"archiver-{socket.gethostname()}"
        self.batch_size = batch_size
        self._writers: dict[str, Writer] = {
            "transcript": archive.put_transcript,
            "analytics": archive.put_analytics,
            "audit": archive.put_audit,
        }
        self._spool_lock = asyncio.Lock()  # appends vs. the drain taking the file
        self._drain_lock = asyncio.Lock()

    @property
    def draining_path(self) -> Path:
        return self.spool_path.with_name(self.spool_path.name + ".draining")

    @property
    def rejected_path(self) -> Path:
        return self.spool_path.with_name(self.spool_path.name + ".rejected")

    def __repr__(self) -> str:
        return f"Archiver(consumer={self.consumer!r}, spool={str(self.spool_path)!r})"

    def _writer(self, kind: str) -> Writer:
        writer = self._writers.get(kind)
        if writer is None:
            raise ArchiveError(f"unknown archive document kind {kind!r}")
        return writer

    # Submitting

    async def submit_transcript(self, doc: dict[str, Any]) -> Destination:
        return await self.submit("transcript", doc)

    async def submit(self, kind: str, doc: dict[str, Any]) -> Destination:
        """Archive ``doc`` now, or queue it durably. A document the archive refuses for good is
        never queued (it would be refused forever): it is kept in the rejected file and the
        error raised, for the caller to count."""
        try:
            await self._writer(kind)(doc)
            return Destination.ARCHIVE
        except ArchiveUnavailableError as exc:
            log.warning("archive unavailable, queueing %s: %s", kind, type(exc).__name__)
        except StorageError as exc:
            await self._reject(_Queued(kind, doc), exc)
            raise
        try:
            await self.redis.outbox_add(kind, doc)
            return Destination.OUTBOX
        except (RedisUnavailableError, PayloadTooLargeError) as exc:
            reason = type(exc).__name__
            log.warning("outbox unavailable, spooling %s to %s: %s", kind, self.spool_path, reason)
        await self._spool([_Queued(kind, doc)])
        return Destination.SPOOL

    async def _spool(self, entries: list[_Queued]) -> None:
        lines = [e.line() for e in entries]
        async with self._spool_lock:
            await asyncio.to_thread(_append_lines, self.spool_path, lines)

    async def _reject(self, entry: _Queued, exc: Exception) -> None:
        log.error(
            "archive refused a %s document, kept in %s: %s",
            entry.kind,
            self.rejected_path,
            type(exc).__name__,
        )
        await asyncio.to_thread(_append_lines, self.rejected_path, [entry.line()])

    # Draining

    async def drain_once(self) -> int:
        """One pass: spool -> archive (or outbox), then outbox -> archive. Returns moved count."""
        report = await self.drain()
        return report.archived + report.queued

    async def drain(self) -> DrainReport:
        report = DrainReport()
        async with self._drain_lock:
            await self._drain_spool(report)
            if not report.archive_down:
                await self._drain_outbox(report)
        return report

    def _take_spool_sync(self) -> list[bytes]:
        # A .draining file left by a crashed drain goes first; new appends go to a fresh spool.
        if not self.draining_path.exists():
            if not self.spool_path.exists():
                return []
            self.spool_path.replace(self.draining_path)
        return self.draining_path.read_bytes().splitlines()

    def _finish_spool_sync(self, remaining: list[bytes]) -> None:
        if remaining:
            _append_lines(self.spool_path, [line + b"\n" for line in remaining])
        self.draining_path.unlink(missing_ok=True)

    async def _drain_spool(self, report: DrainReport) -> None:
        async with self._spool_lock:
            lines = await asyncio.to_thread(self._take_spool_sync)
        if not lines:
            return
        remaining: list[bytes] = []
        for raw in lines:
            if not raw.strip():
                continue
            entry = _parse_line(raw)
            if entry is None:
                # A torn last line from a crash mid-append; keep it for inspection.
                log.error("unreadable spool line kept in %s", self.rejected_path)
                await asyncio.to_thread(_append_lines, self.rejected_path, [raw + b"\n"])
                continue
            if await self._forward(entry, report):
                continue
            remaining.append(raw)
        async with self._spool_lock:
            await asyncio.to_thread(self._finish_spool_sync, remaining)

    async def _forward(self, entry: _Queued, report: DrainReport) -> bool:
        """Move one spooled entry to the archive, else the outbox; False if it must stay."""
        if not report.archive_down:
            try:
                await self._writer(entry.kind)(entry.document)
                report.archived += 1
                return True
            except ArchiveUnavailableError:
                report.archive_down = True
            except StorageError as exc:
                await self._reject(entry, exc)
                report.rejected += 1
                return True
        if not report.redis_down:
            try:
                await self.redis.outbox_add(entry.kind, entry.document)
                report.queued += 1
                return True
            except (RedisUnavailableError, PayloadTooLargeError):
                report.redis_down = True
        return False

    async def _drain_outbox(self, report: DrainReport) -> None:
        while True:
            try:
                entries = await self.redis.outbox_read(self.consumer, count=self.batch_size)
            except RedisUnavailableError:
                report.redis_down = True
                return
            if not entries:
                return
            done, stop = await self._archive_batch(entries, report)
            try:
                await self.redis.outbox_ack(done)
            except RedisUnavailableError:
                # Archived but not acked: re-delivered later and re-put, still one document.
                report.redis_down = True
                return
            if stop:
                return

    async def _archive_batch(
        self, entries: list[OutboxEntry], report: DrainReport
    ) -> tuple[list[str], bool]:
        done: list[str] = []
        for entry in entries:
            try:
                await self._writer(entry.kind)(entry.document)
                report.archived += 1
            except ArchiveUnavailableError:
                report.archive_down = True
                return done, True
            except StorageError as exc:
                await self._reject(_Queued(entry.kind, entry.document), exc)
                report.rejected += 1
            done.append(entry.entry_id)
        return done, False
