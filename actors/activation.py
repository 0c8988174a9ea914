"""Ray options of the call actor, in one place, and get-or-activate for the gateway and tools.

Authority for "exactly one live actor per call": Ray's named-actor registry (the GCS). The actor
is named by the call connection id and created with ``get_if_exists=True``; the GCS binds a name
to one actor atomically, so racing drivers all receive the same actor, and a restart after a
crash keeps the same name and actor id (no second actor can appear while it restarts). Placement,
lifetime and naming are decided by the same component, so there is no window where Redis says one
owner and Ray runs another. A compare-and-set on the Redis affinity record would need Redis at
creation time and a second clean-up path for actors that lost the race. The affinity record still
carries an epoch, but as a fence for data writes (a zombie process of an older epoch is refused),
not as the identity authority.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any, cast

import ray
from ray.actor import ActorClass, ActorHandle

from actors.call_actor import CallActor
from actors.call_state import CallEnded
from actors.config import CallActorConfig
from storage.affinity import Endpoint
from storage.keys import validate_identifier

__all__ = [
    "aactivate",
    "actor_options",
    "aget_or_activate",
    "get_call_actor",
    "get_or_activate",
]


def actor_options(call_id: str, config: CallActorConfig) -> dict[str, Any]:
    """Every Ray option of a call actor."""
    return {
        "name": call_id,
        "namespace": config.namespace,
        "lifetime": "detached",  # outlives the gateway process that created it
        "get_if_exists": True,
        "max_restarts": config.max_restarts,
        "max_task_retries": config.max_task_retries,
        "resources": {config.call_slot_resource: 1},
        "num_cpus": 0,  # placement is by call slot; the actor is I/O bound
    }


@functools.cache
def _remote_class() -> ActorClass[CallActor]:
    return ray.remote(CallActor)


def _create(call_id: str, config: CallActorConfig) -> ActorHandle[CallActor]:
    validate_identifier(call_id, "call id")
    handle = _remote_class().options(**actor_options(call_id, config)).remote(call_id, config)
    return cast("ActorHandle[CallActor]", handle)


def _forget(handle: ActorHandle[CallActor]) -> None:
    """Remove an actor that was created for a call that already ended."""
    with contextlib.suppress(Exception):
        ray.kill(handle, no_restart=True)


def get_or_activate(
    call_id: str,
    config: CallActorConfig,
    *,
    incoming: dict[str, Any] | None = None,
    timeout_s: float = 60.0,
) -> ActorHandle[CallActor]:
    """The call's actor, created if needed, returned once its stream endpoint is registered.

    Raises CallEnded if the call already ended (its archive is written).
    """
    handle = _create(call_id, config)
    try:
        ray.get(handle.activate.remote(incoming), timeout=timeout_s)
    except CallEnded:
        _forget(handle)
        raise
    return handle


async def aactivate(
    call_id: str,
    config: CallActorConfig,
    *,
    incoming: dict[str, Any] | None = None,
    timeout_s: float = 60.0,
) -> tuple[ActorHandle[CallActor], Endpoint]:
    """The call's actor and the stream endpoint it registered."""
    handle = await asyncio.to_thread(_create, call_id, config)
    try:
        endpoint: Endpoint = await asyncio.wait_for(
            handle.activate.remote(incoming), timeout_s
        )
    except CallEnded:
        await asyncio.to_thread(_forget, handle)
        raise
    return handle, endpoint


async def aget_or_activate(
    call_id: str,
    config: CallActorConfig,
    *,
    incoming: dict[str, Any] | None = None,
    timeout_s: float = 60.0,
) -> ActorHandle[CallActor]:
    """``get_or_activate`` for an asyncio driver (the gateway): never blocks its event loop."""
    handle, _ = await aactivate(call_id, config, incoming=incoming, timeout_s=timeout_s)
    return handle


def get_call_actor(call_id: str, namespace: str) -> ActorHandle[CallActor] | None:
    """The live actor of ``call_id`` without creating one (None if there is none)."""
    try:
        return ray.get_actor(call_id, namespace=namespace)
    except ValueError:
        return None
