"""Call slots from a node's cores and memory (actors/capacity.py): pure arithmetic."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
import yaml

from actors import capacity
from actors.capacity import (
    ACTOR_MEMORY_BYTES,
    MIN_CALL_SLOTS,
    call_slots,
    machine_call_slots,
    node_call_slots,
)
from storage.settings import Settings, load_settings

GIB = 1024**3
CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


def test_cpu_bounds_live_calls_with_the_measured_per_call_cost() -> None:
    # 70% of 2 cores at 3.8% of a core per call (actor 2.6% + gateway 1.2%): 36 calls.
    assert call_slots(2, 64 * GIB) == 36
    # Without the gateway on the node a call costs 2.6%: 53 calls.
    assert call_slots(2, 64 * GIB, gateway_on_node=False) == 53
    assert call_slots(8, 256 * GIB) == 147


def test_memory_bounds_every_actor_at_120_mb_with_headroom() -> None:
    # 80% of 4 GiB at 120 MiB per actor: 27 actors, although the CPU would allow 368.
    assert call_slots(64, 4 * GIB) == 27
    assert call_slots(64, 4 * GIB, spares=10) == 27  # spares cost memory too


def test_spares_fit_beside_live_calls_while_memory_allows() -> None:
    assert call_slots(2, 64 * GIB, spares=4) == 36 + 4
    # 80% of 5 GiB holds 34 actors: 36 live calls by CPU are already too many for it.
    assert call_slots(2, 5 * GIB, spares=4) == 34


def test_a_machine_too_small_by_the_figures_still_takes_one_call() -> None:
    assert call_slots(0.1, ACTOR_MEMORY_BYTES) == MIN_CALL_SLOTS
    assert call_slots(0, 0) == MIN_CALL_SLOTS


def test_slots_never_decrease_with_more_cores_or_memory() -> None:
    sizes = [(c, m * GIB) for c in (1, 2, 4, 8, 16, 32) for m in (1, 2, 4, 16, 64)]
    for cpus, memory in sizes:
        base = call_slots(cpus, memory)
        assert call_slots(cpus * 2, memory) >= base
        assert call_slots(cpus, memory * 2) >= base
        assert call_slots(cpus, memory, gateway_on_node=False) >= base


def test_negative_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        call_slots(-1, GIB)
    with pytest.raises(ValueError):
        call_slots(1, GIB, spares=-1)


def test_the_docstring_example_holds() -> None:
    failures, tried = doctest.testmod(capacity)
    assert tried >= 1 and failures == 0


def test_cluster_yaml_declares_what_the_function_computes_for_its_vm() -> None:
    """Standard_D4s_v5 (4 vCPU, 16 GiB), calls only, room for the pool's minimum of spares."""
    expected = call_slots(
        4, 16 * GIB, spares=Settings().actors.pool_min_spares, gateway_on_node=False
    )
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    slot = Settings().actors.call_slot_resource
    assert config["available_node_types"]["calls"]["resources"][slot] == expected
    starts = config["worker_start_ray_commands"]
    assert all(isinstance(command, str) for command in starts)  # not a YAML mapping by mistake
    declared = re.search(rf'"{slot}":\s*(\d+)', " ".join(starts))
    assert declared is not None and int(declared.group(1)) == expected


def test_rtvoice_call_slots_overrides_the_machine() -> None:
    assert node_call_slots(load_settings({"RTVOICE_CALL_SLOTS": "5"})) == 5
    assert node_call_slots(load_settings({"RTVOICE_CALL_SLOTS": "0"})) == 0


def test_without_the_override_the_machine_decides() -> None:
    settings = Settings(pool_min_spares=3)
    assert node_call_slots(settings) == machine_call_slots(spares=3)
    assert machine_call_slots() >= MIN_CALL_SLOTS
