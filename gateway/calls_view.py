"""What ``rtvoice calls`` shows: every live call (id, state, node, the gateway replica carrying
its media, duration, frames) and the warm pool's spares per node, from the call actors
(``info()``), Ray's state API (each actor's node) and Redis (each call's affinity record).

Pure shaping and formatting; the reads are the caller's (gateway/cli.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

# What actors.cluster.list_call_actors reports for an actor that exited after it was listed.
GONE = frozenset({"gone", "ActorDiedError"})


@dataclass(frozen=True)
class CallRow:
    call_id: str
    state: str
    node: str
    replica: str
    duration_s: float | None
    frames_in: int
    frames_out: int
    actor: str


@dataclass(frozen=True)
class CallsView:
    calls: list[CallRow]
    spares_per_node: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"calls": [asdict(c) for c in self.calls], "spares_per_node": self.spares_per_node}


def build_view(
    actors: list[dict[str, Any]],
    nodes: dict[str, str],
    replicas: dict[str, str | None],
    now: float,
) -> CallsView:
    """``actors``: rows of actors.cluster.list_call_actors; ``nodes``: actor name -> node id
    (Ray's state API; the actor's own view when missing); ``replicas``: call id -> the replica
    holding its media (affinity records)."""
    calls: list[CallRow] = []
    spares: Counter[str] = Counter()
    for row in actors:
        name = str(row.get("actor", ""))
        node = nodes.get(name) or str(row.get("node") or "")
        if row.get("state") == "spare":
            spares[node or "?"] += 1
            continue
        if row.get("error") in GONE:  # ended (or a spare retired) since the listing
            continue
        call_id = str(row.get("call_id") or name)
        started = row.get("started_at")
        metrics = row.get("metrics") or {}
        calls.append(
            CallRow(
                call_id=call_id,
                state=str(row.get("error") or row.get("state") or "?"),
                node=node,
                replica=replicas.get(call_id) or "",
                duration_s=round(now - started, 1)
                if isinstance(started, int | float) and started
                else None,
                frames_in=int(metrics.get("frames_in", 0)),
                frames_out=int(metrics.get("frames_out", 0)),
                actor=name,
            )
        )
    return CallsView(sorted(calls, key=lambda c: c.call_id), dict(sorted(spares.items())))


def short_node(node_id: str) -> str:
    """A node id (56 hex digits) short enough for a table, both ends kept: ``ray list nodes``
    and the dashboard show it whole."""
    return node_id if len(node_id) <= 14 else f"{node_id[:6]}…{node_id[-6:]}"


def render(view: CallsView) -> str:
    lines = []
    if view.calls:
        lines.append(
            f"{'call id':<38} {'state':<12} {'node':<14} {'replica':<16} "
            f"{'duration':>9} {'frames in':>10} {'out':>8}"
        )
        for c in view.calls:
            duration = f"{c.duration_s:.0f} s" if c.duration_s is not None else "?"
            lines.append(
                f"{c.call_id:<38} {c.state:<12} {short_node(c.node):<14} {c.replica[:16]:<16} "
                f"{duration:>9} {c.frames_in:>10,} {c.frames_out:>8,}"
            )
    else:
        lines.append("no live calls")
    spares = ", ".join(f"{short_node(node)} {n}" for node, n in view.spares_per_node.items())
    lines.append(f"spare actors per node: {spares or 'none'}")
    return "\n".join(lines)
