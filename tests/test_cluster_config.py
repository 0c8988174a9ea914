"""cluster.yaml: the call-slot resource the actors request is what worker nodes declare."""

from __future__ import annotations

from pathlib import Path

import yaml

from storage.settings import Settings

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


def test_worker_nodes_declare_the_call_slot_resource() -> None:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    slot = Settings().actors.call_slot_resource
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"].get(slot, 0) == 0  # gateways only; calls go to workers
    workers = [t for name, t in node_types.items() if name != config["head_node_type"]]
    assert workers and all(t["resources"][slot] > 0 for t in workers)
