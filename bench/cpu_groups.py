"""The CPU every process on the machine spent over a window (a burst of set-ups, a saturated
stream), split by who spent it: the gateway, the call actors, the ACS stand-in and its callers
(the load generator), and the rest (Ray, Redis). Pure but for the ``/proc`` readers passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.pool import LIVE_TASK_PREFIX
from bench.proc_stats import command_line

# Who spent the CPU (GroupCpu.cpu_s).
GATEWAY = "gateway"
CALL_ACTORS = "call actors"
STAND_IN = "ACS stand-in and callers"
OTHER = "Ray, Redis, other"


def process_group(pid: int, gateway_pid: int, command: str) -> str:
    if pid == gateway_pid:
        return GATEWAY
    # Ray titles a worker's process by what it runs: the actor class, one of its methods, or
    # the task named for a call while the call lives (actors/pool.py live_task_name).
    if command.startswith(("ray::CallActor", f"ray::{LIVE_TASK_PREFIX}")):
        return CALL_ACTORS
    if "simulator.cli" in command:
        return STAND_IN
    return OTHER


@dataclass(slots=True)
class GroupCpu:
    """The CPU every process on the machine spent over a window, by group."""

    seconds: float  # the window's length
    cpu_s: dict[str, float]

    @classmethod
    def between(
        cls,
        before: dict[int, float],
        after: dict[int, float],
        seconds: float,
        gateway_pid: int,
        command: Callable[[int], str] = command_line,
    ) -> GroupCpu:
        """From two ``all_cpu_s`` readings; a process started in between counts whole."""
        cpu_s = dict.fromkeys((GATEWAY, CALL_ACTORS, STAND_IN, OTHER), 0.0)
        for pid, now in after.items():
            if (spent := now - before.get(pid, 0.0)) > 0:
                cpu_s[process_group(pid, gateway_pid, command(pid))] += spent
        return cls(seconds, cpu_s)

    @property
    def cores_busy(self) -> float:
        return sum(self.cpu_s.values()) / self.seconds if self.seconds > 0 else 0.0

    def per_call_ms(self, calls: int) -> dict[str, float]:
        return {group: 1000.0 * cpu / calls for group, cpu in self.cpu_s.items()}

    def to_json(self, calls: int) -> dict[str, Any]:
        return {
            "window_s": round(self.seconds, 3),
            "cores_busy": round(self.cores_busy, 2),
            "per_call_ms": {k: round(v, 1) for k, v in self.per_call_ms(calls).items()},
        }
