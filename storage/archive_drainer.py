"""The deployment's one archive drain: moves queued transcripts into the archive for good.

Documents land in the Redis outbox when the archive was down at hang-up, and in a process's own
spool file when Redis was down too (storage/archiver.py). Every gateway replica runs an
ArchiveDrainer; a Redis lease lets exactly one of them drain at a time, and the holder also adopts
the spool files of processes on its node that have died. Archive puts are idempotent upserts, so
a document delivered twice is still one document.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from pathlib import Path

from storage.archive import ArchiveStore
from storage.archiver import Archiver, DrainReport
from storage.errors import StorageError
from storage.redis_manager import AsyncAzureRedisManager

log = logging.getLogger(__name__)

LEASE_NAME = "archive-drainer"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def dead_spools(spool_dir: Path, host: str | None = None) -> list[Path]:
    """Spool files of this host's processes that are gone (``<host>-<pid>.jsonl``, plus the
    ``.draining`` file a drain of theirs may have left)."""
    host = host or socket.gethostname()
    pids: set[int] = set()
    for path in spool_dir.glob(f"{host}-*.jsonl*"):
        pid, _, suffix = path.name.removeprefix(f"{host}-").partition(".jsonl")
        if pid.isdigit() and suffix in ("", ".draining"):
            pids.add(int(pid))
    return [spool_dir / f"{host}-{pid}.jsonl" for pid in sorted(pids) if not _pid_alive(pid)]


class ArchiveDrainer:
    def __init__(
        self,
        archive: ArchiveStore,
        redis_mgr: AsyncAzureRedisManager,
        *,
        spool_dir: str | Path,
        owner: str,
        lease_s: int = 30,
        idle_interval_s: float = 1.0,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.archive = archive
        self.redis = redis_mgr
        self.spool_dir = Path(spool_dir)
        self.owner = owner
        self.lease_s = lease_s
        self.idle_interval_s = idle_interval_s
        self.backoff_max_s = backoff_max_s
        # The drainer's own process never spools; its archiver only drains the outbox.
        own = self.spool_dir / f"drainer-{socket.gethostname()}-{os.getpid()}.jsonl"
        self._outbox = Archiver(archive, redis_mgr, spool_path=own)

    async def drain_once(self) -> DrainReport | None:
        """One pass if this process holds the lease; None when another replica drains."""
        try:
            if not await self.redis.hold_lease(LEASE_NAME, self.owner, lease_s=self.lease_s):
                return None
        except StorageError:
            # Redis is down: nothing can be moved to the outbox; the spools wait for it.
            return DrainReport(redis_down=True)
        report = await self._outbox.drain()
        for path in dead_spools(self.spool_dir):
            adopted = await Archiver(self.archive, self.redis, spool_path=path).drain()
            report.archived += adopted.archived
            report.queued += adopted.queued
            report.rejected += adopted.rejected
            report.archive_down |= adopted.archive_down
            report.redis_down |= adopted.redis_down
        if report.archived or report.queued:
            log.info("archive drain: %d archived, %d queued", report.archived, report.queued)
        return report

    async def run(self, stop: asyncio.Event) -> None:
        """Drain until ``stop``: every ``idle_interval_s`` while caught up, with jittered
        exponential backoff while a backend is down."""
        delay = self.idle_interval_s
        while not stop.is_set():
            try:
                report = await self.drain_once()
                blocked = report is not None and report.blocked
            except Exception:  # the drain must outlive any one bad pass
                log.exception("archive drain failed")
                blocked = True
            delay = min(delay * 2, self.backoff_max_s) if blocked else self.idle_interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay * random.uniform(0.8, 1.2))

