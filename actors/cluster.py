"""Local Ray start-up (`rtvoice serve` without RTVOICE_RAY_ADDRESS, the demo, the tests), and
the listing of live call actors.

Never starts actors itself; call actors are created only through actors.activation.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import ray

from actors.capacity import machine_call_slots

# Ray settings that lower every worker's idle cost (README "Performance"): no event-loop
# statistics, Ray's own metrics every 30 s instead of 10 s (rtvoice's call metrics are exported
# on the actor's checkpoint loop), task events every 5 s instead of 1 s (the dashboard's task
# view lags that much). Measured: 0.80 -> 0.70-0.77% of a core per idle actor. A cluster sets the
# same as RAY_<name> environment variables on `ray start` (cluster.yaml).
LOW_IDLE_SYSTEM_CONFIG: Mapping[str, Any] = MappingProxyType(
    {
        "event_stats": False,
        "metrics_report_interval_ms": 30_000,
        "task_events_report_interval_ms": 5_000,
    }
)


def init_local_ray(
    *,
    num_call_slots: int | None = None,
    include_dashboard: bool = False,
    namespace: str = "rtvoice",
    call_slot_resource: str = "call_slot",
    num_cpus: int | None = None,
) -> dict[str, Any]:
    """Start a local Ray instance declaring ``num_call_slots`` call slots (default: sized from
    this machine, actors/capacity.py); returns its addresses."""
    if num_call_slots is None:
        num_call_slots = machine_call_slots()
    ctx = ray.init(
        namespace=namespace,
        resources={call_slot_resource: num_call_slots},
        include_dashboard=include_dashboard,
        num_cpus=num_cpus,
        log_to_driver=True,
        _system_config=dict(LOW_IDLE_SYSTEM_CONFIG),  # a copy: ray.init adds its own keys
    )
    info: dict[str, Any] = ctx.address_info  # type: ignore[attr-defined]
    return {
        "address": info.get("gcs_address") or info.get("address"),
        "node_id": info.get("node_id"),
        "namespace": namespace,
        "dashboard_url": _with_scheme(ctx.dashboard_url),
        "call_slots": num_call_slots,
    }


def _with_scheme(url: str | None) -> str | None:
    """Ray reports the dashboard as ``host:port``; operators click a full URL."""
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def list_call_actors(
    namespace: str, *, with_info: bool = True, timeout_s: float = 5.0
) -> list[dict[str, Any]]:
    """Named call actors of ``namespace``, each with its ``info()`` (and ``node``) unless
    ``with_info`` is False. An actor that does not answer within ``timeout_s`` gets ``"error"``.
    """
    names = sorted(
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry.get("namespace") == namespace
    )
    # Named by call id, or spares of the warm pool (their info() names the call once bound).
    rows: list[dict[str, Any]] = [
        {"actor": name, "call_id": name, "namespace": namespace} for name in names
    ]
    if not with_info:
        return rows
    refs: list[Any] = []
    for row in rows:
        try:
            handle = ray.get_actor(row["actor"], namespace=namespace)
            refs.append(handle.info.remote())
        except ValueError:  # ended between the listing and now
            refs.append(None)
    for row, ref in zip(rows, refs, strict=True):
        if ref is None:
            row["error"] = "gone"
            continue
        try:
            row.update(ray.get(ref, timeout=timeout_s))
            row["node"] = row.get("node_id", "")
            if not row["call_id"]:
                row.update(call_id="(spare)", state="spare")
        except Exception as exc:  # one stuck or dying actor must not break the listing
            row["error"] = type(exc).__name__
    return rows


def call_actor_nodes(namespace: str, node_id: str | None = None) -> dict[str, str]:
    """Name -> node id of every live call actor of ``namespace`` (spares included; only those
    on ``node_id`` if given), from Ray's state API (the head's dashboard must be up)."""
    from ray.util import state

    filters: list[tuple[str, str, str]] = [
        ("class_name", "=", "CallActor"),
        ("state", "=", "ALIVE"),
        ("ray_namespace", "=", namespace),
    ]
    if node_id is not None:
        filters.append(("node_id", "=", node_id))
    actors: list[Any] = state.list_actors(
        # The cluster this process joined: others may run on the same machine.
        address=ray.get_runtime_context().gcs_address if ray.is_initialized() else None,
        filters=filters,  # type: ignore[arg-type]
        limit=10_000,
        raise_on_missing_output=False,
    )
    return {actor.name: actor.node_id for actor in actors if actor.name}
