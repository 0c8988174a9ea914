"""Ray options of the call actor, in one place, creating actors (named by a call id, or spares
of the warm pool), and get-or-activate for tools and tests.

Authority for "exactly one live actor per call": the set-once binding ``call:{id}:actor`` in
Redis (actors/pool.py) names the call's actor before any actor is bound: a warm spare, or, with
no spare, an actor named by the call id. For the latter, Ray's named-actor registry (the GCS)
makes creation idempotent (``get_if_exists=True``): racing drivers receive the same actor, and a
restart keeps the same name and actor id. With Redis unreachable, calls fall back to that
registry alone. The affinity record's epoch is a fence for data writes (a zombie process of an
older epoch is refused), not the identity authority.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
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


SPARE_PREFIX = "spare-"


def actor_options(name: str, config: CallActorConfig) -> dict[str, Any]:
    """Every Ray option of a call actor, named by its call id (or ``spare-…`` for a spare)."""
    return {
        "name": name,
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


def create_call_actor(call_id: str, config: CallActorConfig) -> ActorHandle[CallActor]:
    validate_identifier(call_id, "call id")
    handle = _remote_class().options(**actor_options(call_id, config)).remote(call_id, config)
    return cast("ActorHandle[CallActor]", handle)


def create_spare(config: CallActorConfig) -> tuple[str, ActorHandle[CallActor]]:
    """Start a spare call actor of the warm pool (blocking: run it off the event loop)."""
    name = f"{SPARE_PREFIX}{secrets.token_hex(6)}"
    handle = _remote_class().options(**actor_options(name, config)).remote(None, config)
    return name, cast("ActorHandle[CallActor]", handle)


def forget_actor(handle: ActorHandle[CallActor]) -> None:
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
    handle = create_call_actor(call_id, config)
    try:
        ray.get(handle.activate.remote(incoming), timeout=timeout_s)
    except CallEnded:
        forget_actor(handle)
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
    handle = await asyncio.to_thread(create_call_actor, call_id, config)
    try:
        endpoint: Endpoint = await asyncio.wait_for(
            handle.activate.remote(incoming), timeout_s
        )
    except CallEnded:
        await asyncio.to_thread(forget_actor, handle)
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
    """The live actor of ``call_id`` without creating one (None if there is none): the actor
    named by the call id, else the spare bound to it (operators and tests find calls this way;
    the gateway asks Redis, see actors/pool.py)."""
    try:
        return ray.get_actor(call_id, namespace=namespace)
    except ValueError:
        pass
    asked: dict[Any, ActorHandle[CallActor]] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"]
        if entry.get("namespace") != namespace or not name.startswith(SPARE_PREFIX):
            continue
        with contextlib.suppress(Exception):  # gone: not this call's
            handle = ray.get_actor(name, namespace=namespace)
            asked[handle.bound_call.remote()] = handle
    # Every spare at once, 5 s for all: one in turn after another, a stopped or restarting
    # spare among many made the look-up last 5 s each.
    answered, _ = ray.wait(list(asked), num_returns=len(asked), timeout=5) if asked else ([], [])
    for ref in answered:
        with contextlib.suppress(Exception):  # died or restarting: not this call's
            if ray.get(ref) == call_id:
                return asked[ref]
    return None
