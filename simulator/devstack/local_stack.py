"""Everything on one machine: a private Redis, local Ray, the ACS stand-in and gateway replicas.

Used by ``rtvoice demo`` and the end-to-end tests; production runs ``rtvoice serve`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import uvicorn
from pydantic import SecretStr

from actors.capacity import node_call_slots
from actors.cluster import init_local_ray
from actors.config import CallActorConfig
from actors.pool import WarmPool
from gateway.app import Gateway, create_app
from gateway.service import build_gateway, uvicorn_server
from simulator.devstack.local_redis import LocalRedisServer, free_port
from simulator.service import DEFAULT_EVENT_GRID_PATH, AcsStandIn
from storage.errors import StorageError
from storage.redis_manager import AsyncAzureRedisManager
from storage.settings import Settings


@dataclass
class Replica:
    gateway: Gateway
    server: uvicorn.Server
    task: asyncio.Task[None]
    url: str


@dataclass
class LocalStack:
    """Start with ``async with LocalStack(...) as stack``; ``stack.gateway_url`` takes calls."""

    base: Settings = field(default_factory=Settings)
    replicas: int = 1
    port: int = 0  # first replica's port; 0 picks a free one
    call_slots: int | None = None  # None: RTVOICE_CALL_SLOTS, else sized from this machine
    dashboard: bool = False
    archive_path: str | None = None
    actor_overrides: dict[str, Any] = field(default_factory=dict)
    redis_server: LocalRedisServer | None = None
    acs: AcsStandIn | None = None
    redis: AsyncAzureRedisManager | None = None
    settings: Settings | None = None
    actor_config: CallActorConfig | None = None
    dashboard_url: str | None = None
    running: list[Replica] = field(default_factory=list)
    _owns_ray: bool = False
    _workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="rtvoice-"))

    @property
    def gateway_url(self) -> str:
        return self.running[0].url

    @property
    def pool(self) -> WarmPool:
        """The warm pool of the first replica (all replicas share its spares)."""
        return self.running[0].gateway.router.pool

    async def __aenter__(self) -> LocalStack:
        redis_url = self.base.storage.redis.url
        if redis_url is None:
            self.redis_server = LocalRedisServer().start()
            redis_url = self.redis_server.url
        if not ray.is_initialized():
            slots = self.call_slots
            info = init_local_ray(
                num_call_slots=node_call_slots(self.base) if slots is None else slots,
                include_dashboard=self.dashboard,
                namespace=self.base.actors.ray_namespace,
                call_slot_resource=self.base.actors.call_slot_resource,
            )
            self.dashboard_url = info.get("dashboard_url")
            self._owns_ray = True
        event_grid_secret = secrets.token_urlsafe(24)
        self.acs = await AcsStandIn(
            event_grid_path=f"{DEFAULT_EVENT_GRID_PATH}?code={event_grid_secret}"
        ).start()
        ports = [free_port() for _ in range(self.replicas)]
        if self.port:
            ports[0] = self.port
        archive = self.archive_path or str(Path(self._workdir) / "archive.sqlite3")
        self.settings = self.base.replace(
            redis_url=redis_url,
            public_url=f"http://127.0.0.1:{ports[0]}",
            acs_endpoint=self.acs.endpoint,
            acs_access_key=SecretStr(self.acs.access_key),
            acs_jwt_issuer=self.acs.issuer,
            acs_jwks_url=self.acs.jwks_url,
            acs_audience=self.acs.audience,
            gateway_secret=SecretStr(secrets.token_urlsafe(32)),
            eventgrid_secret=SecretStr(event_grid_secret),
            archive_path=archive,
            spool_dir=str(Path(self._workdir) / "spool"),
        )
        self.redis = AsyncAzureRedisManager.from_settings(self.settings.storage)
        self.actor_config = CallActorConfig.from_settings(self.settings, **self.actor_overrides)
        for i, port in enumerate(ports):
            await self.start_replica(f"gw-{i}", port)
        return self

    async def start_replica(
        self, replica_id: str, port: int, public_url: str | None = None
    ) -> Replica:
        """Start one more gateway replica sharing Redis, Ray and the gateway secret."""
        assert self.settings is not None and self.redis is not None and self.actor_config
        settings = self.settings.replace(
            replica_id=replica_id, public_url=public_url or f"http://127.0.0.1:{port}"
        )
        gateway = build_gateway(settings, self.redis, self.actor_config)
        server = uvicorn_server(create_app(gateway), "127.0.0.1", port)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task
            await asyncio.sleep(0.02)
        replica = Replica(gateway, server, task, f"http://127.0.0.1:{port}")
        self.running.append(replica)
        return replica

    async def stop_replica(self, replica: Replica) -> None:
        replica.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await replica.task
        await replica.gateway.acs.close()
        self.running.remove(replica)

    async def __aexit__(self, *exc: object) -> None:
        for replica in list(self.running):
            await self.stop_replica(replica)
        if self.redis is not None and self.actor_config is not None:  # the spares go too
            pool = WarmPool(self.redis, self.actor_config, owner="", min_spares=0, max_spares=0)
            with contextlib.suppress(StorageError):
                await pool.retire_all()
        if self.acs is not None:
            await self.acs.stop()
        if self.redis is not None:
            await self.redis.close()
        if self._owns_ray:
            ray.shutdown()
        if self.redis_server is not None:
            self.redis_server.stop()
