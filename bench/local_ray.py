"""The Ray a benchmark runs on: the one already up (the tests'), else a local one of its own.

Never places actors itself; it only starts and stops Ray around a benchmark.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import TextIO

import ray

from actors.cluster import init_local_ray
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
