"""How many call slots a node offers, sized from its cores and memory and the measured per-call
cost; or RTVOICE_CALL_SLOTS when the operator sets it.

Pure arithmetic plus one look at the machine (cores, physical memory); never touches Ray, Redis
or the network.
"""

from __future__ import annotations

import math
import os
from typing import Final

from storage.settings import Settings

# Measured per live call (the benchmarks, one call streaming 20 ms frames both ways with
# transcription): the call actor uses ~2.6% of one core and the gateway ~1.2% of one core for
# forwarding its frames, so ~3.8% of a core per call on a node that runs both.
ACTOR_CPU_PER_CALL: Final = 0.026
GATEWAY_CPU_PER_CALL: Final = 0.012
# Resident memory of one call actor (a Ray worker process with the actor's buffers): ~120 MB.
# A spare actor of the warm pool is the same process before its call: the same memory, but it
# does nothing until bound, so its CPU is negligible.
ACTOR_MEMORY_BYTES: Final = 120 * 1024 * 1024
# Headroom: calls get 70% of the cores (the rest: bursts, Ray's raylet and the OS) and 80% of
# the memory (the rest: the OS, raylet, object store overhead, the gateway's own process).
CPU_SHARE: Final = 0.70
MEMORY_SHARE: Final = 0.80
# Even a machine too small by the figures takes one call, so a laptop demo still runs.
MIN_CALL_SLOTS: Final = 1


def call_slots(
    cpus: float,
    memory_bytes: int,
    *,
    spares: int = 0,
    gateway_on_node: bool = True,
) -> int:
    """Call slots for a node with ``cpus`` cores and ``memory_bytes`` of memory.

    A slot holds one call actor, live or spare. Live calls are bounded by CPU
    (``CPU_SHARE * cpus`` over the per-call cost: actor, plus the gateway's share when the
    gateway runs on the same node); every actor, spare or live, is bounded by memory
    (``MEMORY_SHARE * memory_bytes / ACTOR_MEMORY_BYTES``). ``spares`` spare actors fit beside
    the live calls as long as memory allows, since they cost memory but almost no CPU.

    >>> call_slots(4, 16 * 1024**3, spares=2, gateway_on_node=False)  # Standard_D4s_v5 worker
    109
    """
    if cpus < 0 or memory_bytes < 0 or spares < 0:
        raise ValueError("cpus, memory_bytes and spares must not be negative")
    per_call_cpu = ACTOR_CPU_PER_CALL + (GATEWAY_CPU_PER_CALL if gateway_on_node else 0.0)
    # The epsilon absorbs floating point (0.7 * 4 / 0.028 is 99.99999999999999, meant 100).
    live_by_cpu = math.floor(CPU_SHARE * cpus / per_call_cpu + 1e-9)
    actors_by_memory = math.floor(MEMORY_SHARE * memory_bytes / ACTOR_MEMORY_BYTES + 1e-9)
    return max(MIN_CALL_SLOTS, min(actors_by_memory, live_by_cpu + spares))


def machine_memory_bytes() -> int:
    """This machine's physical memory (POSIX ``sysconf``; the same figure psutil reports)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def machine_call_slots(*, spares: int = 0, gateway_on_node: bool = True) -> int:
    """:func:`call_slots` for this machine's cores and memory."""
    return call_slots(
        os.cpu_count() or 1,
        machine_memory_bytes(),
        spares=spares,
        gateway_on_node=gateway_on_node,
    )


def node_call_slots(settings: Settings) -> int:
    """Slots local Ray declares: RTVOICE_CALL_SLOTS when set, else sized from this machine (a
    gateway beside the calls, and room for the warm pool's minimum of spare actors)."""
    if settings.actors.call_slots is not None:
        return settings.actors.call_slots
    return machine_call_slots(spares=settings.actors.pool_min_spares)
