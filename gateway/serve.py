"""``rtvoice serve``: one production gateway replica, a Ray driver, configured from RTVOICE_*."""

from __future__ import annotations

import asyncio
import logging
import signal

import ray

from actors.capacity import node_call_slots
from actors.cluster import init_local_ray
from actors.config import CallActorConfig
from gateway.app import create_app
from gateway.service import build_gateway, freeze_heap, uvicorn_server
from storage.redis_manager import AsyncAzureRedisManager
from storage.settings import ConfigError, Settings

log = logging.getLogger(__name__)


async def serve(settings: Settings, *, host: str, port: int) -> int:
    redis, ray_settings = settings.storage.redis, settings.actors
    if not (redis.url or redis.host):
        raise ConfigError("set RTVOICE_REDIS_URL or RTVOICE_REDIS_HOST for `rtvoice serve`")
    if ray_settings.ray_address:
        ray.init(address=ray_settings.ray_address, namespace=ray_settings.ray_namespace)
    else:
        init_local_ray(
            num_call_slots=node_call_slots(settings),
            namespace=ray_settings.ray_namespace,
            call_slot_resource=ray_settings.call_slot_resource,
        )
    redis_mgr = AsyncAzureRedisManager.from_settings(settings.storage)
    actor_config = CallActorConfig.from_settings(settings)
    gateway = build_gateway(settings, redis_mgr, actor_config)
    freeze_heap()
    server = uvicorn_server(create_app(gateway), host, port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # graceful: finish clean-up, then exit 0
        loop.add_signal_handler(sig, server.handle_exit, sig, None)
    log.warning("gateway replica %s listening on %s:%d", gateway.replica_id, host, port)
    try:
        await server.serve()
    finally:
        await gateway.acs.close()
        await redis_mgr.close()
    return 0
