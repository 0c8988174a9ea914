"""One gateway replica in the benchmark's process, the ACS stand-in and its callers in a
subprocess (``python -m simulator.cli simulate``): this process's CPU and event loop are the
gateway's alone, as in production, where ACS is another service.

``gateway_stack`` starts a private Redis and the replica (local Ray must be up) trusting an
``ExternalAcs``; ``load_generator_command`` is the stand-in started with the same values.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from actors.config import CallActorConfig
from actors.pool import WarmPool
from gateway.app import Gateway, create_app
from gateway.service import build_gateway, freeze_heap, uvicorn_server
from simulator.devstack.local_redis import LocalRedisServer, free_port
from simulator.jwt_issuer import ACS_ISSUER
from storage.archive import ArchiveStore
from storage.errors import StorageError
from storage.redis_manager import AsyncAzureRedisManager
from storage.settings import Settings


@dataclass(slots=True)
class ExternalAcs:
    """What the gateway trusts; the stand-in subprocess is started with the same values."""

    port: int
    access_key: str
    audience: str
    event_grid_secret: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def fresh(cls) -> ExternalAcs:
        return cls(
            port=free_port(),
            access_key=base64.b64encode(secrets.token_bytes(64)).decode(),
            audience=f"bench-{secrets.token_hex(8)}",
            event_grid_secret=secrets.token_urlsafe(24),
        )


@dataclass(slots=True)
class GatewayStack:
    settings: Settings
    gateway_url: str
    gateway: Gateway

    @property
    def pool(self) -> WarmPool:
        return self.gateway.router.pool


@contextlib.asynccontextmanager
async def gateway_stack(
    base: Settings, acs: ExternalAcs, spares: int
) -> AsyncIterator[GatewayStack]:
    """Redis, one gateway replica in this process (Ray already up), trusting ``acs``."""
    workdir = tempfile.mkdtemp(prefix="rtvoice-bench-")
    redis_server = LocalRedisServer().start()
    port = free_port()
    settings = base.replace(
        redis_url=redis_server.url,
        public_url=f"http://127.0.0.1:{port}",
        acs_endpoint=acs.endpoint,
        acs_access_key=SecretStr(acs.access_key),
        acs_jwt_issuer=ACS_ISSUER,
        acs_jwks_url=f"{acs.endpoint}/calling/keys",
        acs_audience=acs.audience,
        gateway_secret=SecretStr(secrets.token_urlsafe(32)),
        eventgrid_secret=SecretStr(acs.event_grid_secret),
        archive_path=str(Path(workdir) / "archive.sqlite3"),
        spool_dir=str(Path(workdir) / "spool"),
        pool_min_spares=spares,
        pool_max_spares=spares,
        replica_id="gw-bench",
    )
    redis = AsyncAzureRedisManager.from_settings(settings.storage)
    actor_config = CallActorConfig.from_settings(settings)
    gateway = build_gateway(settings, redis, actor_config)
    freeze_heap()  # as `rtvoice serve` does
    server = uvicorn_server(create_app(gateway), "127.0.0.1", port)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                await task
            await asyncio.sleep(0.02)
        yield GatewayStack(settings, f"http://127.0.0.1:{port}", gateway)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await gateway.acs.close()
        pool = WarmPool(redis, actor_config, owner="", min_spares=0, max_spares=0)
        with contextlib.suppress(StorageError):
            await pool.retire_all()
        await redis.close()
        redis_server.stop()


@dataclass(slots=True)
class LoadGenerator:
    """The stand-in and its callers, running in a subprocess (``load_generator``)."""

    proc: asyncio.subprocess.Process
    report_path: Path

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def report(self) -> tuple[dict[str, Any] | None, str]:
        """Once it has exited: its report, or None and the tail of what it wrote to stderr."""
        _, err = await self.proc.communicate()
        if not self.report_path.exists():
            return None, err.decode(errors="replace")[-300:] if err else ""
        return orjson.loads(self.report_path.read_bytes()), ""


@contextlib.asynccontextmanager
async def load_generator(command: list[str], report_path: Path) -> AsyncIterator[LoadGenerator]:
    """Runs ``command`` (``load_generator_command``), killed on the way out if still running."""
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        yield LoadGenerator(proc, report_path)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def archived_transcripts(
    store: ArchiveStore, call_ids: Iterable[str], wait_s: float
) -> dict[str, dict[str, Any]]:
    """The transcripts of ``call_ids`` by call id, waiting up to ``wait_s`` for actors still
    archiving (a call's actor archives after its call ends)."""
    wanted = set(call_ids)
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + wait_s
    while len(found) < len(wanted) and time.monotonic() < deadline:
        for call_id in wanted - found.keys():
            if doc := await store.get_transcript(call_id):
                found[call_id] = doc
        if len(found) < len(wanted):
            await asyncio.sleep(0.25)
    return found


def load_generator_command(
    acs: ExternalAcs,
    gateway_url: str,
    calls: int,
    report: Path,
    *,
    talk_s: float = 10.0,
    scenario: Path | None = None,
    fast: bool = False,
    warm_up_s: float = 0.0,
) -> list[str]:
    """The stand-in placing ``calls`` callers who talk for ``talk_s`` (or as ``scenario`` says,
    a Scenario JSON file), writing its report to ``report``; ``fast``: the callers send their
    frames as fast as they can instead of at real time; ``warm_up_s``: the stand-in is up this
    long before the first call rings."""
    # "--flag=value": a secret may begin with "-", which argparse would take for a flag.
    callers = [f"--scenario={scenario}"] if scenario else [f"--duration={talk_s}"]
    return [
        sys.executable, "-m", "simulator.cli", "simulate",
        f"--gateway={gateway_url}",
        f"--port={acs.port}",
        f"--access-key={acs.access_key}",
        f"--audience={acs.audience}",
        f"--event-grid-secret={acs.event_grid_secret}",
        f"--calls={calls}",
        *callers,
        "--stagger=0.05",
        "--answer-timeout=30",
        f"--json={report}",
        "--no-progress",
        f"--warm-up={warm_up_s}",
        *(["--fast"] if fast else []),
    ]  # fmt: skip
