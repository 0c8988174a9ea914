"""What a benchmark's call actors run on: the Ray already up (the tests'), else a local one of
its own; and, for benchmarks that start actors themselves, a Redis and an archive of their own.

Never places actors itself; it only starts and stops what they need around a benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import ray

from actors.activation import aactivate
from actors.cluster import init_local_ray
from actors.config import CallActorConfig
from simulator.devstack.local_redis import LocalRedisServer
from storage.settings import Settings


@contextlib.contextmanager
def local_ray(
    settings: Settings, slots: int, out: TextIO, name: str, *, own_namespace: bool = False
) -> Iterator[str]:
    """Yields the namespace for the benchmark's actors. A Ray started here declares ``slots``
    call slots and is shut down afterwards; ``own_namespace`` gives its actors a fresh one."""
    namespace = settings.actors.ray_namespace
    if ray.is_initialized():
        yield namespace
        return
    out.write(f"{name}: starting local Ray\n")
    out.flush()
    if own_namespace:
        namespace = f"rtvoice-bench-{uuid.uuid4().hex[:6]}"
    init_local_ray(
        num_call_slots=slots,
        namespace=namespace,
        call_slot_resource=settings.actors.call_slot_resource,
    )
    try:
        yield namespace
    finally:
        ray.shutdown()


@contextlib.contextmanager
def private_actor_config(
    settings: Settings, namespace: str, name: str, **changes: Any
) -> Iterator[CallActorConfig]:
    """Call actors' configuration in ``namespace`` on a private Redis and a private embedded
    archive, both removed afterwards; ``changes`` are further settings by flat name."""
    with tempfile.TemporaryDirectory(prefix=f"rtvoice-{name}-") as tmp, LocalRedisServer() as rs:
        yield CallActorConfig.from_settings(
            settings,
            redis_url=rs.url,
            environment=f"bench{uuid.uuid4().hex[:6]}",
            archive_path=str(Path(tmp) / "archive.sqlite3"),
            spool_dir=str(Path(tmp) / "spool"),
            ray_namespace=namespace,
            **changes,
        )


async def activate_calls(
    config: CallActorConfig, prefix: str, calls: int, caller: str
) -> dict[str, Any]:
    """``calls`` call actors activated at once, for calls ``<prefix>-…`` from the phone number
    ``caller``: by call id, each (handle, endpoint) or the exception its activation raised."""
    ids = [f"{prefix}-{uuid.uuid4().hex[:10]}" for _ in range(calls)]
    incoming = {"caller": {"kind": "phoneNumber", "raw_id": "4:" + caller}, "caller_id": caller}
    activated = await asyncio.gather(
        *(aactivate(call_id, config, incoming=incoming) for call_id in ids),
        return_exceptions=True,
    )
    return dict(zip(ids, activated, strict=True))
